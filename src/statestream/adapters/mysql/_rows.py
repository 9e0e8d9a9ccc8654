"""Values to and from MySQL rows: text as UTF-8 bytes (with the length limits of the indexed
columns); times, key hashes and timer states as in every dialect (:mod:`..sql._rows`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..._core.records import Event, ParkedEvent, Record, TimeoutRecord
from ..._core.runstate import RunState
from ...errors import InvalidInput
from ..sql._rows import (
    CANCELLED,
    COMPLETED,
    from_us,
    headers_from_json,
    key_hash,
    to_us,
)
from ..sql._rows import headers_json as _headers_text

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


#: The longest value (UTF-8 bytes) of each indexed text: the columns' VARBINARY lengths.
LIMITS: dict[str, int] = {
    "workflow name": 255,
    "foreign ID": 512,
    "run ID": 255,
    "topic": 255,
    "consumer name": 255,
    "role": 255,
    "group": 255,
    "member": 255,
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


def headers_json(headers: Mapping[str, str]) -> bytes:
    # ASCII JSON: lone surrogates become \u escapes, storable as they are.
    return _headers_text(headers).encode()


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


# PARKED_COLUMNS: the shared list, with MySQL's reserved word `key` quoted.
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
        headers_from_json(row[3]),
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
        headers_from_json(row[7]),
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
