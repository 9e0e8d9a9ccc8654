"""JSON codecs for workflow objects, compiled once per type.

:func:`codec_for` picks a codec from the kind of the type:

* dataclasses: a plan compiled from the field annotations (nested dataclasses, containers,
  ``Optional``/unions, enums, ``datetime``/``date``/``time``/``timedelta``, ``Decimal``,
  ``UUID`` and ``bytes``); missing fields take their defaults and unknown keys are ignored;
* pydantic v2 models (``model_dump_json``/``model_validate_json``);
* msgspec Structs (``msgspec.json``);
* ``TypedDict`` classes (values converted like dataclass fields) and plain ``dict``;
* ``bytes``, passed through unchanged.

The JSON is compact UTF-8. Encoding validates the object against the annotations as it walks it,
so an object that would not decode again is refused when it is written, not when it is read.

Wire formats of the non-JSON field types::

    Enum -> its value          datetime/date/time -> ISO 8601 string   timedelta -> seconds (float)
    Decimal -> string          UUID -> string                          bytes -> base64 string
    tuple/set/frozenset -> array (sets sorted when their items can be compared)
"""

from __future__ import annotations

import base64
import binascii
import collections.abc
import contextlib
import dataclasses
import datetime as _dt
import decimal
import enum
import inspect
import json
import sys
import threading
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ._core.protocols import Codec
from .errors import CodecError, ConfigurationError, InvalidObject

__all__ = ["check_instance", "codec_for"]

T = TypeVar("T")

_Fn = Callable[[Any], Any]
_NoneType = type(None)

_SUPPORTED = (
    "supported are dataclasses, pydantic v2 models, msgspec Structs, TypedDict classes, "
    "dict and bytes"
)
_SUPPORTED_FIELDS = (
    "supported field types are str, int, float, bool, None, Any, dataclasses, TypedDicts, "
    "pydantic models, msgspec Structs, Enum, Literal, datetime, date, time, timedelta, Decimal, "
    "UUID, bytes, list/Sequence, tuple, set/frozenset, dict/Mapping with str, int, Enum or UUID "
    "keys, and unions of these (X | None, or members that are told apart by their JSON type)"
)


# --------------------------------------------------------------------------------------------
# JSON text <-> Python values, through the C accelerators of the json module when available.


def _unserializable(obj: object) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _make_dumps() -> Callable[[Any], str]:
    """Return the fastest function that turns a value into compact JSON text.

    ``json.dumps`` builds a new encoder on every call; the C encoder can be built once (it keeps no
    state when circular-reference checks are off: cycles end in ``RecursionError`` instead).
    """
    fallback = json.JSONEncoder(
        ensure_ascii=False, separators=(",", ":"), check_circular=False, default=_unserializable
    ).encode
    make = getattr(json.encoder, "c_make_encoder", None)
    basestring = getattr(json.encoder, "c_encode_basestring", None)
    if make is None or basestring is None:  # pragma: no cover - interpreters without _json
        return fallback
    try:
        encoder = make(None, _unserializable, basestring, None, ":", ",", False, False, True)

        def dumps(obj: Any) -> str:
            return "".join(encoder(obj, 0))

        probe = {"a": [1, 2.5, None, True, 'é\n"'], "b": {"c": -3}, "d": ""}
        if dumps(probe) != fallback(probe):  # pragma: no cover - defensive
            return fallback
    except Exception:  # pragma: no cover - a future json module with another signature
        return fallback
    return dumps


def _make_loads() -> Callable[[str], Any]:
    """Return the fastest function that parses a JSON document.

    ``JSONDecoder.decode`` runs a regular expression around the document for white space; the
    scanner alone is enough for the compact documents the codecs write, and any other input
    (white space around the value, trailing data, invalid JSON) goes through ``decode`` for the
    usual behaviour and error messages.
    """
    decoder = json.JSONDecoder()
    scan_once = getattr(decoder, "scan_once")  # noqa: B009 - not in the type stubs
    slow = decoder.decode

    def loads(text: str) -> Any:
        try:
            obj, end = scan_once(text, 0)
        except StopIteration:
            return slow(text)
        if end != len(text):
            return slow(text)
        return obj

    return loads


_dumps = _make_dumps()
_loads = _make_loads()


# --------------------------------------------------------------------------------------------
# Converters: per-type functions between Python values and JSON-ready values.


class _Invalid(Exception):
    """A value does not fit its declared type; ``path`` is filled in while unwinding."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # Filled in while unwinding, innermost first: ``.field``, ``['key']`` or a list index.
        self.path: list[str | int] = []

    def where(self) -> str:
        out = "".join(f"[{p}]" if isinstance(p, int) else p for p in reversed(self.path))
        return out.lstrip(".")

    def describe(self) -> str:
        where = self.where()
        return f"{where}: {self.message}" if where else self.message


def _tname(obj: object) -> str:
    return type(obj).__name__


def _type_repr(tp: Any) -> str:
    if tp is None or tp is _NoneType:
        return "None"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_type_repr(a) for a in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin is not None and args:
        inner = ", ".join("..." if a is Ellipsis else _type_repr(a) for a in args)
        return f"{_type_repr(origin)}[{inner}]"
    if isinstance(tp, type):
        return tp.__name__
    return repr(tp).replace("typing.", "")


def _identity(value: Any) -> Any:
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class _Conv:
    """How one declared type is written and read.

    Values whose exact type is in ``enc_fast`` (resp. ``dec_fast``) are already in their final
    form and are passed through without a call; others go through ``enc`` (resp. ``dec``), which
    validate and convert or raise :class:`_Invalid`. ``kinds`` are the Python types of the
    decoded JSON that this type is read from (``weak`` ones only if no other union member claims
    them); unions use them to pick the member to decode with.
    """

    name: str
    enc_fast: frozenset[type]
    enc: _Fn
    dec_fast: frozenset[type]
    dec: _Fn
    kinds: frozenset[type]
    weak: frozenset[type] = frozenset()
    is_any: bool = False


_JSON_TYPES: frozenset[type] = frozenset({str, int, float, bool, _NoneType, list, dict})


def _scalar(name: str, tp: type, enc: _Fn, dec: _Fn) -> _Conv:
    fast = frozenset({tp})
    return _Conv(name, fast, enc, fast, dec, fast)


def _reject(name: str) -> _Fn:
    def reject(value: Any) -> Any:
        raise _Invalid(f"expected {name}, got {_tname(value)}")

    return reject


def _enc_str(value: Any) -> Any:
    if isinstance(value, str):
        return value
    raise _Invalid(f"expected str, got {_tname(value)}")


def _enc_int(value: Any) -> Any:
    if isinstance(value, int):  # bool and IntEnum
        return int(value)
    raise _Invalid(f"expected int, got {_tname(value)}")


def _enc_float(value: Any) -> Any:
    if isinstance(value, int | float):
        return float(value)
    raise _Invalid(f"expected float, got {_tname(value)}")


def _dec_float(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError as exc:
            raise _Invalid(f"{value} is too large for a float") from exc
    raise _Invalid(f"expected float, got {_tname(value)}")


def _enc_datetime(value: Any) -> Any:
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    raise _Invalid(f"expected datetime, got {_tname(value)}")


def _enc_date(value: Any) -> Any:
    if isinstance(value, _dt.date):  # a datetime is a date too, and is read back as one
        return value.isoformat()
    raise _Invalid(f"expected date, got {_tname(value)}")


def _enc_time(value: Any) -> Any:
    if isinstance(value, _dt.time):
        return value.isoformat()
    raise _Invalid(f"expected time, got {_tname(value)}")


def _enc_timedelta(value: Any) -> Any:
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    raise _Invalid(f"expected timedelta, got {_tname(value)}")


def _enc_decimal(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise _Invalid(f"expected Decimal, got {_tname(value)}")


def _enc_uuid(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    raise _Invalid(f"expected UUID, got {_tname(value)}")


def _enc_bytes(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    raise _Invalid(f"expected bytes, got {_tname(value)}")


def _parse_str(name: str, parse: Callable[[str], Any]) -> _Fn:
    def dec(value: Any) -> Any:
        if type(value) is not str:
            raise _Invalid(f"expected {name} as a string, got {_tname(value)}")
        try:
            return parse(value)
        except (ValueError, ArithmeticError) as exc:
            raise _Invalid(f"invalid {name} {value!r}: {exc}") from exc

    return dec


def _parse_date(text: str) -> _dt.date:
    if len(text) > 10:  # written from a datetime stored in a date field
        return _dt.datetime.fromisoformat(text)
    return _dt.date.fromisoformat(text)


def _parse_bytes(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from exc


def _dec_timedelta(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return _dt.timedelta(seconds=value)
        except OverflowError as exc:
            raise _Invalid(f"invalid timedelta {value!r}: {exc}") from exc
    raise _Invalid(f"expected timedelta as seconds, got {_tname(value)}")


def _dec_decimal_number(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return decimal.Decimal(repr(value))
    raise _Invalid(f"expected Decimal as a string, got {_tname(value)}")


_parse_decimal = _parse_str("Decimal", decimal.Decimal)


def _dec_decimal(value: Any) -> Any:
    if type(value) is str:
        return _parse_decimal(value)
    return _dec_decimal_number(value)


_ANY = _Conv("Any", _JSON_TYPES, _identity, _JSON_TYPES, _identity, _JSON_TYPES, is_any=True)
_NONE = _scalar("None", _NoneType, _reject("None"), _reject("None"))
_STR = _scalar("str", str, _enc_str, _reject("str"))
_INT = _scalar("int", int, _enc_int, _reject("int"))
_BOOL = _scalar("bool", bool, _reject("bool"), _reject("bool"))
_FLOAT = _Conv(
    "float",
    frozenset({float, int}),
    _enc_float,
    frozenset({float}),
    _dec_float,
    frozenset({float}),
    weak=frozenset({int}),
)
_STR_KIND = frozenset({str})
_NO_FAST: frozenset[type] = frozenset()


def _str_form(name: str, enc: _Fn, parse: Callable[[str], Any]) -> _Conv:
    return _Conv(name, _NO_FAST, enc, _NO_FAST, _parse_str(name, parse), _STR_KIND)


_LEAVES: dict[Any, _Conv] = {
    Any: _ANY,
    object: _ANY,
    None: _NONE,
    _NoneType: _NONE,
    str: _STR,
    int: _INT,
    float: _FLOAT,
    bool: _BOOL,
    _dt.datetime: _str_form("datetime", _enc_datetime, _dt.datetime.fromisoformat),
    _dt.date: _str_form("date", _enc_date, _parse_date),
    _dt.time: _str_form("time", _enc_time, _dt.time.fromisoformat),
    _dt.timedelta: _Conv(
        "timedelta",
        _NO_FAST,
        _enc_timedelta,
        _NO_FAST,
        _dec_timedelta,
        frozenset({float}),
        weak=frozenset({int}),
    ),
    decimal.Decimal: _Conv(
        "Decimal",
        _NO_FAST,
        _enc_decimal,
        _NO_FAST,
        _dec_decimal,
        _STR_KIND,
        weak=frozenset({int, float}),
    ),
    uuid.UUID: _str_form("UUID", _enc_uuid, uuid.UUID),
    bytes: _str_form("bytes", _enc_bytes, _parse_bytes),
    bytearray: _str_form("bytearray", _enc_bytes, lambda text: bytearray(_parse_bytes(text))),
}


def _convert_items(items: list[Any], fast: frozenset[type], conv: _Fn) -> list[Any]:
    """Convert the items of a list in place (fresh lists only) and return it."""
    for i, item in enumerate(items):
        if type(item) not in fast:
            try:
                items[i] = conv(item)
            except _Invalid as exc:
                exc.path.append(i)
                raise
    return items


def _sequence(
    name: str,
    item: _Conv,
    accepts: Any,
    build: Callable[[list[Any]], Any] | None,
) -> _Conv:
    """A homogeneous array: list, Sequence, tuple[X, ...], set, frozenset."""
    enc_fast, enc_item = item.enc_fast, item.enc
    dec_fast, dec_item = item.dec_fast, item.dec

    def enc(value: Any) -> Any:
        if not isinstance(value, accepts) or isinstance(value, str | bytes):
            raise _Invalid(f"expected {name}, got {_tname(value)}")
        ordered = isinstance(value, list | tuple)
        out: Any = value
        for element in value:
            if type(element) not in enc_fast:
                out = _convert_items(list(value), enc_fast, enc_item)
                break
        if not ordered:  # a set: sorted, so that the bytes do not depend on hash order
            if out is value:
                out = list(value)
            with contextlib.suppress(TypeError):  # items that cannot be compared keep their order
                out.sort()
        return out

    def dec(value: Any) -> Any:
        if type(value) is not list:
            raise _Invalid(f"expected {name} as an array, got {_tname(value)}")
        for element in value:
            if type(element) not in dec_fast:
                _convert_items(value, dec_fast, dec_item)
                break
        if build is None:
            return value
        try:
            return build(value)
        except TypeError as exc:  # unhashable set items
            raise _Invalid(f"cannot build {name}: {exc}") from exc

    return _Conv(name, _NO_FAST, enc, _NO_FAST, dec, frozenset({list}))


def _fixed_tuple(name: str, items: list[_Conv]) -> _Conv:
    """``tuple[X, Y, Z]``: an array of exactly that many items."""
    size = len(items)
    plan = tuple((i, c.enc_fast, c.enc, c.dec_fast, c.dec) for i, c in enumerate(items))

    def enc(value: Any) -> Any:
        if not isinstance(value, tuple):
            raise _Invalid(f"expected {name}, got {_tname(value)}")
        if len(value) != size:
            raise _Invalid(f"expected {name}, got a tuple of {len(value)} items")
        out = list(value)
        for i, efast, econv, _, _ in plan:
            if type(out[i]) not in efast:
                try:
                    out[i] = econv(out[i])
                except _Invalid as exc:
                    exc.path.append(i)
                    raise
        return out

    def dec(value: Any) -> Any:
        if type(value) is not list or len(value) != size:
            got = f"{len(value)} items" if type(value) is list else _tname(value)
            raise _Invalid(f"expected {name} as an array of {size} items, got {got}")
        for i, _, _, dfast, dconv in plan:
            if type(value[i]) not in dfast:
                try:
                    value[i] = dconv(value[i])
                except _Invalid as exc:
                    exc.path.append(i)
                    raise
        return tuple(value)

    return _Conv(name, _NO_FAST, enc, _NO_FAST, dec, frozenset({list}))


def _mapping(name: str, key: _Conv, val: _Conv, accepts: Any) -> _Conv:
    """``dict[K, V]`` / ``Mapping[K, V]``: a JSON object; keys are written as strings."""
    kfast, kenc, kdec_fast, kdec = key.enc_fast, key.enc, key.dec_fast, key.dec
    vfast, venc, vdec_fast, vdec = val.enc_fast, val.enc, val.dec_fast, val.dec
    str_keys = kdec_fast == _STR_KIND

    def enc(value: Any) -> Any:
        if not isinstance(value, accepts):
            raise _Invalid(f"expected {name}, got {_tname(value)}")
        for k, v in value.items():
            if type(k) not in kfast or type(v) not in vfast:
                break
        else:
            return value if isinstance(value, dict) else dict(value)
        out = {}
        for k, v in value.items():
            if type(k) not in kfast:
                try:
                    k = kenc(k)
                except _Invalid as exc:
                    exc.message = f"key {k!r}: {exc.message}"
                    raise
            if type(v) not in vfast:
                try:
                    v = venc(v)
                except _Invalid as exc:
                    exc.path.append(f"[{k!r}]")
                    raise
            out[k] = v
        return out

    def dec(value: Any) -> Any:
        if type(value) is not dict:
            raise _Invalid(f"expected {name} as an object, got {_tname(value)}")
        if str_keys:
            for k, v in value.items():
                if type(v) not in vdec_fast:
                    try:
                        value[k] = vdec(v)
                    except _Invalid as exc:
                        exc.path.append(f"[{k!r}]")
                        raise
            return value
        out = {}
        for k, v in value.items():
            try:
                nk = kdec(k)
            except _Invalid as exc:
                exc.message = f"key {k!r}: {exc.message}"
                raise
            if type(v) not in vdec_fast:
                try:
                    v = vdec(v)
                except _Invalid as exc:
                    exc.path.append(f"[{k!r}]")
                    raise
            out[nk] = v
        return out

    return _Conv(name, _NO_FAST, enc, _NO_FAST, dec, frozenset({dict}))


def _union(name: str, members: list[_Conv]) -> _Conv:
    """``A | B | ...``: written by the first member that accepts the value, read by JSON type."""
    if any(m.is_any for m in members):
        return _ANY
    dispatch: dict[type, _Fn] = {}
    for m in members:
        for kind in m.kinds:
            if kind in dispatch:
                raise ValueError(
                    f"ambiguous union {name}: more than one member is written as JSON "
                    f"{_JSON_NAMES.get(kind, kind.__name__)}, so they cannot be told apart"
                )
            dispatch[kind] = m.dec
    for m in members:
        for kind in m.weak:
            dispatch.setdefault(kind, m.dec)
    enc_fast = _NO_FAST.union(*(m.enc_fast for m in members))
    dec_fast = _NO_FAST.union(*(m.dec_fast for m in members))
    candidates = [m.enc for m in members if m is not _NONE]

    if len(candidates) == 1:
        enc = candidates[0]
    else:

        def enc(value: Any) -> Any:
            for candidate in candidates:
                try:
                    return candidate(value)
                except _Invalid:
                    continue
            raise _Invalid(f"expected {name}, got {_tname(value)}")

    def dec(value: Any) -> Any:
        conv = dispatch.get(type(value))
        if conv is None:
            raise _Invalid(f"expected {name}, got {_tname(value)}")
        return conv(value)

    kinds = frozenset(dispatch)
    return _Conv(name, enc_fast, enc, dec_fast, dec, kinds)


_JSON_NAMES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    _NoneType: "null",
    list: "array",
    dict: "object",
}
_SCALARS = (str, int, float, bool, _NoneType)


def _literal(name: str, values: tuple[Any, ...]) -> _Conv:
    """``Literal[...]`` of str/int/bool/None values or enum members (written as their value)."""
    to_json: dict[tuple[type, Any], Any] = {}
    from_json: dict[tuple[type, Any], Any] = {}
    for v in values:
        wire = v.value if isinstance(v, enum.Enum) else v
        if not isinstance(wire, _SCALARS):
            raise ValueError(f"{name}: literal value {v!r} is not a JSON scalar")
        to_json[(type(v), v)] = wire
        from_json[(type(wire), wire)] = v

    def enc(value: Any) -> Any:
        try:
            return to_json[(type(value), value)]
        except (KeyError, TypeError):
            raise _Invalid(f"expected {name}, got {value!r}") from None

    def dec(value: Any) -> Any:
        try:
            return from_json[(type(value), value)]
        except (KeyError, TypeError):
            raise _Invalid(f"expected {name}, got {value!r}") from None

    kinds = frozenset(t for t, _ in from_json)
    return _Conv(name, _NO_FAST, enc, _NO_FAST, dec, kinds)


def _enum(cls: type[enum.Enum]) -> _Conv:
    """An ``Enum``: written as its member's value."""
    name = cls.__name__
    by_value: dict[Any, enum.Enum] = {}
    for member in cls.__members__.values():
        if not isinstance(member.value, _SCALARS):
            raise ValueError(
                f"enum {name} has the value {member.value!r}, which is not a JSON scalar"
            )
        by_value[member.value] = member
    kinds = frozenset(type(v) for v in by_value)

    def enc(value: Any) -> Any:
        if isinstance(value, cls):
            return value.value
        raise _Invalid(f"expected {name}, got {_tname(value)}")

    def dec(value: Any) -> Any:
        member = by_value.get(value) if isinstance(value, _SCALARS) else None
        if member is not None and type(member.value) is type(value):
            return member
        try:  # Flag combinations and _missing_ hooks
            return cls(value)
        except (ValueError, TypeError) as exc:
            raise _Invalid(f"{value!r} is not a valid {name}") from exc

    return _Conv(name, _NO_FAST, enc, _NO_FAST, dec, kinds)


def _is_typeddict(tp: object) -> bool:
    return typing.is_typeddict(tp) or (
        isinstance(tp, type)
        and issubclass(tp, dict)
        and hasattr(tp, "__required_keys__")
        and hasattr(tp, "__total__")
    )


def _is_pydantic(tp: object, *, nested: bool = False) -> bool:
    attrs: tuple[str, ...] = ("model_dump_json", "model_validate_json")
    if nested:
        attrs += ("model_dump", "model_validate")
    return isinstance(tp, type) and all(hasattr(tp, attr) for attr in attrs)


def _msgspec_struct(tp: object) -> Any:
    """The msgspec module if ``tp`` is a msgspec Struct class, else None (never imports it)."""
    msgspec = sys.modules.get("msgspec")
    if msgspec is not None and isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return msgspec
    return None


_SEQUENCES: dict[Any, tuple[type | tuple[type, ...], Callable[[list[Any]], Any] | None]] = {
    list: (list, None),
    collections.abc.Sequence: ((list, tuple), None),
    collections.abc.MutableSequence: (list, None),
    collections.abc.Collection: ((list, tuple, set, frozenset), None),
    collections.abc.Iterable: ((list, tuple, set, frozenset), None),
    set: ((set, frozenset), set),
    collections.abc.MutableSet: ((set, frozenset), set),
    frozenset: ((set, frozenset), frozenset),
    collections.abc.Set: ((set, frozenset), frozenset),
}
_MAPPINGS: dict[Any, type] = {
    dict: dict,
    collections.abc.Mapping: collections.abc.Mapping,
    collections.abc.MutableMapping: dict,
}


class _ObjectPlan:
    """Field-by-field conversion of one dataclass (or generic dataclass alias)."""

    __slots__ = ("cls", "dec_fields", "enc_fields", "late_fields", "name")

    def __init__(self, cls: type, name: str) -> None:
        self.cls = cls
        self.name = name
        self.enc_fields: tuple[tuple[str, frozenset[type], _Fn], ...] = ()
        self.dec_fields: tuple[tuple[str, frozenset[type], _Fn], ...] = ()
        self.late_fields: tuple[tuple[str, frozenset[type], _Fn], ...] = ()

    def to_json(self, obj: Any) -> dict[str, Any]:
        out = {}
        for name, fast, conv in self.enc_fields:
            value = getattr(obj, name)
            if type(value) not in fast:
                try:
                    value = conv(value)
                except _Invalid as exc:
                    exc.path.append(f".{name}")
                    raise
            out[name] = value
        return out

    def from_json(self, raw: Any) -> Any:
        if type(raw) is not dict:
            raise _Invalid(f"expected {self.name} as an object, got {_tname(raw)}")
        kwargs = {}
        for name, fast, conv in self.dec_fields:
            if name in raw:
                value = raw[name]
                if type(value) not in fast:
                    try:
                        value = conv(value)
                    except _Invalid as exc:
                        exc.path.append(f".{name}")
                        raise
                kwargs[name] = value
        try:
            obj = self.cls(**kwargs)
        except Exception as exc:
            raise _Invalid(f"cannot create {self.name}: {exc}") from exc
        for name, fast, conv in self.late_fields:  # init=False fields
            if name in raw:
                value = raw[name]
                if type(value) not in fast:
                    try:
                        value = conv(value)
                    except _Invalid as exc:
                        exc.path.append(f".{name}")
                        raise
                object.__setattr__(obj, name, value)
        return obj

    def conv(self) -> _Conv:
        cls, name, to_json = self.cls, self.name, self.to_json

        def enc(value: Any) -> Any:
            if isinstance(value, cls):
                return to_json(value)
            raise _Invalid(f"expected {name}, got {_tname(value)}")

        return _Conv(name, _NO_FAST, enc, _NO_FAST, self.from_json, frozenset({dict}))


class _TypedDictPlan:
    """Key-by-key conversion of one TypedDict; keys it does not declare pass through as they are."""

    __slots__ = ("fields", "name", "required")

    def __init__(self, name: str) -> None:
        self.name = name
        self.fields: tuple[tuple[str, frozenset[type], _Fn, frozenset[type], _Fn], ...] = ()
        self.required: tuple[str, ...] = ()

    def _check(self, value: Any, verb: str) -> None:
        if not isinstance(value, dict):
            raise _Invalid(f"expected {self.name}{verb}, got {_tname(value)}")
        for key in self.required:
            if key not in value:
                raise _Invalid(f"{self.name} is missing the required key {key!r}")

    def to_json(self, value: Any) -> Any:
        self._check(value, "")
        out = value
        for key, efast, econv, _, _ in self.fields:
            if key in value and type(value[key]) not in efast:
                if out is value:
                    out = dict(value)
                try:
                    out[key] = econv(value[key])
                except _Invalid as exc:
                    exc.path.append(f"[{key!r}]")
                    raise
        return out

    def from_json(self, raw: Any) -> Any:
        self._check(raw, " as an object")
        for key, _, _, dfast, dconv in self.fields:
            if key in raw and type(raw[key]) not in dfast:
                try:
                    raw[key] = dconv(raw[key])
                except _Invalid as exc:
                    exc.path.append(f"[{key!r}]")
                    raise
        return raw

    def conv(self) -> _Conv:
        return _Conv(self.name, _NO_FAST, self.to_json, _NO_FAST, self.from_json, frozenset({dict}))


def _resolve_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as exc:
        raise ValueError(f"cannot resolve the annotations of {cls.__name__}: {exc}") from exc


def _substitute(tp: Any, env: dict[Any, Any]) -> Any:
    """Replace type variables of ``env`` in ``tp`` (``T`` -> ``int``, ``list[T]`` -> ...)."""
    if isinstance(tp, TypeVar):
        return env.get(tp, tp)
    params = getattr(tp, "__parameters__", ())
    if params and not isinstance(tp, type):
        try:
            return tp[tuple(env.get(p, p) for p in params)]
        except TypeError:
            return tp
    return tp


class _Compiler:
    """Builds the converters of one top-level type; remembers plans to allow recursive types."""

    def __init__(self) -> None:
        self.plans: dict[Any, _ObjectPlan | _TypedDictPlan] = {}

    def conv(self, tp: Any, env: dict[Any, Any]) -> _Conv:
        tp = self._unwrap(tp, env)
        try:
            leaf = _LEAVES.get(tp)
        except TypeError:  # unhashable annotation
            leaf = None
        if leaf is not None:
            return leaf
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        name = _type_repr(tp)
        if origin is typing.Union or origin is types.UnionType:
            members: list[_Conv] = []
            for arg in args:
                member = self.conv(arg, env)
                if all(member is not m for m in members):
                    members.append(member)
            return members[0] if len(members) == 1 else _union(name, members)
        if origin is typing.Literal:
            return _literal(name, args)
        if origin is tuple or tp is tuple:
            if not args or (len(args) == 2 and args[1] is Ellipsis):
                item = self.conv(args[0], env) if args else _ANY
                return _sequence(name, item, tuple, tuple)
            return _fixed_tuple(name, [self.conv(a, env) for a in args])
        base = origin if origin is not None else tp
        try:
            sequence = _SEQUENCES.get(base)
            mapping = _MAPPINGS.get(base)
        except TypeError:
            sequence = mapping = None
        if sequence is not None:
            item = self.conv(args[0], env) if args else _ANY
            return _sequence(name, item, sequence[0], sequence[1])
        if mapping is not None:
            key = self._key(args[0], env) if args else _STR
            value = self.conv(args[1], env) if args else _ANY
            return _mapping(name, key, value, mapping)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return _enum(tp)
        if _is_typeddict(tp):
            return self.typeddict_plan(tp).conv()
        if dataclasses.is_dataclass(base) and isinstance(base, type):
            return self.dataclass_plan(tp, env).conv()
        msgspec = _msgspec_struct(tp)
        if msgspec is not None:
            return self._msgspec(tp, msgspec)
        if _is_pydantic(tp, nested=True):
            return self._pydantic(tp)
        raise ValueError(f"unsupported type {name}; {_SUPPORTED_FIELDS}")

    def _unwrap(self, tp: Any, env: dict[Any, Any]) -> Any:
        while True:
            if isinstance(tp, str | typing.ForwardRef):
                raise ValueError(f"unresolved forward reference {tp!r}")
            if isinstance(tp, TypeVar):
                if tp in env:
                    tp = env[tp]
                    continue
                if tp.__bound__ is not None:
                    tp = tp.__bound__
                    continue
                return Any
            supertype = getattr(tp, "__supertype__", None)  # NewType
            if supertype is not None:
                tp = supertype
                continue
            if typing.get_origin(tp) is typing.Annotated:
                tp = typing.get_args(tp)[0]
                continue
            value = getattr(tp, "__value__", None)  # `type X = ...` (3.12+)
            if value is not None and type(tp).__name__ == "TypeAliasType":
                tp = value
                continue
            return tp

    def _key(self, tp: Any, env: dict[Any, Any]) -> _Conv:
        """Converter for dict keys: JSON object keys are strings."""
        tp = self._unwrap(tp, env)
        if tp is str or tp is Any or tp is object:
            return _STR
        if tp is int:
            return _Conv(
                "int", frozenset({int}), _enc_int, _NO_FAST, _parse_str("int", int), _STR_KIND
            )
        if tp is uuid.UUID:
            return _LEAVES[uuid.UUID]
        if typing.get_origin(tp) is typing.Literal and all(
            type(a) is str for a in typing.get_args(tp)
        ):
            return _literal(_type_repr(tp), typing.get_args(tp))
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            conv = _enum(tp)
            if conv.kinds == _STR_KIND:
                return conv
            if conv.kinds == frozenset({int}):
                dec_value = conv.dec

                def dec(key: Any) -> Any:
                    try:
                        return dec_value(int(key))
                    except ValueError as exc:
                        raise _Invalid(f"{key!r} is not a valid {tp.__name__}") from exc

                return _Conv(conv.name, _NO_FAST, conv.enc, _NO_FAST, dec, _STR_KIND)
        raise ValueError(
            f"unsupported dict key type {_type_repr(tp)}; keys must be str, int, UUID, "
            "an Enum with str or int values, or a Literal of strings"
        )

    def dataclass_plan(self, tp: Any, env: dict[Any, Any]) -> _ObjectPlan:
        origin = typing.get_origin(tp) or tp
        args = tuple(_substitute(a, env) for a in typing.get_args(tp))
        key = (origin, args)
        plan = self.plans.get(key)
        if isinstance(plan, _ObjectPlan):
            return plan
        plan = _ObjectPlan(origin, _type_repr(tp))
        self.plans[key] = plan  # before the fields, so that recursive types find it
        params = getattr(origin, "__parameters__", ())
        local_env = dict(zip(params, args, strict=False))
        hints = _resolve_hints(origin)
        enc_fields: list[tuple[str, frozenset[type], _Fn]] = []
        dec_fields: list[tuple[str, frozenset[type], _Fn]] = []
        late_fields: list[tuple[str, frozenset[type], _Fn]] = []
        for field in dataclasses.fields(origin):
            try:
                conv = self.conv(hints.get(field.name, Any), local_env)
            except ValueError as exc:
                raise ValueError(f"field {plan.name}.{field.name}: {exc}") from exc
            enc_fields.append((field.name, conv.enc_fast, conv.enc))
            entry = (field.name, conv.dec_fast, conv.dec)
            (dec_fields if field.init else late_fields).append(entry)
        _check_constructor(origin, {f[0] for f in dec_fields})
        plan.enc_fields = tuple(enc_fields)
        plan.dec_fields = tuple(dec_fields)
        plan.late_fields = tuple(late_fields)
        return plan

    def typeddict_plan(self, tp: Any) -> _TypedDictPlan:
        plan = self.plans.get((tp, ()))
        if isinstance(plan, _TypedDictPlan):
            return plan
        plan = _TypedDictPlan(tp.__name__)
        self.plans[(tp, ())] = plan
        fields = []
        for key, hint in _resolve_hints(tp).items():
            try:
                conv = self.conv(hint, {})
            except ValueError as exc:
                raise ValueError(f"key {plan.name}[{key!r}]: {exc}") from exc
            fields.append((key, conv.enc_fast, conv.enc, conv.dec_fast, conv.dec))
        plan.fields = tuple(fields)
        plan.required = tuple(sorted(getattr(tp, "__required_keys__", ())))
        return plan

    @staticmethod
    def _pydantic(tp: Any) -> _Conv:
        name = tp.__name__

        def enc(value: Any) -> Any:
            if not isinstance(value, tp):
                raise _Invalid(f"expected {name}, got {_tname(value)}")
            try:
                return value.model_dump(mode="json")
            except (ValueError, TypeError) as exc:
                raise _Invalid(f"cannot dump {name}: {exc}") from exc

        def dec(value: Any) -> Any:
            try:
                return tp.model_validate(value)
            except (ValueError, TypeError) as exc:
                raise _Invalid(f"invalid {name}: {exc}") from exc

        return _Conv(name, _NO_FAST, enc, _NO_FAST, dec, frozenset({dict}))

    @staticmethod
    def _msgspec(tp: Any, msgspec: Any) -> _Conv:
        name = tp.__name__
        array_like = bool(getattr(getattr(tp, "__struct_config__", None), "array_like", False))

        def enc(value: Any) -> Any:
            if not isinstance(value, tp):
                raise _Invalid(f"expected {name}, got {_tname(value)}")
            try:
                return msgspec.to_builtins(value)
            except (msgspec.MsgspecError, TypeError, ValueError) as exc:
                raise _Invalid(f"cannot convert {name}: {exc}") from exc

        def dec(value: Any) -> Any:
            try:
                return msgspec.convert(value, tp)
            except (msgspec.MsgspecError, TypeError, ValueError) as exc:
                raise _Invalid(f"invalid {name}: {exc}") from exc

        kinds = frozenset({list if array_like else dict})
        return _Conv(name, _NO_FAST, enc, _NO_FAST, dec, kinds)


def _check_constructor(cls: type, init_fields: set[str]) -> None:
    """Refuse dataclasses whose ``__init__`` cannot be called with the fields as keywords."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # pragma: no cover - C-level or odd constructors
        return
    accepts_any = False
    for param in signature.parameters.values():
        if param.kind is param.VAR_KEYWORD:
            accepts_any = True
        elif param.kind is param.VAR_POSITIONAL:
            continue
        elif param.name not in init_fields and param.default is param.empty:
            raise ValueError(
                f"{cls.__name__}.__init__ requires {param.name!r}, which is not a field "
                "(an InitVar or a custom __init__), so it cannot be rebuilt from stored data"
            )
    if not accepts_any:
        missing = init_fields - set(signature.parameters)
        if missing:
            raise ValueError(
                f"{cls.__name__}.__init__ does not accept the fields {sorted(missing)}"
            )


# --------------------------------------------------------------------------------------------
# Codecs.


class _JsonCodec(Generic[T]):
    """A JSON codec driven by a compiled plan: ``to_json``/``from_json`` over JSON-ready values."""

    __slots__ = ("_from_json", "_instance_of", "_name", "_to_json", "object_type")

    def __init__(
        self,
        object_type: Any,
        instance_of: type,
        to_json: Callable[[Any], Any],
        from_json: Callable[[Any], Any],
    ) -> None:
        self.object_type = object_type
        self._name = _type_repr(object_type)
        self._instance_of = instance_of
        self._to_json = to_json
        self._from_json = from_json

    def __repr__(self) -> str:
        return f"<JSON codec for {self._name}>"

    def encode(self, obj: T) -> bytes:
        """Encode ``obj`` to compact UTF-8 JSON.

        Raises:
            InvalidObject: ``obj`` is not an instance of the codec's type.
            CodecError: a value in ``obj`` does not fit its annotation or is not serialisable.
        """
        if not isinstance(obj, self._instance_of):
            raise InvalidObject(f"expected {self._name}, got {_tname(obj)}")
        try:
            return _dumps(self._to_json(obj)).encode()
        except _Invalid as exc:
            raise CodecError(f"cannot encode {self._name}: {exc.describe()}") from exc
        except (TypeError, ValueError, AttributeError, RecursionError) as exc:
            raise CodecError(f"cannot encode {self._name}: {exc}") from exc

    def decode(self, data: bytes) -> T:
        """Decode JSON bytes written by :meth:`encode`.

        Raises:
            CodecError: ``data`` is not UTF-8 JSON, or does not fit the codec's type.
        """
        try:
            raw = _loads(str(data, "utf-8"))
        except (ValueError, TypeError, RecursionError) as exc:
            raise CodecError(f"cannot decode {self._name}: invalid JSON: {exc}") from exc
        try:
            return typing.cast(T, self._from_json(raw))
        except _Invalid as exc:
            raise CodecError(f"cannot decode {self._name}: {exc.describe()}") from exc
        except RecursionError as exc:
            raise CodecError(f"cannot decode {self._name}: {exc}") from exc


def _plain_dict(raw: Any) -> Any:
    if type(raw) is not dict:
        raise _Invalid(f"expected a JSON object, got {_tname(raw)}")
    return raw


class _BytesCodec:
    """Passes bytes through unchanged."""

    __slots__ = ()
    object_type = bytes

    def __repr__(self) -> str:
        return "<bytes codec>"

    def encode(self, obj: bytes) -> bytes:
        """Return ``obj`` itself.

        Raises:
            InvalidObject: ``obj`` is not ``bytes``.
        """
        if type(obj) is bytes:
            return obj
        if isinstance(obj, bytes):
            return bytes(obj)
        raise InvalidObject(f"expected bytes, got {_tname(obj)}")

    def decode(self, data: bytes) -> bytes:
        """Return ``data`` as ``bytes``.

        Raises:
            CodecError: ``data`` is not a bytes-like object.
        """
        if type(data) is bytes:
            return data
        try:
            return bytes(memoryview(data))
        except TypeError as exc:
            raise CodecError(f"cannot decode bytes: {exc}") from exc


class _PydanticCodec(Generic[T]):
    """Delegates to a pydantic v2 model's own JSON methods."""

    __slots__ = ("_name", "object_type")

    def __init__(self, object_type: Any) -> None:
        self.object_type = object_type
        self._name = object_type.__name__

    def __repr__(self) -> str:
        return f"<pydantic codec for {self._name}>"

    def encode(self, obj: T) -> bytes:
        """Encode with ``model_dump_json``.

        Raises:
            InvalidObject: ``obj`` is not an instance of the model.
            CodecError: pydantic could not serialise ``obj``.
        """
        if not isinstance(obj, self.object_type):
            raise InvalidObject(f"expected {self._name}, got {_tname(obj)}")
        try:
            text: str = obj.model_dump_json()
        except (ValueError, TypeError) as exc:
            raise CodecError(f"cannot encode {self._name}: {exc}") from exc
        return text.encode()

    def decode(self, data: bytes) -> T:
        """Decode with ``model_validate_json``.

        Raises:
            CodecError: ``data`` is not valid JSON for the model.
        """
        try:
            return typing.cast(T, self.object_type.model_validate_json(data))
        except (ValueError, TypeError) as exc:
            raise CodecError(f"cannot decode {self._name}: {exc}") from exc


class _MsgspecCodec(Generic[T]):
    """Delegates to ``msgspec.json`` with an encoder and a typed decoder built once."""

    __slots__ = ("_decoder", "_encoder", "_errors", "_name", "object_type")

    def __init__(self, object_type: Any, msgspec: Any) -> None:
        self.object_type = object_type
        self._name = object_type.__name__
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(object_type)
        self._errors = (msgspec.MsgspecError, TypeError, ValueError, OverflowError)

    def __repr__(self) -> str:
        return f"<msgspec codec for {self._name}>"

    def encode(self, obj: T) -> bytes:
        """Encode with ``msgspec.json.Encoder``.

        Raises:
            InvalidObject: ``obj`` is not an instance of the Struct.
            CodecError: msgspec could not serialise ``obj``.
        """
        if not isinstance(obj, self.object_type):
            raise InvalidObject(f"expected {self._name}, got {_tname(obj)}")
        try:
            data: bytes = self._encoder.encode(obj)
        except self._errors as exc:
            raise CodecError(f"cannot encode {self._name}: {exc}") from exc
        return data

    def decode(self, data: bytes) -> T:
        """Decode with a ``msgspec.json.Decoder`` typed for the Struct.

        Raises:
            CodecError: ``data`` is not valid JSON for the Struct.
        """
        try:
            return typing.cast(T, self._decoder.decode(data))
        except self._errors as exc:
            raise CodecError(f"cannot decode {self._name}: {exc}") from exc


_CACHE: dict[Any, Any] = {}
_LOCK = threading.Lock()


def codec_for(object_type: type[T]) -> Codec[T]:
    """Return the JSON codec for a workflow's object type, built once and cached per type.

    Supported kinds: dataclasses (compiled from their annotations, see the module docstring),
    pydantic v2 models, msgspec Structs, ``TypedDict`` classes, ``dict`` and ``bytes`` (passed
    through unchanged). Calling it again with the same type returns the same codec object.

    Args:
        object_type: The type of the objects that the workflow carries from step to step.

    Returns:
        A codec whose ``encode`` raises :class:`~statestream.errors.InvalidObject` for an object
        of another type and :class:`~statestream.errors.CodecError` for one that cannot be
        written, and whose ``decode`` raises ``CodecError`` for data that is not valid JSON of the
        type.

    Raises:
        ConfigurationError: The type is none of the supported kinds, or one of its fields has a
            type that cannot be encoded.
    """
    try:
        return typing.cast("Codec[T]", _CACHE[object_type])
    except KeyError:
        pass
    except TypeError as exc:  # unhashable: not a type at all
        raise ConfigurationError(f"cannot build a codec for {object_type!r}: {_SUPPORTED}") from exc
    with _LOCK:
        codec = _CACHE.get(object_type)
        if codec is None:
            codec = _CACHE[object_type] = _build(object_type)
    return typing.cast("Codec[T]", codec)


def _build(tp: Any) -> Any:
    name = _type_repr(tp)
    if tp is bytes:
        return _BytesCodec()
    if tp is dict:
        return _JsonCodec(tp, dict, _identity, _plain_dict)
    try:
        if _is_typeddict(tp):
            td_plan = _Compiler().typeddict_plan(tp)
            return _JsonCodec(tp, dict, td_plan.to_json, td_plan.from_json)
        msgspec = _msgspec_struct(tp)
        if msgspec is not None:
            return _MsgspecCodec(tp, msgspec)
        if _is_pydantic(tp):
            return _PydanticCodec(tp)
        origin = typing.get_origin(tp) or tp
        if isinstance(origin, type) and dataclasses.is_dataclass(origin):
            plan = _Compiler().dataclass_plan(tp, {})
            return _JsonCodec(tp, origin, plan.to_json, plan.from_json)
    except ValueError as exc:
        raise ConfigurationError(f"cannot build a codec for {name}: {exc}") from exc
    raise ConfigurationError(f"cannot build a codec for {name}: {_SUPPORTED}")


def check_instance(object_type: type[Any], obj: object) -> None:
    """Check that ``obj`` can be given to a workflow whose objects are of ``object_type``.

    ``TypedDict`` classes and ``dict`` accept any ``dict``; generic aliases such as ``Box[int]``
    check against their origin class.

    Args:
        object_type: The workflow's object type.
        obj: The object to check.

    Raises:
        InvalidObject: ``obj`` is not an instance of ``object_type``.
        ConfigurationError: ``object_type`` is not a class.
    """
    if _is_typeddict(object_type):
        expected: Any = dict
    else:
        expected = typing.get_origin(object_type) or object_type
        if not isinstance(expected, type):
            raise ConfigurationError(f"{object_type!r} is not a class")
    if not isinstance(obj, expected):
        raise InvalidObject(f"expected {_type_repr(object_type)}, got {_tname(obj)}")
