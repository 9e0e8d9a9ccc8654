"""The adapter contracts. The core owns them; adapters implement them without subclassing.

Each contract has a conformance suite in :mod:`statestream.adaptertest` that every implementation
must pass: :class:`~statestream.adaptertest.RecordStoreContract`,
:class:`~statestream.adaptertest.EventStreamerContract`,
:class:`~statestream.adaptertest.TimeoutStoreContract` and
:class:`~statestream.adaptertest.RoleSchedulerContract`.

Every method is a coroutine and must be cancellable: cancelling the awaiting task must leave the
adapter usable and must not lose data that was acknowledged as written.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, TypeVar, runtime_checkable

from .records import (
    Event,
    Message,
    Order,
    OutboxEvent,
    ParkedEvent,
    Record,
    RecordFilter,
    TimeoutRecord,
)

__all__ = [
    "Clock",
    "Codec",
    "ConnectorSource",
    "EventReceiver",
    "EventStreamer",
    "Lease",
    "RecordStore",
    "RoleScheduler",
    "SnapshotStore",
    "TimeoutStore",
]

T = TypeVar("T")


@runtime_checkable
class RecordStore(Protocol):
    """Stores runs, each write together with its outbox event in one atomic transaction.

    Invariants (checked by ``RecordStoreContract``):

    * ``create`` inserts a run and its outbox event atomically, and refuses with
      :class:`~statestream.errors.WorkflowInProgress` when the latest run of the same
      ``(workflow_name, foreign_id)`` is not finished (``RunState.finished``). The check and the
      insert are one atomic step: two concurrent ``create`` calls never both succeed.
    * ``update`` is a compare-and-set: it stores ``record`` only if the stored version is exactly
      ``record.version - 1``, together with ``event``, atomically; otherwise it raises
      :class:`~statestream.errors.VersionConflict` and writes nothing. A missing run raises
      :class:`~statestream.errors.RecordNotFound`.
    * ``list_outbox`` returns pending outbox events of one workflow oldest first;
      ``delete_outbox`` is idempotent.
    * ``list`` pages by key (``after``, the last run ID of the previous page) in O(page) work
      however deep the page; ``offset`` is kept for small offsets and may be bounded.
    * Parked events (events a consumer gave up on) are kept until deleted: ``park`` is an upsert
      on :attr:`ParkedEvent.id`; ``retry_parked`` sets ``retry_requested`` (``RecordNotFound``
      for an unknown ID); ``list_parked`` filters by consumer and flag, oldest first.
    """

    async def create(self, record: Record, event: OutboxEvent) -> None: ...

    async def update(self, record: Record, event: OutboxEvent) -> None: ...

    async def lookup(self, run_id: str) -> Record:
        """The run with this ID, or :class:`~statestream.errors.RecordNotFound`."""
        ...

    async def latest(self, workflow_name: str, foreign_id: str) -> Record:
        """The most recently created run of the foreign ID, or ``RecordNotFound``."""
        ...

    async def list(
        self,
        workflow_name: str | None = None,
        *,
        offset: int = 0,
        limit: int = 25,
        order: Order = Order.ASC,
        filter: RecordFilter | None = None,
        after: str | None = None,
    ) -> list[Record]:
        """Runs in creation order; ``workflow_name=None`` means all.

        ``after`` is a run ID: the page starts after that run in the requested ``order``
        (keyset paging, index-backed). ``offset`` counts rows from there and is meant for small
        values only. An unknown ``after`` raises :class:`~statestream.errors.RecordNotFound`.
        """
        ...

    async def list_outbox(self, workflow_name: str, limit: int) -> builtins.list[OutboxEvent]: ...

    async def delete_outbox(self, ids: Sequence[str]) -> None: ...

    async def park(self, parked: ParkedEvent) -> None: ...

    async def list_parked(
        self,
        workflow_name: str,
        *,
        consumer: str | None = None,
        retry_requested: bool | None = None,
        limit: int = 100,
    ) -> builtins.list[ParkedEvent]: ...

    async def retry_parked(self, parked_id: str) -> None: ...

    async def delete_parked(self, parked_id: str) -> None:
        """Idempotent: deleting an unknown ID does nothing."""
        ...


@runtime_checkable
class SnapshotStore(Protocol):
    """Optional: a store that keeps every version of a run (the in-memory store does, for tests)."""

    def snapshots(self, run_id: str) -> list[Record]: ...


@runtime_checkable
class EventReceiver(Protocol):
    """Reads one topic under a durable consumer name.

    ``recv`` waits (without spinning) until at least one event after the last one it returned is
    available and returns up to ``limit`` of them in ID order. ``ack(e)`` commits the consumer's
    position: every event up to and including ``e`` is handled. A new receiver with the same name
    starts after the last acknowledged event, so unacknowledged events are delivered again
    (at-least-once).

    ``is_new`` is True when the consumer name had no committed position when the receiver was
    opened (the engine then catches up from the record store instead of replaying history).
    """

    @property
    def is_new(self) -> bool: ...

    async def recv(self, limit: int = 100) -> list[Event]: ...

    async def ack(self, event: Event) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class EventStreamer(Protocol):
    """Publishes events to topics and opens receivers on them.

    Events published in one call to ``publish`` keep their order. A receiver with no committed
    position starts at the oldest retained event, or, with ``from_latest=True``, after the last
    event published before ``receiver`` returned (events published after it returns are
    received, even before the first ``recv``). With ``from_latest`` and no committed position,
    the receiver commits that starting position when it is opened, so a restart before the first
    ``ack`` does not skip what was published in between.

    With ``shards > 1`` the receiver delivers only the events whose key belongs to ``shard``
    (:func:`~statestream._record.shard_of`), and should read only those from the backend (a
    stored hash column, partitions): N shards must not cost N times the reads. Positions are kept
    per consumer name, as without shards.

    An ``ephemeral`` receiver keeps no committed position anywhere: it starts after the latest
    event (as ``from_latest``), ``ack`` does nothing, and it never holds back ``prune``. The
    engine uses one per process to wake ``wait_for`` callers on other processes' writes.

    ``prune(topics, before)`` deletes events of those topics created before ``before`` that
    every consumer with a committed position on the topic has acknowledged, and returns how
    many it deleted. A backend with its own retention (Kafka) may do nothing and return 0.
    """

    async def publish(self, topic: str, messages: Sequence[Message]) -> None: ...

    async def receiver(
        self,
        topic: str,
        name: str,
        *,
        from_latest: bool = False,
        poll_interval: float = 0.5,
        shard: int = 0,
        shards: int = 1,
        ephemeral: bool = False,
    ) -> EventReceiver: ...

    async def prune(self, topics: Sequence[str], before: datetime) -> int: ...

    async def close(self) -> None: ...


@runtime_checkable
class ConnectorSource(Protocol):
    """An outside stream a connector consumes: opens a receiver under a durable consumer name.

    :class:`statestream.StreamSource` adapts any topic of an :class:`EventStreamer`.
    """

    async def receiver(self, name: str) -> EventReceiver: ...


@runtime_checkable
class TimeoutStore(Protocol):
    """Durable timers, each bound to a run and to the version at which it entered the status.

    Invariants (checked by ``TimeoutStoreContract``):

    * A visit has at most one timer: ``create`` for a ``(workflow_name, run_id, status,
      run_version)`` that already has a timer (pending, claimed, completed or cancelled) returns
      that timer and stores nothing (a unique key in SQL stores).
    * ``claim(id, now, until)`` returns ``True`` for exactly one caller while the timer is pending
      and not claimed by a claim still in force (``claimed_until > now``); it sets
      ``claimed_until = until``. The poller claims a due timer before running the user's
      function, so two pollers never both run it; a claimant that dies leaves the claim to lapse.
    * ``defer(id, until)`` sets ``claimed_until = until`` of a pending timer (a retry after
      backoff, seen by every poller).
    * ``list_due(now)`` returns pending timers with ``expire_at <= now`` that are not claimed
      (``claimed_until`` unset or ``<= now``).
    * ``complete`` returns ``True`` only for the one call that completed a pending timeout.
    * ``cancel_for(workflow_name, run_id, status)`` cancels that run's pending timers at
      ``status`` (the run left the status).
    * ``prune(workflow_name, before)`` deletes completed and cancelled timers created before
      ``before`` and returns how many.
    """

    async def create(
        self,
        workflow_name: str,
        foreign_id: str,
        run_id: str,
        status: int,
        run_version: int,
        expire_at: datetime,
    ) -> TimeoutRecord: ...

    async def claim(self, timeout_id: int, now: datetime, until: datetime) -> bool: ...

    async def defer(self, timeout_id: int, until: datetime) -> None: ...

    async def complete(self, timeout_id: int) -> bool: ...

    async def cancel(self, timeout_id: int) -> None: ...

    async def cancel_for(self, workflow_name: str, run_id: str, status: int) -> None: ...

    async def prune(self, workflow_name: str, before: datetime) -> int: ...

    async def list(self, workflow_name: str) -> list[TimeoutRecord]:
        """Pending (not completed, not cancelled) timeouts of the workflow, by ID."""
        ...

    async def list_due(
        self, workflow_name: str, status: int, now: datetime, limit: int = 100
    ) -> builtins.list[TimeoutRecord]:
        """Pending, unclaimed timeouts at ``status`` with ``expire_at <= now``, earliest first."""
        ...


@runtime_checkable
class Lease(Protocol):
    """Exclusive hold on a role, from ``RoleScheduler.acquire`` until released or lost.

    ``valid_until`` is the local deadline (a ``time.monotonic()`` value) up to which this process
    may still act under the lease: the time of the last successful acquire or renewal plus the
    lease's time to live, minus a safety margin, so that it passes before any other process can
    acquire the role. A holder whose event loop stalls past it (so that it could not renew) sees
    it passed when it wakes, and stops: the engine starts no step and writes no result after it.
    A lease that cannot expire by time (in-process schedulers) reports ``math.inf``.
    """

    @property
    def role(self) -> str: ...

    @property
    def valid_until(self) -> float: ...

    async def lost(self) -> None:
        """Return when the lease is lost (the holder must stop the role's work at once).

        A lease that cannot be lost waits forever.
        """
        ...

    async def release(self) -> None: ...


@runtime_checkable
class RoleScheduler(Protocol):
    """Lets at most one holder at a time, across all processes that share it, hold a role."""

    async def acquire(self, role: str) -> Lease:
        """Wait until the role is held exclusively; cancellable while waiting."""
        ...


@runtime_checkable
class Clock(Protocol):
    """Source of time for records, timers and lags. ``now()`` is timezone-aware (UTC)."""

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


@runtime_checkable
class Codec(Protocol[T]):
    """Turns a workflow's object into bytes and back."""

    def encode(self, obj: T) -> bytes: ...

    def decode(self, data: bytes) -> T: ...
