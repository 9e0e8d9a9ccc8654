"""What goes on the wire: topic names, the record layout of an event, and event IDs.

An event is one Kafka record: its key is the event's key (the run ID) in UTF-8, its value a small
msgpack array tagged ``"statestream/1"`` holding the type, the creation time (microseconds since
the epoch), the headers and the optional body. A record on the topic whose value is not such an
array (another producer's message) is not ours: the receiver skips and counts it.

The headers that say where a run came from travel as Kafka record headers instead of inside the
value (:data:`RECORD_HEADERS`: the run's ``foreign_id`` and the W3C ``traceparent`` and
``tracestate`` when the event has them), so that any Kafka tool or instrumented consumer sees
them; decoding puts them back among the event's headers. A value that still holds them (written
before) keeps its own.

Event IDs combine the record's partition and offset: ``offset << 12 | partition``. IDs are unique
per topic, never negative, and increase with the offset within a partition, so within a key (all
of whose events are in one partition) they follow the order of publication. Across partitions
they are only roughly time-ordered; a receiver's acknowledgements follow its own delivery order.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import msgspec

from ..._core.records import Event, Message

__all__ = [
    "MAX_PARTITIONS",
    "RECORD_HEADERS",
    "decode",
    "encode",
    "event_id",
    "kafka_name",
    "position",
]

#: Bits of an event ID that hold the partition; topics may have at most this many partitions.
PARTITION_BITS = 12
MAX_PARTITIONS = 1 << PARTITION_BITS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LEGAL = re.compile(r"[^a-zA-Z0-9._-]")
_MAX_NAME = 249


class _Wire(msgspec.Struct, array_like=True, tag="statestream/1", tag_field="wire", frozen=True):
    type: int
    created_at: int
    headers: dict[str, str]
    data: bytes = b""


#: Event headers sent as Kafka record headers (UTF-8) rather than in the record's value.
RECORD_HEADERS = ("foreign_id", "traceparent", "tracestate")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Wire)


def kafka_name(prefix: str, name: str) -> str:
    """A legal Kafka topic or group name for ``name`` (characters outside ``[a-zA-Z0-9._-]``
    replaced, and a hash of the original appended so that two names never meet)."""
    full = prefix + name
    clean = _LEGAL.sub("_", full)
    if clean != full or len(clean) > _MAX_NAME:
        digest = hashlib.sha1(full.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        clean = f"{clean[: _MAX_NAME - 13]}.{digest}"
    return clean


#: Kafka record headers as confluent-kafka takes them.
RecordHeaders = list[tuple[str, str | bytes | None]]


def encode(message: Message) -> tuple[bytes, RecordHeaders]:
    """The record's value and its Kafka headers."""
    micros = (message.created_at - _EPOCH) // timedelta(microseconds=1)
    headers = dict(message.headers)
    record: RecordHeaders = []
    for name in RECORD_HEADERS:
        text = headers.pop(name, None)
        if text is not None:
            record.append((name, text.encode("utf-8", "surrogatepass")))
    value = _encoder.encode(_Wire(message.type, micros, headers, bytes(message.data)))
    return value, record


def event_id(partition: int, offset: int) -> int:
    return offset << PARTITION_BITS | partition


def position(event_id: int) -> tuple[int, int]:
    """``(partition, offset)`` of an event ID."""
    return event_id & (MAX_PARTITIONS - 1), event_id >> PARTITION_BITS


def decode(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    record: list[tuple[str, bytes | None]] | None = None,
) -> Event | None:
    """The event a record holds, or None when the record is not one of ours.

    ``record`` is the record's Kafka headers: those of :data:`RECORD_HEADERS` join the event's
    headers (the value's own win); others are not ours and are left out."""
    if value is None:
        return None
    try:
        wire = _decoder.decode(value)
        text = "" if key is None else key.decode("utf-8", "surrogatepass")
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    headers = wire.headers
    if record:
        extra = {}
        for name, data in record:
            if name in RECORD_HEADERS and data is not None and name not in headers:
                try:
                    extra[name] = data.decode("utf-8", "surrogatepass")
                except UnicodeDecodeError:
                    continue
        if extra:
            headers = {**headers, **extra}
    created = _EPOCH + timedelta(microseconds=wire.created_at)
    return Event(event_id(partition, offset), topic, text, wire.type, headers, created, wire.data)
