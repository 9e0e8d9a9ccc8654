"""Objects whose bytes, as written by the first codec (v1, the json-module one), are kept in
``tests/data/codec_v1.json``, so that every later codec is tested against data already stored.

The fixture was written once by running ``python -m tests.codec_v1_samples`` with codec v1. Do
not write it again with a later codec: it would then test that codec against itself. The script
refuses to overwrite the file; a new wire format gets a new fixture (``codec_v2.json``...).
"""

from __future__ import annotations

import base64
import enum
import json
import math
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, NewType, Optional, TypedDict, TypeVar

import msgspec
import pydantic

FIXTURE = Path(__file__).parent / "data" / "codec_v1.json"

T = TypeVar("T")
Sku = NewType("Sku", str)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.Enum):
    LOW = 1
    HIGH = 2


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.IntFlag):
    READ = 1
    WRITE = 2


@dataclass
class Order:
    id: str
    amount: int
    price: float
    note: str | None = None


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
    numbers: set[int] = field(default_factory=set)
    best: Item | None = None
    fallback: Optional[Item] = None  # noqa: UP045 - the typing spelling is supported too
    seq: Sequence[int] = field(default_factory=list)
    mapping: Mapping[str, float] = field(default_factory=dict)


@dataclass
class Values:
    color: Color
    level: Level
    priority: Priority
    perm: Perm
    when: datetime
    when_utc: datetime
    naive: datetime
    day: date
    at: time
    at_tz: time
    wait: timedelta
    back: timedelta
    amount: Decimal
    big_amount: Decimal
    uid: uuid.UUID
    blob: bytes
    buffer: bytearray
    sku: Sku
    score: Annotated[int, "meta"]
    mode: Literal["fast", "slow"]
    either: int | str
    huge: int
    anything: Any = None


@dataclass
class Keys:
    by_int: dict[int, str]
    by_color: dict[Color, int]
    by_priority: dict[Priority, int]
    by_uuid: dict[uuid.UUID, str]
    by_mode: dict[Literal["a", "b"], int]


@dataclass
class Node:
    name: str
    children: list[Node] = field(default_factory=list)


@dataclass
class Box(Generic[T]):
    item: T
    items: list[T] = field(default_factory=list)


@dataclass
class Derived:
    base: int
    doubled: int = field(init=False)

    def __post_init__(self) -> None:
        self.doubled = self.base * 2


@dataclass(kw_only=True)
class Text:
    plain: str
    emoji: str
    escapes: str
    empty: list[str] = field(default_factory=list)


@dataclass
class Floats:
    """v1 wrote the non-finite floats as the bare tokens NaN and Infinity (not standard JSON)."""

    nan: float
    inf: float
    minus_inf: float
    whole: float


@dataclass
class DayHoldingDatetime:
    """v1 accepted a datetime in a date field (a datetime is a date) and wrote it in full."""

    day: date


@dataclass
class OldZone:
    """A UTC offset with seconds (local mean time of old dates), which RFC 3339 cannot write."""

    when: datetime


class Movie(TypedDict):
    title: str
    year: int


class Show(TypedDict, total=False):
    title: str
    aired: datetime
    runtime: timedelta


class Payment(msgspec.Struct):
    id: str
    cents: int
    at: datetime | None = None
    hold: timedelta | None = None


@dataclass
class Ledger:
    payments: list[Payment]
    hold: timedelta


class Customer(pydantic.BaseModel):
    name: str
    joined: datetime
    trial: timedelta
    credit: Decimal
    tags: list[str] = []


@dataclass
class Account:
    owner: Customer
    backup: Customer | None = None


_CUSTOMER = Customer(
    name="Ada",
    joined=datetime(2026, 1, 1, tzinfo=UTC),
    trial=timedelta(days=14, seconds=1),
    credit=Decimal("12.30"),
    tags=["vip"],
)

#: name -> (the type given to codec_for, the object encoded)
SAMPLES: dict[str, tuple[Any, Any]] = {
    "order": (Order, Order("o-1", 5, 9.5)),
    "order_int_price_note": (Order, Order("o-2", 0, 3, note="ünïcode ✓")),
    "values": (
        Values,
        Values(
            color=Color.BLUE,
            level=Level.HIGH,
            priority=Priority.HIGH,
            perm=Perm.READ | Perm.WRITE,
            when=datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=timezone(timedelta(hours=2))),
            when_utc=datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),
            naive=datetime(2026, 3, 4, 5, 6),
            day=date(2026, 3, 4),
            at=time(12, 30),
            at_tz=time(12, 30, 1, 5, tzinfo=timezone(timedelta(hours=-5))),
            wait=timedelta(days=1, seconds=5, microseconds=7),
            back=timedelta(seconds=-1.5),
            amount=Decimal("10.50"),
            big_amount=Decimal("-1.5E+30"),
            uid=uuid.UUID("12345678-1234-5678-1234-567812345678"),
            blob=b"\x00\xffbinary",
            buffer=bytearray(b"buf"),
            sku=Sku("sku-9"),
            score=4,
            mode="slow",
            either="text",
            huge=2**70,
            anything={"free": [1, "form", None, True, 2.5]},
        ),
    ),
    "cart": (
        Cart,
        Cart(
            items=[Item("a"), Item("b", 2)],
            by_sku={"c": Item("c", 3)},
            points=(Point(1.0, 2.5), Point(-1.0, 0.0)),
            pair=(7, "seven"),
            tags=frozenset({"z", "a", "m"}),
            labels={"x", "y"},
            numbers={3, 1, 2},
            best=Item("best"),
            seq=[1, 2],
            mapping={"k": 1.5},
        ),
    ),
    "cart_empty": (Cart, Cart([], {})),
    "keys": (
        Keys,
        Keys(
            by_int={1: "one", -2: "minus two"},
            by_color={Color.RED: 1},
            by_priority={Priority.LOW: 5},
            by_uuid={uuid.UUID(int=1): "first"},
            by_mode={"b": 2},
        ),
    ),
    "node": (Node, Node("root", [Node("a", [Node("a1")]), Node("b")])),
    "box_of_items": (Box[Item], Box(Item("x"), [Item("y", 2)])),
    "box_of_anything": (Box, Box([1, "two"], [{"three": 3}])),
    "derived": (Derived, Derived(4)),
    "text": (Text, Text(plain="plain", emoji="😀 ✓", escapes='quote " backslash \\ \n\t\x00')),
    "floats": (Floats, Floats(math.nan, math.inf, -math.inf, 2.0)),
    "day_holding_datetime": (
        DayHoldingDatetime,
        DayHoldingDatetime(datetime(2026, 1, 2, 3, 4, tzinfo=UTC)),
    ),
    "old_zone": (
        OldZone,
        OldZone(datetime(1890, 1, 1, 12, tzinfo=timezone(timedelta(minutes=19, seconds=32)))),
    ),
    "movie": (Movie, Movie(title="Heat", year=1995)),
    "show": (
        Show,
        Show(aired=datetime(2026, 1, 1, tzinfo=UTC), runtime=timedelta(minutes=90)),
    ),
    "show_with_extra_keys": (Show, {"title": "t", "extra": [1, {"deep": None}]}),
    "plain_dict": (dict, {"a": [1, 2.5, None, True], "b": {"c": "ü"}}),
    "payment": (
        Payment,
        Payment("p-1", 250, datetime(2026, 1, 1, tzinfo=UTC), timedelta(hours=1, microseconds=1)),
    ),
    "ledger": (
        Ledger,
        Ledger([Payment("p-2", 1, hold=timedelta(seconds=30))], timedelta(seconds=30)),
    ),
    "customer": (Customer, _CUSTOMER),
    "account": (Account, Account(_CUSTOMER)),
    "raw_bytes": (bytes, b"\x00\x01\xff raw"),
}


def main() -> None:
    """Write the fixture with the codec of this checkout (refuses to overwrite it)."""
    from statestream._codec import codec_for

    if FIXTURE.exists():
        sys.exit(f"{FIXTURE} exists: it holds the bytes of codec v1 and must not be rewritten")
    samples: dict[str, dict[str, str]] = {}
    for name, (tp, obj) in SAMPLES.items():
        data = codec_for(tp).encode(obj)
        if tp is bytes:
            samples[name] = {"base64": base64.b64encode(data).decode()}
        else:
            text = data.decode()
            assert text.encode() == data
            samples[name] = {"json": text}
    FIXTURE.parent.mkdir(exist_ok=True)
    doc = {
        "about": "bytes written by statestream codec v1 (json module); see codec_v1_samples.py",
        "samples": samples,
    }
    FIXTURE.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
