"""The in-memory event streamer."""

from __future__ import annotations

import asyncio
import bisect
import builtins  # the stores' ``list`` methods shadow ``list`` in their class bodies
import operator
import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ... import errors
from ..._core.clock import SystemClock
from ..._core.protocols import Clock
from ..._core.records import (
    Event,
    Message,
    shard_of,
)
from ._util import _check_window, _require_aware

_event_id = operator.attrgetter("id")

__all__ = ["MemoryReceiver", "MemoryStreamer"]


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
    # When each position was last committed (on the streamer's clock).
    committed_at: dict[str, datetime] = field(default_factory=dict)

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
        # The ID of the last event acknowledged (or the committed position at open).
        self._acked = position
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
            self._commit_passed()
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
            if event.id > self._acked:
                self._acked = event.id
            self._commit_passed()

    def _commit_passed(self) -> None:
        """A shard's receiver that has acknowledged all it returned, with nothing more of its
        shard to read, has passed every event of the topic so far: commit that, so that the
        other shards' events do not stay unacknowledged under its name (and hold back prune)."""
        if self._ephemeral or self._acked < self._position or self._log.after(self._position, 1):
            return
        last = self._streamer._topic(self.topic).last_id
        if last > self._acked:
            self._streamer._commit(self.topic, self.name, last)
            self._acked = self._position = last

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

    def __init__(self, clock: Clock | None = None) -> None:
        #: Stamps committed positions, for :meth:`forget` (the workflow's clock in tests).
        self.clock: Clock = clock or SystemClock()
        self._topics: dict[str, _Topic] = {}
        # Weak, so that a receiver nobody closed does not live as long as the streamer.
        self._receivers: weakref.WeakSet[MemoryReceiver] = weakref.WeakSet()

    def _topic(self, topic: str) -> _Topic:
        state = self._topics.get(topic)
        if state is None:
            state = self._topics[topic] = _Topic()
        return state

    def _commit(self, topic: str, name: str, event_id: int) -> None:
        state = self._topic(topic)
        cursors = state.cursors
        if event_id > cursors.get(name, 0):
            cursors[name] = event_id
        state.committed_at[name] = self.clock.now()

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

    async def events_for_key(
        self, topics: Sequence[str], key: str, limit: int = 100
    ) -> builtins.list[Event]:
        """The retained events of ``topics`` with this key, oldest first (an
        :class:`~statestream.EventHistory`): a pass over those topics' retained events."""
        _check_window(0, limit)
        found = [
            event
            for topic in dict.fromkeys(topics)
            if (state := self._topics.get(topic)) is not None
            for event in state.logs[1][0].retained()
            if event.key == key
        ]
        found.sort(key=lambda e: (e.created_at, e.id))
        return found[:limit]

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
                state.committed_at[name] = self.clock.now()
        log = state.log(shard, shards)
        receiver = MemoryReceiver(self, topic, name, log, position, is_new)
        self._receivers.add(receiver)
        return receiver

    async def forget(
        self, topic: str, keep: Collection[str], before: datetime
    ) -> builtins.list[str]:
        """Delete the positions on ``topic`` of names not in ``keep`` committed before
        ``before``; returns the names (see :meth:`EventStreamer.forget`)."""
        _require_aware("before", before)
        state = self._topics.get(topic)
        if state is None:
            return []
        gone = [
            name
            for name in state.cursors
            if name not in keep and state.committed_at.get(name, before) < before
        ]
        for name in gone:
            del state.cursors[name]
            state.committed_at.pop(name, None)
        return gone

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
            for receiver in list(self._receivers):
                if receiver.topic == topic and not receiver._closed:
                    receiver._commit_passed()  # an idle shard has passed the others' events
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
