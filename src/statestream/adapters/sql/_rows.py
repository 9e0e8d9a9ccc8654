"""Row mapping shared by the SQL dialects: times, headers, keys and the values refused."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from ..._core.records import (
    Event,
    OutboxEvent,
    ParkedEvent,
    Record,
    RecordFilter,
    RunCounts,
    TimeoutRecord,
)
from ..._core.runstate import RunState
from ...errors import InvalidInput

__all__ = [
    "COUNT_RUNS",
    "PARKED_COLUMNS",
    "RECORD_COLUMNS",
    "TIMEOUT_COLUMNS",
    "check_aware",
    "check_event",
    "check_page",
    "counts_from_rows",
    "check_record",
    "check_shard",
    "check_text",
    "event_from_row",
    "filter_clauses",
    "from_us",
    "headers_from_json",
    "headers_json",
    "key_hash",
    "parked_from_row",
    "printable",
    "record_from_row",
    "timeout_from_row",
    "to_us",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: ``count_runs`` in one statement (one snapshot): one pass over the workflow's runs (its range
#: of ``records_by_workflow``), grouped by status and run state together. (No index has the
#: status: every transition changes it, and an index on it would be rewritten each time.)
#: ``{prefix}`` and ``{arg}`` (the dialect's placeholder for the workflow name) are put in by
#: the store.
COUNT_RUNS = (
    "SELECT status, run_state, COUNT(*) FROM {prefix}records WHERE workflow_name = {arg} "
    "GROUP BY status, run_state"
)


def counts_from_rows(rows: Iterable[Sequence[Any]]) -> RunCounts:
    """The :data:`COUNT_RUNS` rows (status, run state, count) as :class:`RunCounts`."""
    statuses: dict[int, int] = {}
    states: dict[RunState, int] = {}
    for status, run_state, n in rows:
        statuses[int(status)] = statuses.get(int(status), 0) + int(n)
        state = RunState(int(run_state))
        states[state] = states.get(state, 0) + int(n)
    return RunCounts(statuses, states)


RECORD_COLUMNS = (
    "workflow_name, foreign_id, run_id, run_state, status, object, created_at, updated_at, "
    "version, run_state_reason, status_description, auto_resumes"
)
TIMEOUT_COLUMNS = (
    "id, workflow_name, foreign_id, run_id, status, run_version, expire_at, created_at, state, "
    "claimed_until"
)
PARKED_COLUMNS = (
    "id, workflow_name, consumer, event_id, topic, key, type, headers, data, created_at, "
    "error, attempts, parked_at, retry_requested"
)

# Timer states: 0 pending (a literal in SQL, for the partial index), 1 completed, 2 cancelled.
COMPLETED, CANCELLED = 1, 2


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


_encode_json = msgspec.json.Encoder().encode
_decode_headers = msgspec.json.Decoder(dict[str, str]).decode


def headers_json(headers: Mapping[str, str]) -> str:
    """Headers as ASCII JSON text: NUL and lone surrogates become \\u escapes, storable
    anywhere. msgspec writes it (an event's headers are encoded on every write) when the
    result is ASCII; other text goes through ``json.dumps`` and its ``ensure_ascii``."""
    try:
        text = _encode_json(headers if type(headers) is dict else dict(headers)).decode()
    except UnicodeEncodeError:  # a lone surrogate
        text = ""
    if text and text.isascii():
        return text
    return json.dumps(dict(headers), separators=(",", ":"))


def headers_from_json(text: str | bytes) -> dict[str, str]:
    """The headers :func:`headers_json` wrote (msgspec reads them on every event; an escaped
    lone surrogate, which it refuses, goes through ``json.loads``)."""
    try:
        return _decode_headers(text)
    except msgspec.DecodeError:
        headers: dict[str, str] = json.loads(text)
        return headers


def check_text(name: str, value: object) -> None:
    """Refuse text the servers cannot store: NUL (PostgreSQL's text has none)."""
    if isinstance(value, str) and "\x00" in value:
        raise InvalidInput(
            f"{name} contains a NUL character (\\x00) at index {value.index(chr(0))}: SQL "
            "servers store text without NUL; remove it, or encode the value"
        )


def check_aware(name: str, value: object) -> None:
    """Refuse what is not a timezone-aware datetime (a timer's expiry, a ``before=``)."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInput(f"{name} must be a timezone-aware datetime, got {value!r}")


def check_page(offset: int, limit: int, max_offset: int) -> None:
    """Refuse a page of ``list`` the database cannot serve well: a negative offset or limit,
    an offset past ``max_offset`` (skipped row by row; ``after=`` pages by key instead)."""
    if offset < 0 or limit < 0:
        raise InvalidInput(f"offset and limit must be >= 0, got {offset} and {limit}")
    if offset > max_offset:
        raise InvalidInput(
            f"offset {offset} is larger than {max_offset}: the database skips offset rows one "
            "by one; page with after= (the run ID of the last run of the previous page)"
        )


def check_shard(shard: object, shards: object) -> None:
    """Refuse a receiver's shard that is not one of ``0..shards - 1``."""
    if not isinstance(shards, int) or not isinstance(shard, int) or shards < 1:
        raise InvalidInput(f"shards must be an int >= 1, got {shards!r}")
    if not 0 <= shard < shards:
        raise InvalidInput(f"shard must be in 0..{shards - 1}, got {shard!r}")


def check_record(record: Record) -> None:
    for name in ("workflow_name", "foreign_id", "run_id", "run_state_reason", "status_description"):
        value = getattr(record, name)
        if "\x00" in value:
            check_text(f"the record's {name}", value)


def check_event(event: OutboxEvent) -> None:
    if "\x00" in event.topic:
        check_text("the event's topic", event.topic)
    if "\x00" in event.message.key:
        check_text("the event's key", event.message.key)
    if "\x00" in event.id:
        check_text("the outbox event's ID", event.id)


def printable(text: str, *, nul: bool = True) -> str:
    """Text for people (an error message): NUL (unless ``nul`` is false: SQLite stores it) and
    lone surrogates escaped, not refused."""
    if nul and "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _same(value: str) -> Any:
    return value


def filter_clauses(
    workflow_name: str | None,
    filter: RecordFilter | None,
    mark: str,
    text: Callable[[str], Any] = _same,
) -> tuple[list[str], list[Any]]:
    """The conditions of a store's ``list`` on the records' columns (joined with AND by the
    caller), each value a ``mark`` placeholder ("?", "%s"), and their values in order; a set of
    values is an ``IN`` list. ``text`` turns a text value into what the driver binds."""
    where: list[str] = []
    args: list[Any] = []
    if workflow_name is not None:
        where.append(f"workflow_name = {mark}")
        args.append(text(workflow_name))
    if filter is None:
        return where, args
    for column, values in (
        ("foreign_id", [text(f) for f in filter.foreign_ids]),
        ("status", [int(s) for s in filter.statuses]),
        ("run_state", [int(s) for s in filter.run_states]),
    ):
        if values:
            where.append(f"{column} IN ({', '.join([mark] * len(values))})")
            args.extend(values)
    if filter.created_after is not None:
        where.append(f"created_at > {mark}")
        args.append(to_us(filter.created_after))
    if filter.created_before is not None:
        where.append(f"created_at < {mark}")
        args.append(to_us(filter.created_before))
    return where, args


def record_from_row(row: Sequence[Any]) -> Record:
    return Record(
        row[0],
        row[1],
        row[2],
        RunState(row[3]),
        row[4],
        bytes(row[5]),
        from_us(row[6]),
        from_us(row[7]),
        row[8],
        row[9],
        row[10],
        row[11],
    )


def event_from_row(topic: str, row: Sequence[Any]) -> Event:
    """An event from ``id, key, type, headers, data, created_at``."""
    return Event(
        row[0], topic, row[1], row[2], headers_from_json(row[3]), from_us(row[5]), bytes(row[4])
    )


def timeout_from_row(row: Sequence[Any]) -> TimeoutRecord:
    return TimeoutRecord(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        from_us(row[6]),
        from_us(row[7]),
        row[8] == COMPLETED,
        None if row[9] is None else from_us(row[9]),
    )


def parked_from_row(row: Sequence[Any]) -> ParkedEvent:
    event = Event(
        row[3], row[4], row[5], row[6], headers_from_json(row[7]), from_us(row[9]), bytes(row[8])
    )
    return ParkedEvent(
        row[0], row[1], row[2], event, row[10], row[11], from_us(row[12]), bool(row[13])
    )
