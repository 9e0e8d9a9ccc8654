"""Catching up a new consumer from the record store instead of from the stream's history.

Every engine consumer opens its receiver with ``from_latest=True``: a consumer name never seen
before (a step added in a new release, a shard of a changed ``parallel_count``, a new timeout)
starts at the newest event rather than replaying every event ever published. What it must not
miss are the runs waiting at its status right now, whose events came before its start: it finds
them in the record store (runs at the status that are Initiated or Running, keyset-paged, only
its own shard's) and feeds them to its handler as synthetic events, ahead of the stream. The
receiver is opened before the record store is read, so a run that arrives meanwhile is seen by
one or the other (or both). The handler's freshness check (run state, status and version) and
the dispatcher's per-run ordering make the overlap harmless, so the work is proportional to the
runs in flight, never to history.

A catch-up that is interrupted (the process stops, dies or loses its role half-way) must be done
again by the next holder, but ``from_latest`` has already committed the consumer's start, so
the receiver is not new any more. So the engine records completion separately: once every
synthetic event has been handled, it opens a receiver under the consumer's name on a topic that
never carries events (``"<workflow>-catch-up"``) with ``from_latest=True``, which commits a
position there. A consumer without that position catches up when it starts (also once after an
upgrade from a release without markers; harmless), one with it does not. The marker topic has no
events, so its positions never hold back pruning.

Synthetic events have negative IDs (-1, -2, ... in order) and are never acknowledged on the real
receiver. The dispatcher acknowledges only a contiguous prefix of handled events, and the
synthetic events come first, so an acknowledgement of the last synthetic event, or of any real
event, means that the whole catch-up has been handled.

Hooks and pause retry do not catch up: a hook added in a new release must not fire for runs that
finished before it existed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from .._core.protocols import EventReceiver, EventStreamer, RecordStore
from .._core.records import Event, Record, RecordFilter, shard_of
from .._core.runstate import RunState
from .logfields import fields
from .runtime import H_RUN_STATE, H_VERSION, Runtime

__all__ = ["CatchUp", "CatchingUp", "marker_topic", "synthetic_event"]

log = logging.getLogger("statestream")

_PAGE = 200
#: at most this many visits are remembered to drop their duplicates from the stream
_SEEN = 100_000
_IN_FLIGHT = (RunState.INITIATED, RunState.RUNNING)


def marker_topic(workflow_name: str) -> str:
    """The topic (never published to) whose consumer positions mark finished catch-ups."""
    return f"{workflow_name.replace(' ', '_')}-catch-up"


def synthetic_event(event_id: int, topic: str, record: Record) -> Event:
    """An event as the engine would have published it for the write of ``record``."""
    headers = {
        "workflow_name": record.workflow_name,
        "foreign_id": record.foreign_id,
        "run_id": record.run_id,
        "topic": topic,
        H_RUN_STATE: str(int(record.run_state)),
        H_VERSION: str(record.version),
    }
    return Event(event_id, topic, record.run_id, record.status, headers, record.updated_at)


class CatchUp:
    """The catch-up of one consumer: which runs it picks up, and its completion marker.

    Args:
        rt: the workflow's runtime.
        topic: the topic the consumer reads (the synthetic events claim to come from it).
        consumer: the consumer's name (its role).
        statuses, run_states: which runs are in flight for this consumer.
        shard, shards: only the runs of this shard.
        source: (workflow name, streamer, store) of the workflow whose runs are picked up, when
            it is not this one (a connection to another workflow); the marker is kept on that
            streamer, under this workflow's marker topic.
    """

    def __init__(
        self,
        rt: Runtime[Any, Any],
        topic: str,
        consumer: str,
        *,
        statuses: Sequence[int] = (),
        run_states: Sequence[RunState] = _IN_FLIGHT,
        shard: int = 0,
        shards: int = 1,
        source: tuple[str, EventStreamer, RecordStore] | None = None,
    ) -> None:
        self._rt = rt
        self._topic = topic
        self._consumer = consumer
        self._marker = marker_topic(rt.name)
        # The workflow whose runs are picked up, where its events and records are: another
        # workflow's, for a connection (``Builder.connect``); this one's otherwise.
        self._workflow, self._streamer, self._store = source or (rt.name, rt.streamer, rt.store)
        self._filter = RecordFilter(statuses=tuple(statuses), run_states=tuple(run_states))
        self._shard = shard
        self._shards = shards

    async def wrap(self, receiver: EventReceiver) -> EventReceiver:
        """``receiver`` itself if this consumer has caught up before, else one that catches up
        first. Call it after ``receiver`` is open, so that nothing falls between the two."""
        probe = await self._streamer.receiver(self._marker, self._consumer)
        try:
            done = not probe.is_new
        finally:
            await probe.close()
        if done:
            return receiver
        clock = self._rt.clock
        return CatchingUp(receiver, self._events(), self._mark, clock.now(), clock.now)

    async def _events(self) -> AsyncGenerator[Event, None]:
        after: str | None = None
        n = 0
        while True:
            page = await self._store.list(
                self._workflow, limit=_PAGE, filter=self._filter, after=after
            )
            for record in page:
                if self._shards > 1 and shard_of(record.run_id, self._shards) != self._shard:
                    continue
                n += 1
                yield synthetic_event(-n, self._topic, record)
            if len(page) < _PAGE:
                return
            after = page[-1].run_id

    async def _mark(self, caught_up: int) -> None:
        marker = await self._streamer.receiver(self._marker, self._consumer, from_latest=True)
        await marker.close()
        log.info(
            "statestream: consumer %s caught up with %d runs in flight",
            self._consumer,
            caught_up,
            extra=fields(self._rt.name, role=self._consumer),
        )


class CatchingUp:
    """A receiver that returns the catch-up's synthetic events first, then the real ones, and
    marks the catch-up done once all of them have been handled.

    A run found in the store may also have its event on the stream, after the receiver's
    start (its write came just before the catch-up read the store): the same visit twice. The
    version check makes the second one harmless for a step that moved the run, but a step that
    skipped (or a timer function) would run again, so :meth:`accepting` passes over real events
    of visits already handed out (the dispatcher still acknowledges them in order), until the
    stream brings an event newer than the catch-up (at most ``_SEEN`` visits are remembered).
    "Newer" is measured from the end of the store read (``clock()`` once the last page is read):
    a run written after the receiver opened but before the read reached it is in both.
    """

    def __init__(
        self,
        receiver: EventReceiver,
        pending: AsyncGenerator[Event, None],
        mark: Callable[[int], Awaitable[None]],
        since: datetime,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._receiver = receiver
        self._pending: AsyncGenerator[Event, None] | None = pending
        self._mark = mark
        self._since = since
        self._clock = clock
        self._seen: dict[str, str] | None = {}  # run ID -> version of the visits handed out
        self._handed = 0  # synthetic events returned so far
        self._settled = False  # marked, or given up (never mark then)

    @property
    def is_new(self) -> bool:
        return self._receiver.is_new

    async def recv(self, limit: int = 100) -> list[Event]:
        pending = self._pending
        if pending is not None:
            batch = await self._synthetic(pending, limit)
            if batch:
                return batch
            if not self._handed:
                await self._done()  # nothing was in flight
        return await self._receiver.recv(limit)

    async def _synthetic(self, pending: AsyncGenerator[Event, None], limit: int) -> list[Event]:
        batch: list[Event] = []
        seen = self._seen
        while len(batch) < limit:
            try:
                event = await anext(pending)
            except StopAsyncIteration:
                self._pending = None
                if self._clock is not None:  # every page is read: nothing newer is in them
                    self._since = max(self._since, self._clock())
                break
            except BaseException:
                # The store failed or we are stopping: this catch-up never completes here (the
                # process restarts, and the next holder catches up again).
                self._settled = True
                self._pending = None
                await pending.aclose()
                raise
            batch.append(event)
            if seen is not None and len(seen) < _SEEN:
                seen[event.key] = event.headers.get(H_VERSION, "")
        self._handed += len(batch)
        return batch

    def accepting(self, accept: Callable[[Event], bool] | None) -> Callable[[Event], bool]:
        """The dispatcher's ``accept``: ``accept``, and not a visit the catch-up handed out."""

        def fresh(event: Event) -> bool:
            seen = self._seen
            if seen is not None and event.id >= 0:
                if event.created_at > self._since:
                    self._seen = None  # the stream is past the catch-up: stop looking
                else:
                    handed = seen.get(event.key)
                    # (An event without a version, of an outside writer, is never a duplicate.)
                    if handed is not None and handed == event.headers.get(H_VERSION, ""):
                        del seen[event.key]
                        return False  # handled from the store already
            return accept is None or accept(event)

        return fresh

    def through(self) -> EventReceiver | None:
        """The receiver underneath, once this one only passes its events through (the
        catch-up is marked done and the stream is past it), so that the dispatcher can read
        and acknowledge it directly; None before."""
        if self._settled and self._pending is None and self._seen is None:
            return self._receiver
        return None

    async def ack(self, event: Event) -> None:
        if event.id >= 0:  # a synthetic event has no position on the stream
            await self._receiver.ack(event)
        if (
            not self._settled
            and self._pending is None
            and (event.id >= 0 or event.id == -self._handed)
        ):
            await self._done()

    async def _done(self) -> None:
        await self._mark(self._handed)
        self._settled = True

    async def close(self) -> None:
        pending, self._pending = self._pending, None
        try:
            if pending is not None:
                await pending.aclose()
        finally:
            await self._receiver.close()
