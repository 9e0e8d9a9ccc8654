"""In-memory adapters: a record store, an event streamer, a timeout store and a role scheduler.

They need no third-party packages and keep all state in the process, so they are what tests,
examples and single-process services use. Every one of them passes the conformance suite in
:mod:`statestream.adaptertest`.

Atomicity comes from asyncio itself: no method awaits between checking the state and changing
it, so two coroutines can never interleave inside one write. The adapters are therefore safe to
share between tasks of one event loop, but not between threads.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins  # the stores' ``list`` methods shadow ``list`` in their class bodies
import contextlib
import dataclasses
import itertools
import math
import operator
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .. import errors
from .._core.clock import SystemClock
from .._core.protocols import Clock
from .._core.records import (
    Event,
    Message,
    Order,
    OutboxEvent,
    ParkedEvent,
    Record,
    RecordFilter,
    TimeoutRecord,
    shard_of,
)

__all__ = [
    "MemoryLease",
    "MemoryReceiver",
    "MemoryRecordStore",
    "MemoryRoleScheduler",
    "MemoryStreamer",
    "MemoryTimeoutStore",
]


def _check_window(offset: int, limit: int) -> None:
    if offset < 0:
        raise errors.InvalidInput(f"offset must not be negative, got {offset}")
    if limit < 0:
        raise errors.InvalidInput(f"limit must not be negative, got {limit}")


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise errors.InvalidInput(f"{name} must be timezone-aware, got naive {value!r}")


# --------------------------------------------------------------------------------------------
# Record store
# --------------------------------------------------------------------------------------------


class MemoryRecordStore:
    """A :class:`~statestream.RecordStore` and :class:`~statestream.SnapshotStore` in dicts.

    Records, outbox events and parked events are stored as given (they are frozen), so
    timestamps are whatever the engine's clock put on them. Runs are listed in creation order
    (the order of the ``create`` calls); ``list(after=...)`` finds its starting point by
    bisection, so a page costs O(log n + page) however deep it is (plus the runs a filter skips).
    Nothing is ever deleted but outbox and parked events: the store grows with the runs.

    Args:
        clock: Kept for symmetry with the other memory adapters; the store itself never reads
            the time because every record already carries its timestamps.
        keep_snapshots: Keep every stored version of every run for :meth:`snapshots` (tests that
            look at a run's history want it). Off by default: it multiplies the memory a run
            costs by its number of writes.

    >>> store = MemoryRecordStore()
    """

    #: A lookup is a dict read in this process: the engine keeps no copies of the records it
    #: wrote to spare it (see ``RecordStore``).
    local_lookups = True

    def __init__(self, clock: Clock | None = None, keep_snapshots: bool = False) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._keep_snapshots = keep_snapshots
        self._records: dict[str, Record] = {}
        # Creation order: _order[seq] is the run created seq-th; _seq maps back. Each workflow's
        # runs are an ascending list of seqs, so "after this run" is a bisection.
        self._order: list[str] = []
        self._seq: dict[str, int] = {}
        self._by_workflow: dict[str, list[int]] = {}
        self._latest: dict[tuple[str, str], str] = {}
        # One dict per workflow, used as an ordered set: oldest first, O(1) delete.
        self._outbox: dict[str, dict[str, OutboxEvent]] = {}
        self._parked: dict[str, ParkedEvent] = {}
        self._snapshots: dict[str, list[Record]] = {}

    async def create(self, record: Record, event: OutboxEvent) -> None:
        """Insert a new run together with its outbox event.

        Args:
            record: The run's first version.
            event: The outbox event announcing it.

        Raises:
            WorkflowInProgress: The latest run of ``(workflow_name, foreign_id)`` is not finished.
            VersionConflict: A run with this run ID already exists (expected version 0).
        """
        run_id = record.run_id
        records = self._records
        existing = records.get(run_id)
        if existing is not None:
            raise errors.VersionConflict(run_id, 0, existing.version)
        key = (record.workflow_name, record.foreign_id)
        latest_id = self._latest.get(key)
        if latest_id is not None:
            latest = records[latest_id]
            if not latest.run_state.finished:
                raise errors.WorkflowInProgress(
                    f"workflow {record.workflow_name!r} already has run {latest_id} "
                    f"for foreign ID {record.foreign_id!r} in state {latest.run_state.label}"
                )
        # No await from the checks above to the end: this is the atomic part.
        records[run_id] = record
        self._latest[key] = run_id
        seq = self._seq[run_id] = len(self._order)
        self._order.append(run_id)
        seqs = self._by_workflow.get(record.workflow_name)
        if seqs is None:
            self._by_workflow[record.workflow_name] = [seq]
        else:
            seqs.append(seq)
        self._add_outbox(event)
        if self._keep_snapshots:
            self._snapshots[run_id] = [record]

    async def update(self, record: Record, event: OutboxEvent) -> None:
        """Store a new version of a run together with its outbox event (compare-and-set).

        Args:
            record: The new version; its ``version`` must be the stored version plus one.
            event: The outbox event announcing it.

        Raises:
            RecordNotFound: No run with ``record.run_id``.
            VersionConflict: The stored version is not ``record.version - 1``; nothing is written.
        """
        run_id = record.run_id
        stored = self._records.get(run_id)
        if stored is None:
            raise errors.RecordNotFound(f"no run with ID {run_id!r}")
        if stored.version != record.version - 1:
            raise errors.VersionConflict(run_id, record.version - 1, stored.version)
        self._records[run_id] = record
        self._add_outbox(event)
        if self._keep_snapshots:
            self._snapshots[run_id].append(record)

    def _add_outbox(self, event: OutboxEvent) -> None:
        box = self._outbox.get(event.workflow_name)
        if box is None:
            self._outbox[event.workflow_name] = {event.id: event}
        else:
            box[event.id] = event

    async def lookup(self, run_id: str) -> Record:
        """The run with this ID.

        Raises:
            RecordNotFound: No run with this ID.
        """
        record = self._records.get(run_id)
        if record is None:
            raise errors.RecordNotFound(f"no run with ID {run_id!r}")
        return record

    async def latest(self, workflow_name: str, foreign_id: str) -> Record:
        """The most recently created run of the foreign ID.

        Raises:
            RecordNotFound: The workflow has no run for this foreign ID.
        """
        run_id = self._latest.get((workflow_name, foreign_id))
        if run_id is None:
            raise errors.RecordNotFound(
                f"workflow {workflow_name!r} has no run for foreign ID {foreign_id!r}"
            )
        return self._records[run_id]

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
        """Runs in creation order.

        Args:
            workflow_name: Only runs of this workflow; ``None`` lists every workflow.
            offset: Rows to skip, counted after filtering and ordering, from ``after``.
            limit: At most this many rows.
            order: ``Order.DESC`` lists the newest run first.
            filter: Only runs that match it.
            after: A run ID: start after that run in ``order`` (the run is only a position: it
                need not match the filter or the workflow).

        Raises:
            InvalidInput: ``offset`` or ``limit`` is negative.
            RecordNotFound: ``after`` is not the ID of a run.
        """
        _check_window(offset, limit)
        seqs: Sequence[int] = (
            range(len(self._order))
            if workflow_name is None
            else self._by_workflow.get(workflow_name, [])
        )
        ascending = order is Order.ASC
        if after is None:
            start = 0 if ascending else len(seqs)
        else:
            seq = self._seq.get(after)
            if seq is None:
                raise errors.RecordNotFound(f"no run with ID {after!r} to list after")
            start = bisect.bisect_right(seqs, seq) if ascending else bisect.bisect_left(seqs, seq)
        positions = range(start, len(seqs)) if ascending else range(start - 1, -1, -1)
        records, run_ids = self._records, self._order
        rows = (records[run_ids[seqs[i]]] for i in positions)
        if filter is not None:
            rows = (r for r in rows if filter.matches(r))
        return list(itertools.islice(rows, offset, offset + limit))

    async def list_outbox(self, workflow_name: str, limit: int) -> builtins.list[OutboxEvent]:
        """Pending outbox events of the workflow, oldest first, at most ``limit``."""
        _check_window(0, limit)
        box = self._outbox.get(workflow_name)
        if not box:
            return []
        return list(itertools.islice(box.values(), limit))

    async def delete_outbox(self, ids: Sequence[str]) -> None:
        """Delete outbox events; unknown or already deleted IDs are ignored."""
        boxes = self._outbox.values()
        for event_id in ids:
            for box in boxes:
                if box.pop(event_id, None) is not None:
                    break

    async def park(self, parked: ParkedEvent) -> None:
        """Store a parked event, replacing the entry with the same ID (all of its fields)."""
        self._parked[parked.id] = parked

    async def list_parked(
        self,
        workflow_name: str,
        *,
        consumer: str | None = None,
        retry_requested: bool | None = None,
        limit: int = 100,
    ) -> builtins.list[ParkedEvent]:
        """Parked events of the workflow by ``parked_at``, oldest first, at most ``limit``.

        Args:
            workflow_name: The workflow whose consumers parked them.
            consumer: Only those of this consumer.
            retry_requested: Only those whose flag has this value.
            limit: At most this many.

        Raises:
            InvalidInput: ``limit`` is negative.
        """
        _check_window(0, limit)
        rows = [
            p
            for p in self._parked.values()
            if p.workflow_name == workflow_name
            and (consumer is None or p.consumer == consumer)
            and (retry_requested is None or p.retry_requested is retry_requested)
        ]
        rows.sort(key=lambda p: p.parked_at)  # stable: ties stay in the order first parked
        return rows[:limit]

    async def retry_parked(self, parked_id: str) -> None:
        """Set ``retry_requested`` of a parked event.

        Raises:
            RecordNotFound: No parked event has this ID.
        """
        parked = self._parked.get(parked_id)
        if parked is None:
            raise errors.RecordNotFound(f"no parked event with ID {parked_id!r}")
        self._parked[parked_id] = dataclasses.replace(parked, retry_requested=True)

    async def delete_parked(self, parked_id: str) -> None:
        """Delete a parked event; an unknown ID is ignored."""
        self._parked.pop(parked_id, None)

    def snapshots(self, run_id: str) -> builtins.list[Record]:
        """Every stored version of the run, oldest first (empty if ``keep_snapshots=False``)."""
        return list(self._snapshots.get(run_id, ()))


# --------------------------------------------------------------------------------------------
# Event streamer
# --------------------------------------------------------------------------------------------


_event_id = operator.attrgetter("id")


class _Log:
    """Retained events of a topic, or of one of its shards, in ID order.

    A list with a moving head: dropping a prefix is amortised O(1) (the list is compacted once
    the head passes its middle, so memory follows what is retained), and finding the events
    after an ID is a bisection. ``waiters`` are the futures of receivers waiting on this log.
    """

    __slots__ = ("_events", "_head", "waiters")

    def __init__(self, events: Sequence[Event] = ()) -> None:
        self._events: list[Event] = list(events)
        self._head = 0
        # One future per waiting recv, so that cancelling one waiter never disturbs another.
        self.waiters: set[asyncio.Future[None]] = set()

    def __len__(self) -> int:
        return len(self._events) - self._head

    def retained(self) -> list[Event]:
        return self._events[self._head :]

    def append(self, event: Event) -> None:
        self._events.append(event)

    def after(self, event_id: int, limit: int) -> list[Event]:
        """Up to ``limit`` events with an ID above ``event_id``, oldest first."""
        events = self._events
        i = bisect.bisect_right(events, event_id, self._head, key=_event_id)
        return events[i : i + limit]

    def prunable_through(self, acked: int, before: datetime) -> int:
        """The ID ending the longest prefix of events that are acked and older than ``before``.

        0 if there is none. Only a prefix is pruned, so an event with a later ``created_at``
        than those behind it holds them until ``before`` passes it too.
        """
        events, last = self._events, 0
        for i in range(self._head, len(events)):
            event = events[i]
            if event.id > acked or event.created_at >= before:
                break
            last = event.id
        return last

    def drop_through(self, event_id: int) -> int:
        """Forget the events with an ID up to ``event_id``; return how many."""
        events = self._events
        i = bisect.bisect_right(events, event_id, self._head, key=_event_id)
        dropped, self._head = i - self._head, i
        if self._head * 2 >= len(events):
            del events[: self._head]
            self._head = 0
        return dropped

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()


@dataclass(slots=True, eq=False)
class _Topic:
    last_id: int = 0
    # Per shard count, one log per shard; logs[1] == [every event]. Each log holds the same
    # Event objects as the full one, so a shard count costs one reference per event.
    logs: dict[int, list[_Log]] = field(default_factory=lambda: {1: [_Log()]})
    # Committed positions by consumer name: the ID of the last acknowledged event.
    cursors: dict[str, int] = field(default_factory=dict)

    def log(self, shard: int, shards: int) -> _Log:
        """The log of one shard, indexed from the retained events the first time it is asked."""
        logs = self.logs.get(shards)
        if logs is None:
            logs = self.logs[shards] = [_Log() for _ in range(shards)]
            for event in self.logs[1][0].retained():
                logs[shard_of(event.key, shards)].append(event)
        return logs[shard]


class MemoryReceiver:
    """A receiver of :class:`MemoryStreamer`; see :class:`~statestream.EventReceiver`.

    Attributes:
        is_new: Whether the consumer name had no committed position when the receiver opened.
    """

    def __init__(
        self,
        streamer: MemoryStreamer,
        topic: str,
        name: str,
        log: _Log,
        position: int,
        is_new: bool,
        ephemeral: bool = False,
    ) -> None:
        self._streamer = streamer
        self._ephemeral = ephemeral
        self._log = log
        self.topic = topic
        self.name = name
        self.is_new = is_new
        # The ID of the last event returned (or of the committed position at open).
        self._position = position
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    async def recv(self, limit: int = 100) -> list[Event]:
        """Wait until an event after the last returned one exists; return up to ``limit``.

        Raises:
            InvalidInput: ``limit`` is less than 1.
            AdapterError: The receiver is closed (also raised in a ``recv`` waiting at close).
        """
        if limit < 1:
            raise errors.InvalidInput(f"limit must be at least 1, got {limit}")
        log = self._log
        while True:
            if self._closed:
                raise errors.AdapterError(f"receiver {self.name!r} on {self.topic!r} is closed")
            batch = log.after(self._position, limit)
            if batch:
                self._position = batch[-1].id
                return batch
            waiter = asyncio.get_running_loop().create_future()
            log.waiters.add(waiter)
            self._waiter = waiter
            try:
                await waiter
            finally:
                log.waiters.discard(waiter)
                self._waiter = None

    async def ack(self, event: Event) -> None:
        """Commit the position: ``event`` and every event before it are handled.

        Acknowledging after :meth:`close` still commits, so a handler that finishes late is not
        redelivered.

        Raises:
            InvalidInput: The event belongs to another topic.
        """
        if event.topic != self.topic:
            raise errors.InvalidInput(
                f"event of topic {event.topic!r} acknowledged on a receiver of {self.topic!r}"
            )
        if not self._ephemeral:
            self._streamer._commit(self.topic, self.name, event.id)

    async def close(self) -> None:
        """Stop receiving; a ``recv`` in progress or called later raises ``AdapterError``."""
        if self._closed:
            return
        self._closed = True
        self._streamer._receivers.discard(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class MemoryStreamer:
    """An :class:`~statestream.EventStreamer` that keeps each topic's events in memory.

    Event IDs count from 1 in each topic and are never reused, even once pruned. Committed
    positions are kept per ``(topic, name)`` for the life of the streamer, so a receiver opened
    again under the same name resumes after the last acknowledged event. A receiver of one shard
    reads an index of that shard's events (built the first time a shard count is used on a
    topic), so N shards cost what one does. Receivers wait on futures that :meth:`publish`
    resolves: they never poll, and ``poll_interval`` is accepted only for compatibility.

    Events stay until :meth:`prune` deletes them; pruning frees their memory.

    >>> streamer = MemoryStreamer()
    """

    def __init__(self) -> None:
        self._topics: dict[str, _Topic] = {}
        # Weak, so that a receiver nobody closed does not live as long as the streamer.
        self._receivers: weakref.WeakSet[MemoryReceiver] = weakref.WeakSet()

    def _topic(self, topic: str) -> _Topic:
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _Topic()
        return state

    def _commit(self, topic: str, name: str, event_id: int) -> None:
        cursors = self._topic(topic).cursors
        if event_id > cursors.get(name, 0):
            cursors[name] = event_id

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Append the messages to the topic in order and wake the receivers they concern."""
        if not messages:
            return
        state = self._topic(topic)
        touched: set[_Log] = set()
        for m in messages:
            state.last_id += 1
            event = Event(state.last_id, topic, m.key, m.type, m.headers, m.created_at, m.data)
            for shards, logs in state.logs.items():
                log = logs[0] if shards == 1 else logs[shard_of(event.key, shards)]
                log.append(event)
                if log.waiters:
                    touched.add(log)
        for log in touched:
            log.wake()

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
    ) -> MemoryReceiver:
        """Open a receiver on ``topic`` under the consumer name ``name``.

        Args:
            topic: The topic to read.
            name: The durable consumer name; its committed position is where reading starts.
            from_latest: Without a committed position, start after the events published so far
                instead of at the first one. The position is committed at once, as a Kafka
                consumer group or a Redis stream group created at ``$`` would be.
            poll_interval: Ignored: memory receivers are woken by :meth:`publish`.
            shard: Deliver only the events whose key is in this shard (0-based)...
            shards: ...of this many (:func:`~statestream._core.records.shard_of`).
            ephemeral: Keep no position: start after the events published so far, ignore any
                committed position of ``name`` and make ``ack`` a no-op (so it never holds back
                :meth:`prune`).

        Raises:
            InvalidInput: ``shards`` is less than 1 or ``shard`` is not in ``range(shards)``.
        """
        if shards < 1 or not 0 <= shard < shards:
            raise errors.InvalidInput(f"shard {shard} of {shards} does not exist")
        state = self._topic(topic)
        if ephemeral:
            log = state.log(shard, shards)
            receiver = MemoryReceiver(self, topic, name, log, state.last_id, True, True)
            self._receivers.add(receiver)
            return receiver
        position = state.cursors.get(name)
        is_new = position is None
        if position is None:
            position = state.last_id if from_latest else 0
            if from_latest:
                state.cursors[name] = position
        log = state.log(shard, shards)
        receiver = MemoryReceiver(self, topic, name, log, position, is_new)
        self._receivers.add(receiver)
        return receiver

    async def prune(self, topics: Sequence[str], before: datetime) -> int:
        """Delete old events that every consumer with a committed position has acknowledged.

        For each topic, deletes the longest run of oldest events that are created before
        ``before`` and at or below every committed position (every event, on a topic nobody has
        committed a position on). Receivers that had not reached them skip to the oldest event
        kept.

        Returns:
            How many events were deleted.

        Raises:
            InvalidInput: ``before`` is naive.
        """
        _require_aware("before", before)
        deleted = 0
        for topic in dict.fromkeys(topics):
            state = self._topics.get(topic)
            if state is None:
                continue
            acked = min(state.cursors.values(), default=state.last_id)
            through = state.logs[1][0].prunable_through(acked, before)
            if not through:
                continue
            for shards, logs in state.logs.items():
                for log in logs:
                    dropped = log.drop_through(through)
                    if shards == 1:
                        deleted += dropped
        return deleted

    async def close(self) -> None:
        """Close every open receiver. The streamer holds no resources and stays usable."""
        for receiver in list(self._receivers):
            await receiver.close()


# --------------------------------------------------------------------------------------------
# Timeout store
# --------------------------------------------------------------------------------------------


class MemoryTimeoutStore:
    """A :class:`~statestream.TimeoutStore` in dicts.

    IDs count from 1 and are never reused. Each visit of a status (``workflow_name, run_id,
    status, run_version``) has at most one timer: completed and cancelled timers are kept, so
    that a redelivered event cannot create the visit's timer again, until :meth:`prune` deletes
    them.

    Args:
        clock: Sets ``created_at`` of new timeouts; defaults to the system clock.

    >>> timeouts = MemoryTimeoutStore()
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._pending: dict[int, TimeoutRecord] = {}
        # Completed and cancelled timers, until pruned (``completed`` tells them apart).
        self._finished: dict[int, TimeoutRecord] = {}
        self._by_visit: dict[tuple[str, str, int, int], int] = {}
        self._last_id = 0

    async def create(
        self,
        workflow_name: str,
        foreign_id: str,
        run_id: str,
        status: int,
        run_version: int,
        expire_at: datetime,
    ) -> TimeoutRecord:
        """Store a pending timeout and return it with its new ID.

        If the visit ``(workflow_name, run_id, status, run_version)`` already has a timer
        (pending, claimed, completed or cancelled), return that one as it is instead.

        Raises:
            InvalidInput: ``expire_at`` is naive.
        """
        _require_aware("expire_at", expire_at)
        visit = (workflow_name, run_id, status, run_version)
        existing = self._by_visit.get(visit)
        if existing is not None:
            return self._pending.get(existing) or self._finished[existing]
        self._last_id += 1
        timeout = TimeoutRecord(
            id=self._last_id,
            workflow_name=workflow_name,
            foreign_id=foreign_id,
            run_id=run_id,
            status=status,
            run_version=run_version,
            expire_at=expire_at,
            created_at=self.clock.now(),
        )
        self._pending[timeout.id] = timeout
        self._by_visit[visit] = timeout.id
        return timeout

    def _check_known(self, timeout_id: int) -> None:
        if not 1 <= timeout_id <= self._last_id:
            raise errors.TimeoutNotFound(f"no timeout with ID {timeout_id}")

    async def claim(self, timeout_id: int, now: datetime, until: datetime) -> bool:
        """Claim a pending timeout up to ``until``, unless a claim is in force at ``now``.

        Returns:
            ``True`` for the caller that claimed it; ``False`` if it is completed, cancelled,
            or claimed with ``claimed_until > now``.

        Raises:
            InvalidInput: ``now`` or ``until`` is naive.
            TimeoutNotFound: No timeout ever had this ID.
        """
        _require_aware("now", now)
        _require_aware("until", until)
        timeout = self._pending.get(timeout_id)
        if timeout is None:
            self._check_known(timeout_id)
            return False
        if timeout.claimed_until is not None and timeout.claimed_until > now:
            return False
        self._pending[timeout_id] = dataclasses.replace(timeout, claimed_until=until)
        return True

    async def defer(self, timeout_id: int, until: datetime) -> None:
        """Make a pending timeout not due before ``until`` (a completed or cancelled one stays).

        Raises:
            InvalidInput: ``until`` is naive.
            TimeoutNotFound: No timeout ever had this ID.
        """
        _require_aware("until", until)
        timeout = self._pending.get(timeout_id)
        if timeout is None:
            self._check_known(timeout_id)
            return
        self._pending[timeout_id] = dataclasses.replace(timeout, claimed_until=until)

    async def complete(self, timeout_id: int) -> bool:
        """Complete a pending timeout, claimed or not.

        Returns:
            ``True`` for the call that completed it; ``False`` if it was already completed or
            cancelled.

        Raises:
            TimeoutNotFound: No timeout ever had this ID.
        """
        timeout = self._pending.pop(timeout_id, None)
        if timeout is None:
            self._check_known(timeout_id)
            return False
        self._finished[timeout_id] = dataclasses.replace(timeout, completed=True)
        return True

    async def cancel(self, timeout_id: int) -> None:
        """Cancel a timeout; cancelling a completed or cancelled one does nothing.

        Raises:
            TimeoutNotFound: No timeout ever had this ID.
        """
        timeout = self._pending.pop(timeout_id, None)
        if timeout is None:
            self._check_known(timeout_id)
        else:
            self._finished[timeout_id] = timeout

    async def cancel_for(
        self, workflow_name: str, run_id: str, status: int, below_version: int
    ) -> None:
        """Cancel the run's pending timeouts at ``status`` of visits before ``below_version``."""
        for timeout in [
            t
            for t in self._pending.values()
            if t.run_id == run_id
            and t.status == status
            and t.workflow_name == workflow_name
            and t.run_version < below_version
        ]:
            self._finished[timeout.id] = self._pending.pop(timeout.id)

    async def prune(self, workflow_name: str, before: datetime) -> int:
        """Delete the workflow's completed and cancelled timeouts created before ``before``.

        Returns:
            How many were deleted.

        Raises:
            InvalidInput: ``before`` is naive.
        """
        _require_aware("before", before)
        old = [
            t
            for t in self._finished.values()
            if t.workflow_name == workflow_name and t.created_at < before
        ]
        for t in old:
            del self._finished[t.id]
            del self._by_visit[(t.workflow_name, t.run_id, t.status, t.run_version)]
        return len(old)

    async def list(self, workflow_name: str) -> list[TimeoutRecord]:
        """Pending timeouts of the workflow (claimed ones too), by ID."""
        return [t for t in self._pending.values() if t.workflow_name == workflow_name]

    async def list_due(
        self, workflow_name: str, status: int, now: datetime, limit: int = 100
    ) -> builtins.list[TimeoutRecord]:
        """Pending, unclaimed timeouts at ``status`` with ``expire_at <= now``.

        A timeout whose ``claimed_until`` is at or before ``now`` counts as unclaimed. They are
        ordered by ``(expire_at, id)``.

        Raises:
            InvalidInput: ``now`` is naive or ``limit`` is negative.
        """
        _require_aware("now", now)
        _check_window(0, limit)
        due = [
            t
            for t in self._pending.values()
            if t.workflow_name == workflow_name
            and t.status == status
            and t.expire_at <= now
            and (t.claimed_until is None or t.claimed_until <= now)
        ]
        due.sort(key=lambda t: (t.expire_at, t.id))
        return due[:limit]


# --------------------------------------------------------------------------------------------
# Role scheduler
# --------------------------------------------------------------------------------------------


class MemoryLease:
    """A role held through :class:`MemoryRoleScheduler`; see :class:`~statestream.Lease`.

    A memory lease is never lost: :meth:`lost` returns only once the lease is released.
    """

    def __init__(self, scheduler: MemoryRoleScheduler, role: str) -> None:
        self._scheduler = scheduler
        self._role = role
        self._released = False
        self._lost_waiters: list[asyncio.Future[None]] = []

    @property
    def role(self) -> str:
        """The role this lease holds."""
        return self._role

    @property
    def valid_until(self) -> float:
        """``math.inf``: a memory lease cannot expire by time."""
        return math.inf

    @property
    def released(self) -> bool:
        """Whether :meth:`release` has been called."""
        return self._released

    async def lost(self) -> None:
        """Wait until the lease is released; a held memory lease is never lost."""
        if self._released:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._lost_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._lost_waiters:
                self._lost_waiters.remove(waiter)

    async def release(self) -> None:
        """Give the role up and hand it to the longest waiter; idempotent."""
        self._release()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        for waiter in self._lost_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._lost_waiters.clear()
        self._scheduler._hand_over(self)


@dataclass(slots=True, eq=False)
class _Role:
    holder: MemoryLease | None = None
    waiters: deque[asyncio.Future[MemoryLease]] = field(default_factory=deque)


class MemoryRoleScheduler:
    """A :class:`~statestream.RoleScheduler` for the tasks of one process.

    Waiters are served first come, first served. Roles are arbitrary strings and cost nothing
    while nobody holds or waits for them.

    >>> scheduler = MemoryRoleScheduler()
    """

    def __init__(self) -> None:
        self._roles: dict[str, _Role] = {}

    async def acquire(self, role: str) -> MemoryLease:
        """Wait until ``role`` is free and hold it.

        Cancelling the waiting task leaves the role to the others: a waiter that is granted the
        role and cancelled in the same loop iteration passes it on before re-raising.
        """
        state = self._roles.get(role)
        if state is None:
            state = self._roles[role] = _Role()
        if state.holder is None and not state.waiters:
            lease = state.holder = MemoryLease(self, role)
            return lease
        waiter: asyncio.Future[MemoryLease] = asyncio.get_running_loop().create_future()
        state.waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Granted while being cancelled: the caller will never see the lease.
                waiter.result()._release()
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    state.waiters.remove(waiter)
                self._forget_if_idle(role, state)
            raise

    def _hand_over(self, lease: MemoryLease) -> None:
        role = lease.role
        state = self._roles.get(role)
        if state is None or state.holder is not lease:
            return
        state.holder = None
        while state.waiters:
            waiter = state.waiters.popleft()
            if not waiter.done():
                successor = state.holder = MemoryLease(self, role)
                waiter.set_result(successor)
                return
        self._forget_if_idle(role, state)

    def _forget_if_idle(self, role: str, state: _Role) -> None:
        if state.holder is None and not state.waiters and self._roles.get(role) is state:
            del self._roles[role]
