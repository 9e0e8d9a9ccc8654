"""Wire types shared by the engine and every adapter.

Adapters persist and move these values; they never interpret statuses or graphs.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ..errors import InvalidInput
from .runstate import RunState

__all__ = [
    "Event",
    "Header",
    "Message",
    "Order",
    "OutboxEvent",
    "ParkedEvent",
    "Record",
    "RecordFilter",
    "RunCounts",
    "ScanPage",
    "TimeoutRecord",
    "delete_topic",
    "run_state_change_topic",
    "shard_of",
    "status_topic",
    "topic_for",
]


class Header(enum.StrEnum):
    """Header names carried by every event the engine publishes."""

    WORKFLOW_NAME = "workflow_name"
    FOREIGN_ID = "foreign_id"
    RUN_ID = "run_id"
    TOPIC = "topic"
    RUN_STATE = "run_state"
    RECORD_VERSION = "record_version"
    STATUS = "status"


@dataclass(frozen=True, slots=True)
class Record:
    """One run as stored: the user's object as bytes plus the run's bookkeeping.

    ``version`` starts at 1 when the run is triggered and grows by one with every write; every
    write after the first is a compare-and-set on it.
    """

    workflow_name: str
    foreign_id: str
    run_id: str
    run_state: RunState
    status: int
    object: bytes
    created_at: datetime
    updated_at: datetime
    version: int = 1
    run_state_reason: str = ""
    status_description: str = ""
    #: How many times the pause-retry process has resumed this run (it stops at a limit).
    auto_resumes: int = 0


@dataclass(frozen=True, slots=True)
class Message:
    """An event to publish: ``key`` orders and shards it (the run ID), ``type`` is the status.

    ``data`` is an optional body: the engine's own events leave it empty; events of outside
    streams read by connectors carry their payload in it.
    """

    key: str
    type: int
    headers: Mapping[str, str]
    created_at: datetime
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Event:
    """An event as received.

    ``id`` is assigned by the streamer: unique within the topic, never negative (the engine
    gives its synthetic events negative IDs), and increasing in publication order among the
    events of one key. A streamer with one ordered log per topic (memory, SQL tables) makes IDs
    grow across all keys; a partitioned one (Kafka: ``offset << 12 | partition``) only within a
    partition, which holds every event of a key. The engine relies on the per-key order only.
    """

    id: int
    topic: str
    key: str
    type: int
    headers: Mapping[str, str]
    created_at: datetime
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event written in the same transaction as its record, published later by the relay."""

    id: str
    workflow_name: str
    topic: str
    message: Message

    @property
    def created_at(self) -> datetime:
        return self.message.created_at


@dataclass(frozen=True, slots=True)
class TimeoutRecord:
    """A durable timer bound to one run and one visit of a status (``run_version``)."""

    id: int
    workflow_name: str
    foreign_id: str
    run_id: str
    status: int
    run_version: int
    expire_at: datetime
    created_at: datetime
    completed: bool = False
    #: Set by ``TimeoutStore.claim``/``defer``: not due again before this time.
    claimed_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ParkedEvent:
    """An event a consumer gave up on after repeated errors, kept for an operator.

    ``id`` is ``f"{consumer}:{event.topic}:{event.id}"``: parking the same event for the same
    consumer again replaces the entry (attempts, error, time) instead of adding one.
    ``retry_requested`` is set by :meth:`RecordStore.retry_parked`; the consumer that parked the
    event polls for its entries with the flag set, handles them again and deletes them on success.
    """

    id: str
    workflow_name: str
    consumer: str
    event: Event
    error: str
    attempts: int
    parked_at: datetime
    retry_requested: bool = False


class Order(enum.Enum):
    ASC = "asc"
    DESC = "desc"


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """Filters for ``RecordStore.list``: every given field must match; values within one match any.

    ``created_after`` and ``created_before`` are strict bounds.
    """

    foreign_ids: Sequence[str] = field(default=())
    statuses: Sequence[int] = field(default=())
    run_states: Sequence[RunState] = field(default=())
    created_after: datetime | None = None
    created_before: datetime | None = None

    def matches(self, record: Record) -> bool:
        """Reference implementation of the filter, used by in-memory stores and the tests."""
        if self.foreign_ids and record.foreign_id not in self.foreign_ids:
            return False
        if self.statuses and record.status not in self.statuses:
            return False
        if self.run_states and record.run_state not in self.run_states:
            return False
        if self.created_after is not None and not record.created_at > self.created_after:
            return False
        return self.created_before is None or record.created_at < self.created_before


@dataclass(frozen=True, slots=True)
class RunCounts:
    """How many runs a workflow has at each status and in each run state
    (:meth:`RunCounter.count_runs`). Statuses and run states without runs are left out."""

    statuses: Mapping[int, int] = field(default_factory=dict)
    run_states: Mapping[RunState, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @classmethod
    def of(cls, records: Iterable[Record]) -> RunCounts:
        """Reference implementation: the counts of ``records`` (in-memory stores, tests)."""
        statuses: dict[int, int] = {}
        run_states: dict[RunState, int] = {}
        for record in records:
            statuses[record.status] = statuses.get(record.status, 0) + 1
            run_states[record.run_state] = run_states.get(record.run_state, 0) + 1
        return cls(statuses, run_states)


@dataclass(frozen=True, slots=True)
class ScanPage:
    """What :meth:`ScanLister.list_scan` found: the runs at the statuses, in the order asked,
    and where the scan stopped."""

    records: Sequence[Record]
    #: The run ID of the last run examined, to pass as ``after=`` to go on; "" when the scan
    #: reached the end of the runs (nothing is left to examine).
    resume: str = ""

    @staticmethod
    def check(limit: int, scan_limit: int) -> None:
        """InvalidInput unless both are at least 1."""
        if limit < 1 or scan_limit < 1:
            raise InvalidInput(f"limit and scan_limit must be >= 1, got {limit}, {scan_limit}")

    @classmethod
    def of(
        cls, examined: Sequence[Record], statuses: Sequence[int], limit: int, scan_limit: int
    ) -> ScanPage:
        """Reference implementation: the page out of ``examined``, the runs the scan read
        (``list`` with the filter but its statuses and ``limit=scan_limit``). Every run matches
        when ``statuses`` is empty."""
        found: list[Record] = []
        wanted = set(statuses)
        for record in examined:
            if not wanted or record.status in wanted:
                found.append(record)
                if len(found) >= limit:
                    return cls(found, record.run_id)
        return cls(found, examined[-1].run_id if len(examined) >= scan_limit else "")


def shard_of(key: str, shards: int) -> int:
    """The shard (0-based) an event key belongs to: crc32 of the UTF-8 key modulo ``shards``.

    Stable across processes, restarts and languages; adapters that filter by shard (an SQL
    column, Kafka partitions) must compute exactly this.
    """
    if shards <= 1:
        return 0
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % shards


def _clean(name: str) -> str:
    return name.replace(" ", "_")


def status_topic(workflow_name: str, status: int) -> str:
    """The topic a run's events go to while it waits at ``status``: ``"<workflow>-<status>"``."""
    return f"{_clean(workflow_name)}-{int(status)}"


def delete_topic(workflow_name: str) -> str:
    return f"{_clean(workflow_name)}-delete"


def run_state_change_topic(workflow_name: str) -> str:
    return f"{_clean(workflow_name)}-run-state-change"


def topic_for(record: Record) -> str:
    """Where the event of a write of ``record`` is published (reference §3)."""
    state = record.run_state
    if state is RunState.REQUESTED_DATA_DELETED:
        return delete_topic(record.workflow_name)
    if state in (RunState.INITIATED, RunState.RUNNING):
        return status_topic(record.workflow_name, record.status)
    return run_state_change_topic(record.workflow_name)
