"""Values to and from MySQL rows: text as UTF-8 bytes (with the length limits of the indexed
columns), times as microseconds, headers as JSON."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ..._core.records import Event, ParkedEvent, Record, TimeoutRecord
from ..._core.runstate import RunState
from ...errors import InvalidInput

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "LIMITS",
    "encode",
    "event_from_row",
    "from_us",
    "headers_json",
    "key_hash",
    "parked_from_row",
    "printable",
    "record_from_row",
    "text",
    "timeout_from_row",
    "to_us",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Timer states: 0 pending, 1 completed, 2 cancelled.
COMPLETED, CANCELLED = 1, 2

#: The longest value (UTF-8 bytes) of each indexed text: the columns' VARBINARY lengths.
LIMITS: dict[str, int] = {
    "workflow name": 255,
    "foreign ID": 512,
    "run ID": 255,
    "topic": 255,
    "consumer name": 255,
    "role": 255,
    "outbox event ID": 255,
    "parked event ID": 600,
}


def encode(name: str, value: str) -> bytes:
    """``value`` as UTF-8, refused with InvalidInput when it has a lone surrogate or, for an
    indexed text (``name`` in :data:`LIMITS`), when it is longer than its column."""
    if not isinstance(value, str):
        raise InvalidInput(f"the {name} must be a str, got {type(value).__name__}")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(
            f"the {name} {_shown(value)} contains a lone surrogate (at index {exc.start}), "
            "which is not valid Unicode: MySQL keeps text as UTF-8; pass valid text"
        ) from exc
    limit = LIMITS.get(name)
    if limit is not None and len(data) > limit:
        raise InvalidInput(
            f"the {name} {_shown(value)} is {len(data)} bytes long in UTF-8; the MySQL adapters "
            f"index it in a column of at most {limit} bytes: use a shorter one"
        )
    return data


def fits(name: str, value: str) -> bytes | None:
    """``value`` as UTF-8 when it could be stored as the ``name`` (a lookup of one that could
    not matches nothing); None otherwise."""
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return data if len(data) <= LIMITS.get(name, len(data)) else None


def text(value: Any) -> str:
    return bytes(value).decode("utf-8")


def _shown(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def to_us(when: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact, sortable)."""
    if not isinstance(when, datetime) or when.tzinfo is None:
        raise InvalidInput(f"{when!r} is not a timezone-aware datetime")
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def key_hash(key: str) -> int:
    """crc32 of the key's UTF-8 bytes, as :func:`statestream._core.records.shard_of`."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass"))


def headers_json(headers: Mapping[str, str]) -> bytes:
    # ensure_ascii (the default): lone surrogates become \u escapes, storable as they are.
    return json.dumps(dict(headers), separators=(",", ":")).encode()


def printable(value: str) -> bytes:
    """Text for people (an error message): lone surrogates escaped, not refused."""
    return value.encode("utf-8", "backslashreplace")


def record_from_row(row: Sequence[Any]) -> Record:
    """A record from ``RECORD_COLUMNS``."""
    return Record(
        text(row[0]),
        text(row[1]),
        text(row[2]),
        RunState(row[3]),
        int(row[4]),
        bytes(row[5]),
        from_us(row[6]),
        from_us(row[7]),
        int(row[8]),
        text(row[9]),
        text(row[10]),
        int(row[11]),
    )


RECORD_COLUMNS = (
    "workflow_name, foreign_id, run_id, run_state, status, object, created_at, updated_at, "
    "version, run_state_reason, status_description, auto_resumes"
)
TIMEOUT_COLUMNS = (
    "id, workflow_name, foreign_id, run_id, status, run_version, expire_at, created_at, state, "
    "claimed_until"
)
PARKED_COLUMNS = (
    "id, workflow_name, consumer, event_id, topic, `key`, type, headers, data, created_at, "
    "error, attempts, parked_at, retry_requested"
)
EVENT_COLUMNS = "id, `key`, type, headers, data, created_at"


def event_from_row(topic: str, row: Sequence[Any]) -> Event:
    """An event from ``EVENT_COLUMNS``."""
    return Event(
        int(row[0]),
        topic,
        text(row[1]),
        int(row[2]),
        json.loads(row[3]),
        from_us(row[5]),
        bytes(row[4]),
    )


def timeout_from_row(row: Sequence[Any]) -> TimeoutRecord:
    return TimeoutRecord(
        int(row[0]),
        text(row[1]),
        text(row[2]),
        text(row[3]),
        int(row[4]),
        int(row[5]),
        from_us(row[6]),
        from_us(row[7]),
        row[8] == COMPLETED,
        None if row[9] is None else from_us(row[9]),
    )


def parked_from_row(row: Sequence[Any]) -> ParkedEvent:
    event = Event(
        int(row[3]),
        text(row[4]),
        text(row[5]),
        int(row[6]),
        json.loads(row[7]),
        from_us(row[9]),
        bytes(row[8]),
    )
    return ParkedEvent(
        text(row[0]),
        text(row[1]),
        text(row[2]),
        event,
        text(row[10]),
        int(row[11]),
        from_us(row[12]),
        bool(row[13]),
    )
