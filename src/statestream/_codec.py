"""JSON codecs for workflow objects, on msgspec, built once per type.

:func:`codec_for` picks a codec from the kind of the type:

* dataclasses, msgspec Structs, ``TypedDict`` classes and plain ``dict``: ``msgspec.json`` with a
  decoder typed for the class, so that decoding validates. Field types are whatever msgspec
  supports (containers, ``Optional``/unions, ``Literal``, enums, ``datetime``/``date``/``time``/
  ``timedelta``, ``Decimal``, ``UUID``, ``bytes``, nested dataclasses and Structs...), plus pydantic
  models, which are handed to pydantic. Missing fields take their defaults; unknown keys are
  ignored, except that a ``TypedDict`` keeps the keys it does not declare, as plain JSON values.
* pydantic v2 models: their own ``model_dump_json``/``model_validate_json``. pydantic is imported
  by the user's model, never by statestream.
* ``bytes``: passed through unchanged.

The JSON is compact UTF-8, with msgspec's formats: enums as their values, ``datetime``/``date``/
``time`` in RFC 3339, ``timedelta`` in ISO 8601 (``"P1DT5.5S"``), ``Decimal`` and ``UUID`` as
strings, ``bytes`` in base64, tuples and sets as arrays (in iteration order: dicts keep theirs).
Values in untyped places (``Any``, a plain ``dict``) are written in that form too, and read back
as the plain JSON values (a ``datetime`` there comes back as its string).

An object is refused when it is written if it would not decode again: :meth:`encode` decodes the
bytes it made with the typed decoder before it returns them (a ``__post_init__`` or a pydantic
validator therefore runs then as well). A field of the wrong type, a bare ``set`` of tuples (read
back as lists, which a set cannot hold), a non-finite float (JSON has none), text with a lone
surrogate (not encodable as UTF-8): :class:`~statestream.errors.InvalidObject`, the caller's
mistake, and nothing is stored.

Data written by the first codec (before msgspec) stays readable: when the typed decoder refuses
stored bytes, they are read once more in that codec's forms, which were ``timedelta`` as seconds,
the bare tokens ``NaN`` and ``Infinity``, a ``datetime`` in full in a ``date`` field (read as its
date) and UTC offsets with seconds.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import threading
import types
import typing
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec
import msgspec.inspect as mi

from ._core.protocols import Codec
from .errors import CodecError, ConfigurationError, InvalidInput, InvalidObject

__all__ = ["check_instance", "check_status_values", "check_text", "codec_for", "scrub_text"]

T = TypeVar("T")

_SUPPORTED = (
    "supported are dataclasses, pydantic v2 models, msgspec Structs, TypedDict classes, "
    "dict and bytes"
)
_SUPPORTED_FIELDS = (
    "field types are those msgspec supports (str, int, float, bool, None, Any, containers, "
    "unions, Literal, Enum, datetime, date, time, timedelta, Decimal, UUID, bytes, dataclasses, "
    "TypedDicts, msgspec Structs...) and pydantic models"
)
# What msgspec and pydantic raise for values they cannot write (UnicodeEncodeError included).
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError, msgspec.MsgspecError)
_DECODE_ERRORS = (TypeError, ValueError, RecursionError, msgspec.MsgspecError)


def _tname(obj: object) -> str:
    return type(obj).__name__


def _type_repr(tp: Any) -> str:
    """``Box[Item]``, ``int | None``: a type as it is written, without module names."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_type_repr(a) for a in args)
    if origin is not None and args:
        return f"{_type_repr(origin)}[{', '.join(_type_repr(a) for a in args)}]"
    if isinstance(tp, type):
        return tp.__name__
    return "None" if tp is None else repr(tp).replace("typing.", "")


def _is_typeddict(tp: object) -> bool:
    return typing.is_typeddict(tp) or (  # typing_extensions.TypedDict too
        isinstance(tp, type)
        and issubclass(tp, dict)
        and hasattr(tp, "__required_keys__")
        and hasattr(tp, "__total__")
    )


def _is_pydantic(tp: object) -> bool:
    return isinstance(tp, type) and all(
        hasattr(tp, attr)
        for attr in ("model_dump_json", "model_validate_json", "model_dump", "model_validate")
    )


# --------------------------------------------------------------------------------------------
# pydantic models inside msgspec types: msgspec sees them as custom types and calls these hooks.


def _enc_hook(obj: Any) -> Any:
    if _is_pydantic(type(obj)):
        # No serializer warnings: a value of the wrong type is refused by the decode check.
        return obj.model_dump(mode="json", warnings=False)
    raise TypeError(f"Encoding objects of type {_tname(obj)} is unsupported")


def _dec_hook(tp: Any, obj: Any) -> Any:
    if _is_pydantic(tp):
        return tp.model_validate(obj)
    raise TypeError(f"{_type_repr(tp)} is not supported")  # never: refused by _walk first


def _walk(info: mi.Type, where: str) -> typing.Iterator[tuple[str, mi.Type]]:
    """Every node of a msgspec type tree once (recursive types are cycles), with its path."""
    seen: set[int] = set()
    stack = [(where, info)]
    while stack:
        where, node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield where, node
        if isinstance(node, mi.Metadata):
            stack.append((where, node.type))
        elif isinstance(node, mi.CollectionType):
            stack.append((f"{where}[]", node.item_type))
        elif isinstance(node, mi.TupleType):
            stack.extend((f"{where}[{i}]", t) for i, t in enumerate(node.item_types))
        elif isinstance(node, mi.UnionType):
            stack.extend((where, t) for t in node.types)
        elif isinstance(node, mi.DictType):
            stack.extend(((f"{where} key", node.key_type), (f"{where}[]", node.value_type)))
        elif isinstance(
            node, mi.DataclassType | mi.StructType | mi.TypedDictType | mi.NamedTupleType
        ):
            stack.extend((f"{node.cls.__name__}.{f.name}", f.type) for f in node.fields)


# --------------------------------------------------------------------------------------------
# Reading what codec v1 wrote where msgspec reads otherwise (see the module docstring).


def _upgrade(node: mi.Type, value: Any) -> Any:
    """Turn v1's forms in ``value`` (parsed JSON) into ones ``msgspec.convert`` reads, by type."""
    if isinstance(node, mi.Metadata):
        return _upgrade(node.type, value)
    kind = type(value)
    if isinstance(node, mi.TimeDeltaType):
        if kind is int or kind is float:
            return _dt.timedelta(seconds=value)
    elif isinstance(node, mi.DateType | mi.DateTimeType | mi.TimeType):
        if kind is str:  # fromisoformat reads offsets with seconds, unlike RFC 3339
            try:
                if isinstance(node, mi.TimeType):
                    return _dt.time.fromisoformat(value)
                parsed = _dt.datetime.fromisoformat(value)
            except ValueError:
                return value
            return parsed.date() if isinstance(node, mi.DateType) else parsed
    elif kind is dict:
        if isinstance(node, mi.DictType):
            for key, item in value.items():
                value[key] = _upgrade(node.value_type, item)
        elif isinstance(node, mi.DataclassType | mi.StructType | mi.TypedDictType):
            for f in node.fields:
                if f.encode_name in value:
                    value[f.encode_name] = _upgrade(f.type, value[f.encode_name])
    elif kind is list:
        if isinstance(node, mi.CollectionType):
            for i, item in enumerate(value):
                value[i] = _upgrade(node.item_type, item)
        elif isinstance(node, mi.TupleType):
            for i, (item_type, item) in enumerate(zip(node.item_types, value, strict=False)):
                value[i] = _upgrade(item_type, item)
        elif isinstance(node, mi.StructType | mi.NamedTupleType):  # array_like
            for i, (f, item) in enumerate(zip(node.fields, value, strict=False)):
                value[i] = _upgrade(f.type, item)
    if isinstance(node, mi.UnionType):
        for member in node.types:
            # A number is the union's int or float member if it has one, not a timedelta.
            if isinstance(member, mi.TimeDeltaType) and any(
                isinstance(m, mi.IntType if kind is int else mi.FloatType) for m in node.types
            ):
                continue
            value = _upgrade(member, value)
    return value


# --------------------------------------------------------------------------------------------
# Codecs.


class _JsonCodec(Generic[T]):
    """``msgspec.json`` with an encoder and a typed decoder, built once per type."""

    __slots__ = ("_decode", "_info", "_instance_of", "_name", "_type", "object_type")

    def __init__(self, object_type: Any, instance_of: type, *, keep_extra_keys: bool) -> None:
        self.object_type = object_type
        self._name = _type_repr(object_type)
        self._instance_of = instance_of
        self._type = object_type
        try:
            self._info = mi.type_info(object_type)
            decoder = msgspec.json.Decoder(object_type, dec_hook=_dec_hook)
        except Exception as exc:  # NameError for unresolved annotations, TypeError...
            raise ConfigurationError(f"cannot build a codec for {self._name}: {exc}") from exc
        for where, node in _walk(self._info, self._name):
            if isinstance(node, mi.CustomType) and not _is_pydantic(node.cls):
                raise ConfigurationError(
                    f"cannot build a codec for {self._name}: {where}: unsupported type "
                    f"{_type_repr(node.cls)}; {_SUPPORTED_FIELDS}"
                )
        if keep_extra_keys:
            self._decode: Callable[[Any], Any] = self._decode_keeping_extra_keys
        else:
            self._decode = decoder.decode

    def __repr__(self) -> str:
        return f"<JSON codec for {self._name}>"

    def encode(self, obj: T) -> bytes:
        """Encode ``obj`` to compact UTF-8 JSON, and check that it decodes again.

        Raises:
            InvalidObject: ``obj`` is not an instance of the codec's type, holds a value that
                cannot be written, or would not decode again (a field of the wrong type...).
        """
        if not isinstance(obj, self._instance_of):
            raise InvalidObject(f"expected {self._name}, got {_tname(obj)}")
        try:
            data = _encode(obj)
        except _ENCODE_ERRORS as exc:
            raise InvalidObject(f"cannot encode {self._name}: {exc}") from exc
        try:
            self._decode(data)
        except Exception as exc:  # ValidationError, or whatever a __post_init__ raised
            raise InvalidObject(
                f"cannot encode {self._name}: it would not decode again: {exc}"
            ) from exc
        return data

    def decode(self, data: bytes) -> T:
        """Decode JSON bytes written by :meth:`encode` (or by codec v1).

        Raises:
            CodecError: ``data`` is not UTF-8 JSON, or does not fit the codec's type.
        """
        try:
            return typing.cast(T, self._decode(data))
        except _DECODE_ERRORS as exc:
            try:
                return typing.cast(T, self._decode_v1(data))
            except Exception:
                pass  # not v1's data either: report what the typed decoder said
            detail = exc if isinstance(exc, msgspec.ValidationError) else f"invalid JSON: {exc}"
            raise CodecError(f"cannot decode {self._name}: {detail}") from exc

    def _decode_keeping_extra_keys(self, data: Any) -> Any:
        raw = msgspec.json.decode(data)
        return self._convert(raw)

    def _convert(self, raw: Any) -> Any:
        converted = msgspec.convert(raw, self._type, dec_hook=_dec_hook)
        if isinstance(raw, dict) and _is_typeddict(self._type):
            raw.update(converted)  # declared keys converted, the others kept as they are
            return raw
        return converted

    def _decode_v1(self, data: Any) -> Any:
        raw = json.loads(data)  # unlike msgspec, reads NaN and Infinity
        return self._convert(_upgrade(self._info, raw))


# Not order="deterministic": it would sort the keys of every dict, and dicts keep their order.
_encode = msgspec.json.Encoder(enc_hook=_enc_hook).encode


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
        """Encode with ``model_dump_json``, and check with ``model_validate_json``.

        Raises:
            InvalidObject: ``obj`` is not an instance of the model, cannot be serialised, or
                would not validate again.
        """
        if not isinstance(obj, self.object_type):
            raise InvalidObject(f"expected {self._name}, got {_tname(obj)}")
        try:
            data: bytes = obj.model_dump_json(warnings=False).encode()
        except _ENCODE_ERRORS as exc:
            raise InvalidObject(f"cannot encode {self._name}: {exc}") from exc
        try:
            self.object_type.model_validate_json(data)
        except Exception as exc:
            raise InvalidObject(
                f"cannot encode {self._name}: it would not decode again: {exc}"
            ) from exc
        return data

    def decode(self, data: bytes) -> T:
        """Decode with ``model_validate_json``.

        Raises:
            CodecError: ``data`` is not valid JSON for the model.
        """
        try:
            return typing.cast(T, self.object_type.model_validate_json(data))
        except _DECODE_ERRORS as exc:
            raise CodecError(f"cannot decode {self._name}: {exc}") from exc


_CACHE: dict[Any, Any] = {}
_LOCK = threading.Lock()


def codec_for(object_type: type[T]) -> Codec[T]:
    """Return the JSON codec for a workflow's object type, built once and cached per type.

    Supported kinds: dataclasses, msgspec Structs, ``TypedDict`` classes and ``dict`` (through
    ``msgspec.json``), pydantic v2 models (through pydantic) and ``bytes`` (passed through
    unchanged); see the module docstring. Calling it again with the same type returns the same
    codec object.

    Args:
        object_type: The type of the objects that the workflow carries from step to step.

    Returns:
        A codec whose ``encode`` raises :class:`~statestream.errors.InvalidObject` for an object
        that is not of the type or would not decode again, and whose ``decode`` raises
        :class:`~statestream.errors.CodecError` for data that is not valid JSON of the type.

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
    if tp is bytes:
        return _BytesCodec()
    if tp is dict or _is_typeddict(tp):
        return _JsonCodec(tp, dict, keep_extra_keys=tp is not dict)
    if _is_pydantic(tp):
        return _PydanticCodec(tp)
    origin = typing.get_origin(tp) or tp
    if isinstance(origin, type) and (
        dataclasses.is_dataclass(origin) or issubclass(origin, msgspec.Struct)
    ):
        return _JsonCodec(tp, origin, keep_extra_keys=False)
    raise ConfigurationError(f"cannot build a codec for {_type_repr(tp)}: {_SUPPORTED}")


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


# --------------------------------------------------------------------------------------------
# What every store can hold, checked at the public calls rather than failing in a driver.

_INT64 = range(-(2**63), 2**63)


def check_text(value: object, what: str) -> str:
    """Return ``value`` if it is a ``str`` that can be written as UTF-8.

    A lone surrogate (``"\\ud800"``) is a valid ``str`` with no UTF-8 encoding: the memory
    adapters would keep it and SQLite would fail on it, so it is refused before anything is
    written.

    Raises:
        InvalidInput: ``value`` is not a ``str`` or holds a lone surrogate.
    """
    if type(value) is str and value.isascii():
        return value
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string, got {value!r}")
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"{what} holds a lone surrogate at position {exc.start}, which UTF-8 cannot encode: "
            f"{value!r}"
        ) from None
    return value


def scrub_text(value: str) -> str:
    """``value`` with any lone surrogate written as its escape (``"\\ud800"``), so that a text
    from anywhere (an error message quoted in a pause reason) can be stored."""
    if value.isascii():
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def check_status_values(status_type: type[Any]) -> None:
    """Refuse a status enum with a value beyond a signed 64-bit integer (a SQL ``BIGINT``).

    Raises:
        ConfigurationError: a member's value is below ``-2**63`` or above ``2**63 - 1``.
    """
    for member in status_type:
        if int(member) not in _INT64:
            raise ConfigurationError(
                f"status {status_type.__name__}.{member.name} = {int(member)} does not fit the "
                "64-bit integer that stores keep statuses in (-2**63 .. 2**63-1)"
            )
