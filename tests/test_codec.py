import dataclasses
import enum
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, NewType, Optional, TypedDict, TypeVar

import msgspec
import pytest

from statestream._codec import check_instance, codec_for
from statestream._core.protocols import Codec
from statestream.errors import CodecError, ConfigurationError, InvalidObject

T = TypeVar("T")
OrderId = NewType("OrderId", str)


@dataclass
class Order:
    id: str
    amount: int
    price: float
    note: str | None = None


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass
class Item:
    sku: str
    qty: int = 1


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float


@dataclass
class Cart:
    items: list[Item]
    by_sku: dict[str, Item]
    points: tuple[Point, ...] = ()
    pair: tuple[int, str] = (0, "")
    tags: frozenset[str] = frozenset()
    labels: set[str] = field(default_factory=set)
    best: Item | None = None
    fallback: Optional[Item] = None  # noqa: UP045 - the typing spelling is supported too


@dataclass
class Values:
    color: Color
    priority: Priority
    when: datetime
    day: date
    at: time
    wait: timedelta
    amount: Decimal
    uid: uuid.UUID
    blob: bytes
    order_id: OrderId
    score: Annotated[int, "meta"]
    mode: Literal["fast", "slow"]
    anything: Any = None


@dataclass
class Node:
    name: str
    children: "list[Node]" = field(default_factory=list)


@dataclass
class Box(Generic[T]):
    item: T
    items: list[T] = field(default_factory=list)


@dataclass
class Keys:
    by_int: dict[int, str]
    by_color: dict[Color, int]
    by_priority: dict[Priority, int]
    by_uuid: dict[uuid.UUID, str]


@dataclass
class Mixed:
    value: int | str
    when: datetime | None = None


@dataclass
class WithDefaults:
    name: str
    count: int = 3
    tags: list[str] = field(default_factory=lambda: ["a"])
    created: datetime = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Derived:
    base: int
    doubled: int = field(init=False)

    def __post_init__(self) -> None:
        self.doubled = self.base * 2


class Movie(TypedDict):
    title: str
    year: int


class Show(TypedDict, total=False):
    title: str
    aired: datetime


class NotSupported:
    pass


@dataclass
class BadField:
    thing: NotSupported


@dataclass
class AmbiguousUnion:
    value: datetime | str


@dataclass
class NeedsInitVar:
    x: int
    factor: dataclasses.InitVar[int]


@dataclass
class Unresolvable:
    x: "Missing"  # type: ignore[name-defined]  # noqa: F821


def roundtrip(obj: Any, tp: Any = None) -> Any:
    codec = codec_for(tp or type(obj))
    return codec.decode(codec.encode(obj))


# -- dataclasses ------------------------------------------------------------------------------


def test_flat_dataclass_is_compact_json() -> None:
    order = Order("o-1", 5, 9.5)
    data = codec_for(Order).encode(order)
    assert data == b'{"id":"o-1","amount":5,"price":9.5,"note":null}'
    assert codec_for(Order).decode(data) == order


def test_flat_dataclass_roundtrip_with_optional_set() -> None:
    order = Order("o-1", 5, 9.5, note="ünïcode ✓")
    data = codec_for(Order).encode(order)
    assert "ünïcode ✓".encode() in data  # UTF-8, not \u escapes
    assert roundtrip(order) == order


def test_float_field_accepts_int() -> None:
    decoded = codec_for(Order).decode(b'{"id":"o","amount":1,"price":2}')
    assert decoded.price == 2.0
    assert type(decoded.price) is float
    assert roundtrip(Order("o", 1, 3)) == Order("o", 1, 3.0)


def test_nested_containers_roundtrip() -> None:
    cart = Cart(
        items=[Item("a"), Item("b", 2)],
        by_sku={"c": Item("c", 3)},
        points=(Point(1.0, 2.5), Point(-1.0, 0.0)),
        pair=(7, "seven"),
        tags=frozenset({"z", "a", "m"}),
        labels={"x"},
        best=Item("best"),
    )
    decoded = roundtrip(cart)
    assert decoded == cart
    assert isinstance(decoded.points, tuple)
    assert isinstance(decoded.pair, tuple)
    assert isinstance(decoded.tags, frozenset)
    assert isinstance(decoded.labels, set)
    assert decoded.fallback is None


def test_optional_fields() -> None:
    assert roundtrip(Cart([], {}, best=None)).best is None
    assert roundtrip(Cart([], {}, fallback=Item("f"))).fallback == Item("f")
    assert roundtrip(Mixed(1, None)) == Mixed(1, None)


def test_special_values_roundtrip_and_wire_format() -> None:
    values = Values(
        color=Color.BLUE,
        priority=Priority.HIGH,
        when=datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=timezone(timedelta(hours=2))),
        day=date(2026, 3, 4),
        at=time(12, 30),
        wait=timedelta(days=1, seconds=5, microseconds=7),
        amount=Decimal("10.50"),
        uid=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        blob=b"\x00\xffbinary",
        order_id=OrderId("o-9"),
        score=4,
        mode="slow",
        anything={"free": [1, "form"]},
    )
    data = codec_for(Values).encode(values)
    wire = json.loads(data)
    assert wire["color"] == "blue"
    assert wire["priority"] == 2
    assert wire["when"] == "2026-03-04T05:06:07.000890+02:00"
    assert wire["day"] == "2026-03-04"
    assert wire["at"] == "12:30:00"
    assert wire["wait"] == "P1DT5.000007S"  # ISO 8601; codec v1 wrote seconds (still read)
    assert wire["amount"] == "10.50"
    assert wire["uid"] == "12345678-1234-5678-1234-567812345678"
    assert wire["blob"] == "AP9iaW5hcnk="
    decoded = codec_for(Values).decode(data)
    assert decoded == values
    assert decoded.color is Color.BLUE
    assert decoded.priority is Priority.HIGH
    assert decoded.amount.as_tuple() == Decimal("10.50").as_tuple()


@dataclass
class Times:
    naive: datetime
    day: date


def test_naive_datetime_roundtrip() -> None:
    value = Times(datetime(2026, 1, 2, 3, 4), date(2026, 1, 2))
    assert roundtrip(value) == value


def test_datetime_in_a_date_field_is_refused() -> None:
    # It would be written in full and could not be read as a date (codec v1 wrote it so; such
    # stored data reads as its date, see test_codec_v1).
    with pytest.raises(InvalidObject, match=r"date.*\$\.day"):
        codec_for(Times).encode(Times(datetime(2026, 1, 2), datetime(2026, 1, 2, tzinfo=UTC)))


def test_defaults_for_missing_fields_and_unknown_keys_ignored() -> None:
    decoded = codec_for(WithDefaults).decode(b'{"name":"n","unknown":{"deep":[1]}}')
    assert decoded == WithDefaults("n")
    decoded.tags.append("b")
    assert codec_for(WithDefaults).decode(b'{"name":"m"}').tags == ["a"]  # fresh default


def test_recursive_dataclass() -> None:
    tree = Node("root", [Node("a", [Node("a1")]), Node("b")])
    assert roundtrip(tree) == tree


def test_generic_dataclass() -> None:
    codec = codec_for(Box[Item])
    box = Box(Item("x"), [Item("y", 2)])
    assert codec.decode(codec.encode(box)) == box
    with pytest.raises(InvalidObject, match=r"Expected `object`, got `int` - at `\$\.item`"):
        codec.encode(Box(1))  # type: ignore[arg-type]
    # Unparametrised: the type variable reads as Any.
    assert roundtrip(Box([1, "two"])) == Box([1, "two"])


def test_dict_key_types() -> None:
    keys = Keys(
        by_int={1: "one", -2: "minus two"},
        by_color={Color.RED: 1},
        by_priority={Priority.LOW: 5},
        by_uuid={uuid.UUID(int=1): "first"},
    )
    data = codec_for(Keys).encode(keys)
    assert json.loads(data)["by_int"] == {"1": "one", "-2": "minus two"}
    assert codec_for(Keys).decode(data) == keys
    with pytest.raises(CodecError, match="by_int"):
        codec_for(Keys).decode(data.replace(b'"1":', b'"x":'))
    # Dicts keep their order.
    assert codec_for(Keys).encode(Keys({2: "b", 1: "a"}, {}, {}, {})).startswith(b'{"by_int":{"2"')


def test_union_of_types_told_apart_by_json_type() -> None:
    assert roundtrip(Mixed(5)) == Mixed(5)
    assert roundtrip(Mixed("five", datetime(2026, 1, 1))) == Mixed("five", datetime(2026, 1, 1))
    with pytest.raises(CodecError, match=r"Expected `int \| str`, got `float` - at `\$\.value`"):
        codec_for(Mixed).decode(b'{"value":1.5}')


def test_init_false_field_is_restored() -> None:
    decoded = roundtrip(Derived(4))
    assert decoded.base == 4
    assert decoded.doubled == 8


def test_encode_does_not_mutate_input() -> None:
    items = [Item("a")]
    tags = ["x", "y"]
    cart = Cart(items, {"k": Item("k")})
    codec_for(Cart).encode(cart)
    assert cart.items is items
    assert cart.items == [Item("a")]
    value = WithDefaults("n", tags=tags)
    codec_for(WithDefaults).encode(value)
    assert value.tags is tags


def test_bool_and_int_are_distinct() -> None:
    with pytest.raises(CodecError, match=r"Expected `int`, got `bool` - at `\$\.amount`"):
        codec_for(Order).decode(b'{"id":"o","amount":true,"price":1.0}')
    # An int field holding a bool would be written as a bool, and refused when read: refused.
    with pytest.raises(InvalidObject, match="amount"):
        codec_for(Order).encode(Order("o", True, 1.0))
    # An IntEnum is an int.
    assert roundtrip(Order("o", Priority.HIGH, 1.0)) == Order("o", 2, 1.0)


# -- errors -----------------------------------------------------------------------------------


def test_encode_wrong_type_raises_invalid_object() -> None:
    with pytest.raises(InvalidObject, match="expected Order, got dict"):
        codec_for(Order).encode({"id": "o"})  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # InvalidObject is also a TypeError
        codec_for(Order).encode(Item("a"))  # type: ignore[arg-type]


def test_encode_field_of_wrong_type_raises_invalid_object() -> None:
    with pytest.raises(
        InvalidObject, match=r"cannot encode Order: .*`str`, got `int` - at `\$.id`"
    ):
        codec_for(Order).encode(Order(1, 2, 3.0))  # type: ignore[arg-type]
    with pytest.raises(InvalidObject, match=r"`object`, got `str` - at `\$\.items\[1\]`"):
        codec_for(Cart).encode(Cart([Item("a"), "b"], {}))  # type: ignore[list-item]
    with pytest.raises(InvalidObject, match=r"`int`, got `str` - at `\$\.by_sku\[\.\.\.\]\.qty`"):
        codec_for(Cart).encode(Cart([], {"k": Item("k", "1")}))  # type: ignore[arg-type]
    with pytest.raises(InvalidObject, match=r"Invalid enum value 'medium' - at `\$\.mode`"):
        codec_for(Values).encode(
            Values(
                Color.RED,
                Priority.LOW,
                datetime(2026, 1, 1),
                date(2026, 1, 1),
                time(),
                timedelta(),
                Decimal(1),
                uuid.UUID(int=0),
                b"",
                OrderId("o"),
                1,
                "medium",  # type: ignore[arg-type]
            )
        )


def test_decode_bad_json_raises_codec_error() -> None:
    with pytest.raises(CodecError, match="cannot decode Order: invalid JSON") as info:
        codec_for(Order).decode(b'{"id": ')
    assert isinstance(info.value.__cause__, msgspec.DecodeError)
    with pytest.raises(CodecError, match="invalid JSON"):
        codec_for(Order).decode(b"\xff\xfe")
    with pytest.raises(CodecError, match="invalid JSON"):
        codec_for(Order).decode(b'{"id":"o","amount":1,"price":1.0} trailing')


def test_decode_accepts_whitespace() -> None:
    data = b' {\n "id": "o", "amount": 1, "price": 2.5 }\n'
    assert codec_for(Order).decode(data) == Order("o", 1, 2.5)


def test_decode_data_not_fitting_the_type() -> None:
    codec = codec_for(Order)
    with pytest.raises(CodecError, match="cannot decode Order: Expected `object`, got `array`"):
        codec.decode(b"[1,2]")
    with pytest.raises(CodecError, match="missing required field `id`") as info:
        codec.decode(b'{"amount":1,"price":1.0}')
    assert info.value.__cause__ is not None
    with pytest.raises(CodecError, match=r"Expected `float`, got `str` - at `\$\.price`"):
        codec.decode(b'{"id":"o","amount":1,"price":"1.0"}')
    with pytest.raises(CodecError, match=r"cannot decode Cart: .* at `\$\.items\[0\]\.qty`"):
        codec_for(Cart).decode(b'{"items":[{"sku":"a","qty":"x"}],"by_sku":{}}')
    with pytest.raises(CodecError, match="Invalid enum value 'green' - at `\\$\\.color`"):
        codec_for(Values).decode(json.dumps({"color": "green"}).encode())
    values = json.loads(
        codec_for(Values).encode(
            Values(
                Color.RED,
                Priority.LOW,
                datetime(2026, 1, 1),
                date(2026, 1, 1),
                time(),
                timedelta(),
                Decimal(1),
                uuid.UUID(int=0),
                b"",
                OrderId("o"),
                1,
                "fast",
            )
        )
    )
    for key, bad in [
        ("when", "yesterday"),
        ("amount", "lots"),
        ("uid", "not-a-uuid"),
        ("blob", "***"),
        ("mode", "medium"),
        ("wait", "soon"),
    ]:
        with pytest.raises(CodecError, match=f"at `\\$\\.{key}`"):
            codec_for(Values).decode(json.dumps({**values, key: bad}).encode())


def test_unsupported_types_raise_configuration_error() -> None:
    unsupported: list[Any] = [int, str, NotSupported, list[int]]
    for tp in unsupported:
        with pytest.raises(ConfigurationError, match="supported are dataclasses") as info:
            codec_for(tp)
        assert "pydantic" in str(info.value)
    with pytest.raises(ConfigurationError, match=r"BadField\.thing: unsupported type"):
        codec_for(BadField)


def test_invalid_dataclasses_raise_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unions may not contain more than one str-like"):
        codec_for(AmbiguousUnion)
    with pytest.raises(ConfigurationError, match="InitVar"):
        codec_for(NeedsInitVar)
    with pytest.raises(ConfigurationError, match="Missing"):
        codec_for(Unresolvable)


# -- caching and determinism ------------------------------------------------------------------


def test_codec_is_cached_per_type() -> None:
    assert codec_for(Order) is codec_for(Order)
    assert codec_for(Movie) is codec_for(Movie)
    assert codec_for(bytes) is codec_for(bytes)
    assert codec_for(Order) is not codec_for(Item)  # type: ignore[comparison-overlap]


def test_codec_satisfies_protocol() -> None:
    for tp in (Order, Movie, dict, bytes):
        assert isinstance(codec_for(tp), Codec)


def test_encoding_is_repeatable_and_keeps_dict_order() -> None:
    cart = Cart(
        [Item("a")],
        {"b": Item("b"), "a": Item("a")},
        tags=frozenset(f"tag-{i}" for i in range(50)),
        labels={f"label-{i}" for i in range(50)},
    )
    codec = codec_for(Cart)
    first = codec.encode(cart)
    assert codec.encode(cart) == first
    assert list(json.loads(first)["by_sku"]) == ["b", "a"]
    assert list(codec.decode(first).by_sku) == ["b", "a"]
    # Sets are written in iteration order (hash order): codec v1 sorted them.
    assert set(json.loads(first)["tags"]) == cart.tags


# -- TypedDict, dict, bytes -------------------------------------------------------------------


def test_typeddict_roundtrip() -> None:
    movie: Movie = {"title": "Heat", "year": 1995}
    codec = codec_for(Movie)
    assert codec.encode(movie) == b'{"title":"Heat","year":1995}'
    assert codec.decode(codec.encode(movie)) == movie


def test_typeddict_converts_values_and_keeps_extra_keys() -> None:
    show: Show = {"aired": datetime(2026, 1, 1, tzinfo=UTC)}
    codec = codec_for(Show)
    data = codec.encode(show)
    assert data == b'{"aired":"2026-01-01T00:00:00Z"}'
    assert codec.decode(data) == show
    assert isinstance(show["aired"], datetime)  # not mutated
    assert codec.decode(b'{"title":"t","extra":1}') == {"title": "t", "extra": 1}
    # Keys it does not declare are written in their JSON form and read as plain JSON.
    extra: Any = {
        "aired": datetime(2026, 1, 1, tzinfo=UTC),
        "seen": datetime(2026, 1, 2, tzinfo=UTC),
    }
    assert codec.decode(codec.encode(extra)) == {**extra, "seen": "2026-01-02T00:00:00Z"}


def test_typeddict_errors() -> None:
    codec = codec_for(Movie)
    with pytest.raises(CodecError, match="missing required field `year`"):
        codec.decode(b'{"title":"Heat"}')
    with pytest.raises(CodecError, match=r"Expected `int`, got `str` - at `\$\.year`"):
        codec.decode(b'{"title":"Heat","year":"1995"}')
    with pytest.raises(InvalidObject, match="expected Movie, got list"):
        codec.encode([])  # type: ignore[arg-type]
    with pytest.raises(InvalidObject, match="missing required field `year`"):
        codec.encode({"title": "Heat"})  # type: ignore[typeddict-item]


def test_plain_dict_roundtrip() -> None:
    codec = codec_for(dict)
    value = {"a": [1, 2.5, None, True], "b": {"c": "ü"}}
    assert codec.encode(value) == '{"a":[1,2.5,null,true],"b":{"c":"ü"}}'.encode()
    assert codec.decode(codec.encode(value)) == value
    with pytest.raises(CodecError, match="Expected `object`, got `array`"):
        codec.decode(b"[]")
    # Untyped values are written in their JSON form, and read back as plain JSON.
    assert codec.decode(codec.encode({"when": datetime(2026, 1, 1)})) == {
        "when": "2026-01-01T00:00:00"
    }
    assert codec.decode(codec.encode({1: (2, 3)})) == {"1": [2, 3]}
    with pytest.raises(InvalidObject, match="unsupported"):
        codec.encode({"thing": NotSupported()})
    with pytest.raises(InvalidObject):
        codec.encode([1])  # type: ignore[arg-type]


def test_bytes_codec_is_identity() -> None:
    codec = codec_for(bytes)
    data = b"\x00\x01raw"
    assert codec.encode(data) is data
    assert codec.decode(data) is data
    assert codec.decode(bytearray(b"ab")) == b"ab"  # type: ignore[arg-type]
    with pytest.raises(InvalidObject, match="expected bytes, got str"):
        codec.encode("text")  # type: ignore[arg-type]


# -- check_instance ---------------------------------------------------------------------------


def test_check_instance() -> None:
    check_instance(Order, Order("o", 1, 1.0))
    check_instance(Movie, {"anything": "goes"})
    check_instance(dict, {})
    check_instance(bytes, b"")
    check_instance(Box[int], Box(1))
    with pytest.raises(InvalidObject, match="expected Order, got Item"):
        check_instance(Order, Item("a"))
    with pytest.raises(InvalidObject, match="expected Movie, got list"):
        check_instance(Movie, [])


# -- pydantic (optional) and msgspec ----------------------------------------------------------


def test_pydantic_model() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Customer(pydantic.BaseModel):  # type: ignore[misc, name-defined]
        name: str
        joined: datetime
        tags: list[str] = []  # noqa: RUF012 - pydantic copies defaults

    codec = codec_for(Customer)
    customer = Customer(name="Ada", joined=datetime(2026, 1, 1, tzinfo=UTC))
    data = codec.encode(customer)
    assert codec.decode(data) == customer
    assert codec.encode(customer) == data
    assert codec_for(Customer) is codec
    with pytest.raises(InvalidObject, match="expected Customer, got dict"):
        codec.encode({"name": "Ada"})  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="cannot decode Customer"):
        codec.decode(b'{"name": 1}')
    with pytest.raises(CodecError, match="cannot decode Customer"):
        codec.decode(b"{")
    # A model built without validation may hold what would not validate again.
    unchecked = Customer.model_construct(name=1, joined=datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(InvalidObject, match="would not decode again"):
        codec.encode(unchecked)

    @dataclass
    class Account:
        owner: Customer
        backup: Customer | None = None

    account = Account(customer)
    assert roundtrip(account) == account
    with pytest.raises(CodecError, match=r"validation error for Customer(.|\n)* at `\$\.owner`"):
        codec_for(Account).decode(b'{"owner":{"name":"x"}}')
    with pytest.raises(InvalidObject, match=r"at `\$\.owner`"):
        codec_for(Account).encode(Account(unchecked))


def test_msgspec_struct() -> None:
    class Payment(msgspec.Struct):
        id: str
        cents: int
        at: datetime | None = None

    codec = codec_for(Payment)
    payment = Payment("p-1", 250, datetime(2026, 1, 1, tzinfo=UTC))
    data = codec.encode(payment)
    assert codec.decode(data) == payment
    assert codec.encode(payment) == data
    assert codec_for(Payment) is codec
    with pytest.raises(InvalidObject, match="expected Payment, got dict"):
        codec.encode({"id": "p"})  # type: ignore[arg-type]
    with pytest.raises(CodecError, match="cannot decode Payment"):
        codec.decode(b'{"id":"p","cents":"many"}')
    with pytest.raises(CodecError, match="cannot decode Payment"):
        codec.decode(b"{")

    @dataclass
    class Ledger:
        payments: list[Payment]

    ledger = Ledger([payment])
    assert roundtrip(ledger) == ledger


# -- refused when written, not when read (regressions) ----------------------------------------


@dataclass
class Bag:
    things: set  # type: ignore[type-arg]  # bare: its items are read back as plain JSON
    pairs: set[tuple[int, int]] = field(default_factory=set)


def test_a_set_that_would_not_decode_again_is_refused_when_written() -> None:
    # Tuples in a bare set are written as arrays, which are read back as lists: unhashable.
    codec = codec_for(Bag)
    with pytest.raises(InvalidObject, match="would not decode again") as info:
        codec.encode(Bag({(1, 2), (3, 4)}))
    assert not isinstance(info.value, CodecError)
    # Declared as tuples, they are rebuilt as tuples.
    bag = Bag({1, "two"}, {(1, 2), (3, 4)})
    assert codec.decode(codec.encode(bag)) == bag


def test_a_field_of_the_wrong_type_is_the_callers_mistake() -> None:
    with pytest.raises(InvalidObject, match="id") as info:
        codec_for(Order).encode(Order(1, 2, 3.0))  # type: ignore[arg-type]
    assert not isinstance(info.value, CodecError)  # not an adapter's failure
    with pytest.raises(InvalidObject, match="qty"):
        codec_for(Cart).encode(Cart([], {"k": Item("k", "1")}))  # type: ignore[arg-type]


def test_text_with_a_lone_surrogate_is_refused_when_written() -> None:
    with pytest.raises(InvalidObject, match="surrogate"):
        codec_for(Order).encode(Order("\ud800", 1, 1.0))
    with pytest.raises(InvalidObject, match="surrogate"):
        codec_for(dict).encode({"\udfff": 1})
