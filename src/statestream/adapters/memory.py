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
import builtins  # the stores' ``list`` methods shadow ``list`` in their class bodies
import contextlib
import itertools
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .. import errors
from .._core.clock import SystemClock
from .._core.protocols import Clock
from .._core.records import Event, Message, Order, OutboxEvent, Record, RecordFilter, TimeoutRecord

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


# --------------------------------------------------------------------------------------------
# Record store
# --------------------------------------------------------------------------------------------


class MemoryRecordStore:
    """A :class:`~statestream.RecordStore` and :class:`~statestream.SnapshotStore` in a dict.

    Records and outbox events are stored as given (they are frozen), so timestamps are whatever
    the engine's clock put on them.

    Args:
        clock: Kept for symmetry with the other memory adapters; the store itself never reads
            the time because every record already carries its timestamps.
        keep_snapshots: Keep every stored version of every run for :meth:`snapshots`. Turn it off
            for long-running processes, where the history would only grow.

    >>> store = MemoryRecordStore()
    """

    def __init__(self, clock: Clock | None = None, keep_snapshots: bool = True) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._keep_snapshots = keep_snapshots
        # Insertion order of this dict is creation order: updates replace values in place.
        self._records: dict[str, Record] = {}
        self._by_workflow: dict[str, list[str]] = {}
        self._latest: dict[tuple[str, str], str] = {}
        # One dict per workflow, used as an ordered set: oldest first, O(1) delete.
        self._outbox: dict[str, dict[str, OutboxEvent]] = {}
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
        run_ids = self._by_workflow.get(record.workflow_name)
        if run_ids is None:
            self._by_workflow[record.workflow_name] = [run_id]
        else:
            run_ids.append(run_id)
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
    ) -> list[Record]:
        """Runs in creation order.

        Args:
            workflow_name: Only runs of this workflow; ``None`` lists every workflow.
            offset: Rows to skip, counted after filtering and ordering.
            limit: At most this many rows.
            order: ``Order.DESC`` lists the newest run first.
            filter: Only runs that match it.

        Raises:
            InvalidInput: ``offset`` or ``limit`` is negative.
        """
        _check_window(offset, limit)
        if workflow_name is None:
            rows = list(self._records.values())
        else:
            records = self._records
            rows = [records[r] for r in self._by_workflow.get(workflow_name, ())]
        if filter is not None:
            rows = [r for r in rows if filter.matches(r)]
        if order is Order.DESC:
            rows.reverse()
        return rows[offset : offset + limit]

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

    def snapshots(self, run_id: str) -> builtins.list[Record]:
        """Every stored version of the run, oldest first (empty if ``keep_snapshots=False``)."""
        return list(self._snapshots.get(run_id, ()))


# --------------------------------------------------------------------------------------------
# Event streamer
# --------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Topic:
    events: list[Event] = field(default_factory=list)
    # One future per waiting recv, so that cancelling one waiter never disturbs another.
    waiters: set[asyncio.Future[None]] = field(default_factory=set)

    def wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()


class MemoryReceiver:
    """A receiver of :class:`MemoryStreamer`; see :class:`~statestream.EventReceiver`."""

    def __init__(
        self,
        streamer: MemoryStreamer,
        topic: str,
        name: str,
        position: int,
        ephemeral: bool = False,
    ) -> None:
        self._streamer = streamer
        self._ephemeral = ephemeral
        self._topic = streamer._topic(topic)
        self.topic = topic
        self.name = name
        # Events are numbered 1..N, so the position is also the ID of the last event returned.
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
        topic = self._topic
        while True:
            if self._closed:
                raise errors.AdapterError(f"receiver {self.name!r} on {self.topic!r} is closed")
            events = topic.events
            position = self._position
            if len(events) > position:
                batch = events[position : position + limit]
                self._position = position + len(batch)
                return batch
            waiter = asyncio.get_running_loop().create_future()
            topic.waiters.add(waiter)
            self._waiter = waiter
            try:
                await waiter
            finally:
                topic.waiters.discard(waiter)
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
    """An :class:`~statestream.EventStreamer` that keeps every topic as a list in memory.

    Event IDs count from 1 in each topic. Committed positions are kept per ``(topic, name)`` for
    the life of the streamer, so a receiver opened again under the same name resumes after the
    last acknowledged event. Receivers wait on futures that :meth:`publish` resolves: they never
    poll, and ``poll_interval`` is accepted only for compatibility.

    >>> streamer = MemoryStreamer()
    """

    def __init__(self) -> None:
        self._topics: dict[str, _Topic] = {}
        self._cursors: dict[tuple[str, str], int] = {}
        # Weak, so that a receiver nobody closed does not live as long as the streamer.
        self._receivers: weakref.WeakSet[MemoryReceiver] = weakref.WeakSet()

    def _topic(self, topic: str) -> _Topic:
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _Topic()
        return state

    def _commit(self, topic: str, name: str, event_id: int) -> None:
        key = (topic, name)
        if event_id > self._cursors.get(key, 0):
            self._cursors[key] = event_id

    async def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Append the messages to the topic in order and wake its waiting receivers."""
        if not messages:
            return
        state = self._topic(topic)
        events = state.events
        next_id = len(events) + 1
        for offset, m in enumerate(messages):
            events.append(
                Event(next_id + offset, topic, m.key, m.type, m.headers, m.created_at, m.data)
            )
        if state.waiters:
            state.wake()

    async def receiver(
        self,
        topic: str,
        name: str,
        *,
        from_latest: bool = False,
        poll_interval: float = 0.5,
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
            ephemeral: Keep no position: start after the events published so far and make
                ``ack`` a no-op (the committed position of ``name``, if any, is ignored).
        """
        if ephemeral:
            receiver = MemoryReceiver(self, topic, name, len(self._topic(topic).events), True)
            self._receivers.add(receiver)
            return receiver
        key = (topic, name)
        position = self._cursors.get(key)
        if position is None:
            if from_latest:
                position = self._cursors[key] = len(self._topic(topic).events)
            else:
                position = 0
        receiver = MemoryReceiver(self, topic, name, position)
        self._receivers.add(receiver)
        return receiver

    async def close(self) -> None:
        """Close every open receiver. The streamer holds no resources and stays usable."""
        for receiver in list(self._receivers):
            await receiver.close()


# --------------------------------------------------------------------------------------------
# Timeout store
# --------------------------------------------------------------------------------------------


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise errors.InvalidInput(f"{name} must be timezone-aware, got naive {value!r}")


class MemoryTimeoutStore:
    """A :class:`~statestream.TimeoutStore` in a dict.

    IDs count from 1. Completed and cancelled timeouts are forgotten; IDs are never reused.

    Args:
        clock: Sets ``created_at`` of new timeouts; defaults to the system clock.

    >>> timeouts = MemoryTimeoutStore()
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._pending: dict[int, TimeoutRecord] = {}
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

        Raises:
            InvalidInput: ``expire_at`` is naive.
        """
        _require_aware("expire_at", expire_at)
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
        return timeout

    def _check_known(self, timeout_id: int) -> None:
        if not 1 <= timeout_id <= self._last_id:
            raise errors.TimeoutNotFound(f"no timeout with ID {timeout_id}")

    async def complete(self, timeout_id: int) -> bool:
        """Complete a pending timeout.

        Returns:
            ``True`` for the call that completed it; ``False`` if it was already completed or
            cancelled.

        Raises:
            TimeoutNotFound: No timeout ever had this ID.
        """
        if self._pending.pop(timeout_id, None) is not None:
            return True
        self._check_known(timeout_id)
        return False

    async def cancel(self, timeout_id: int) -> None:
        """Cancel a timeout; cancelling a completed or cancelled one does nothing.

        Raises:
            TimeoutNotFound: No timeout ever had this ID.
        """
        if self._pending.pop(timeout_id, None) is None:
            self._check_known(timeout_id)

    async def list(self, workflow_name: str) -> list[TimeoutRecord]:
        """Pending timeouts of the workflow, by ID."""
        return [t for t in self._pending.values() if t.workflow_name == workflow_name]

    async def list_due(
        self, workflow_name: str, status: int, now: datetime, limit: int = 100
    ) -> builtins.list[TimeoutRecord]:
        """Pending timeouts at ``status`` with ``expire_at <= now``, by ``(expire_at, id)``.

        Raises:
            InvalidInput: ``now`` is naive or ``limit`` is negative.
        """
        _require_aware("now", now)
        _check_window(0, limit)
        due = [
            t
            for t in self._pending.values()
            if t.workflow_name == workflow_name and t.status == status and t.expire_at <= now
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
