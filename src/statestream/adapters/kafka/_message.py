"""Records of any producer, as a connector reads them: :class:`KafkaMessage` in a
:class:`KafkaEvent`.

A :class:`KafkaEvent` is an :class:`~statestream.Event` like any other for the engine (its ID is
``offset << 12 | partition``, its key the record's key as text, its headers the record's headers
as text, its data the value) and carries the record itself, byte for byte, in ``message``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..._core.records import Event
from . import _wire

__all__ = ["KafkaEvent", "KafkaMessage", "external"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class KafkaMessage:
    """One record of a Kafka topic, as its producer wrote it.

    Attributes:
        topic, partition, offset: where it is (``(topic, partition, offset)`` names it).
        key: the record's key (None for a null key).
        value: its value (None for a null value, a tombstone).
        headers: its headers in order, duplicates kept (a null header value is ``b""``).
        timestamp: the record's timestamp (UTC), None when the broker gives none.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: datetime | None = None

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


@dataclass(frozen=True, slots=True)
class KafkaEvent(Event):
    """An :class:`~statestream.Event` read from a Kafka topic by a ``KafkaSource``, with the
    record itself in ``message``."""

    message: KafkaMessage | None = None


def _text(data: bytes | None) -> str:
    return "" if data is None else data.decode("utf-8", "surrogateescape")


def external(msg: Any) -> KafkaEvent:
    """The KafkaEvent of a confluent-kafka message (on the fetching thread)."""
    topic: str = msg.topic()
    partition: int = msg.partition()
    offset: int = msg.offset()
    key: bytes | None = msg.key()
    value: bytes | None = msg.value()
    headers = tuple((name, data or b"") for name, data in msg.headers() or ())
    kind, millis = msg.timestamp()
    timestamp = None if kind == 0 or millis < 0 else _EPOCH + timedelta(milliseconds=millis)
    message = KafkaMessage(topic, partition, offset, key, value, headers, timestamp)
    return KafkaEvent(
        _wire.event_id(partition, offset),
        topic,
        _text(key),
        0,
        {name: data.decode("utf-8", "replace") for name, data in headers},
        timestamp or datetime.now(UTC),
        value or b"",
        message,
    )
