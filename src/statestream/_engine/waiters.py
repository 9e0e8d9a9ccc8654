"""Process-wide waiting for runs (``Workflow.wait_for``): woken by events, not by polling.

One :class:`Waiters` per workflow in a process holds every pending ``wait_for`` call in a dict
keyed by run ID. Two sources wake them:

* this process's writes (:meth:`Waiters.written`, from the runtime's write path), which hand the
  written record over, so the waiter returns without reading the store again;
* other processes' writes, through one *ephemeral* receiver per topic that some waiter needs
  (the status topic of the awaited status, and the run-state-change topic, where completions,
  pauses and cancellations go). An event of a run with waiters wakes them, and they read the
  record once.

A waiter is woken only by a version newer than the one it last saw that is at its status or
finished: the other writes of its run cost a dict lookup and a comparison. Polling remains as a
slow fallback (:data:`FALLBACK_POLL`) for writes whose events never reach the stream (an outbox
nobody relays) and as the only mechanism while a topic cannot be subscribed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

from .._core.aio import checkpoint
from .._core.ids import new_id
from .._core.protocols import EventReceiver, EventStreamer
from .._core.records import Event, Header, Record, run_state_change_topic, status_topic
from .._core.runstate import RunState
from .logfields import fields

__all__ = ["FALLBACK_POLL", "Waiter", "Waiters"]

log = logging.getLogger("statestream")

#: Seconds between two reads of the store by a waiter whose topics are subscribed.
FALLBACK_POLL = 5.0
#: Events read per receive by a subscription.
_BATCH = 500
#: Delay before a failed subscription is opened again.
_RETRY = 1.0

_FINISHED = frozenset(str(int(state)) for state in RunState if state.finished)


async def _all_set(events: list[asyncio.Event]) -> None:
    for event in events:
        await event.wait()


def _expire(future: asyncio.Future[Record | None]) -> None:
    if not future.done():
        future.set_result(None)


class Waiter:
    """One pending ``wait_for`` call: the run, the status it waits for, what it has seen."""

    __slots__ = ("future", "reached", "run_id", "since", "target", "timer", "topics", "version")

    def __init__(self, run_id: str, target: int, topics: tuple[str, ...]) -> None:
        self.run_id = run_id
        self.target = target
        self.topics = topics
        #: Resolved with a record this process wrote, or with None to make the waiter read.
        self.future: asyncio.Future[Record | None] = asyncio.get_running_loop().create_future()
        #: The newest version of the run this waiter has read or been handed.
        self.version = 0
        #: The newest version an event showed at ``target`` (0: none).
        self.reached = 0
        #: When it started waiting on the sweep (``time.monotonic()``).
        self.since = 0.0
        #: Its own timer, when it must read again sooner than the sweep would wake it.
        self.timer: asyncio.TimerHandle | None = None

    def rearm(self) -> None:
        """A fresh future, before reading the store: a wake during the read is not lost."""
        self.future = asyncio.get_running_loop().create_future()


class _Subscription:
    __slots__ = ("healthy", "interval", "ready", "task", "topic", "users")

    def __init__(self, topic: str, interval: float) -> None:
        self.topic = topic
        self.interval = interval
        self.users = 0
        self.ready = asyncio.Event()
        self.healthy = False
        self.task: asyncio.Task[None] | None = None


class Waiters:
    """The pending ``wait_for`` calls of one workflow in this process, and their subscriptions.

    Subscriptions are opened when a waiter first needs their topic and closed when the last
    waiter that needs them is gone, unless :attr:`linger` is set (the workflow is started): then
    they stay open until :meth:`close_idle`, so that one waiter after another does not open and
    close a receiver each time.
    """

    def __init__(self, streamer: EventStreamer, workflow_name: str, terminal: frozenset[int]):
        self._streamer = streamer
        self._terminal = terminal
        self._state_topic = run_state_change_topic(workflow_name)
        self._workflow = workflow_name
        self._name = f"{workflow_name}-wait-for-{new_id()}"
        #: run ID -> its waiters. Read (only for truthiness) on every write of this process.
        self.by_run: dict[str, list[Waiter]] = {}
        self._subs: dict[str, _Subscription] = {}
        self._topics: dict[int, tuple[str, ...]] = {}
        self.linger = False
        self._warned = False
        self._sweep: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ waiters

    def add(self, run_id: str, target: int) -> Waiter:
        topics = self._topics.get(target)
        if topics is None:
            if target in self._terminal:
                topics = (self._state_topic,)  # a completion is a run-state change
            else:
                topics = (status_topic(self._workflow, target), self._state_topic)
            self._topics[target] = topics
        waiter = Waiter(run_id, target, topics)
        self.by_run.setdefault(run_id, []).append(waiter)
        return waiter

    def remove(self, waiter: Waiter) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        waiters = self.by_run.get(waiter.run_id)
        if waiters is not None:
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters:
                del self.by_run[waiter.run_id]
                if not self.by_run and self._sweep is not None:
                    self._sweep.cancel()
                    self._sweep = None

    def arm(self, waiter: Waiter, seconds: float) -> asyncio.Future[Record | None]:
        """The future to await: woken by a write or an event, or after about ``seconds``.

        Waits shorter than :data:`FALLBACK_POLL` get a timer of their own; longer ones are
        woken by one sweep of every waiter instead, within ``FALLBACK_POLL * 1.25`` (or
        ``seconds``, if longer), so that thousands of waiters cost no timers.
        """
        future = waiter.future
        if future.done():
            return future
        loop = asyncio.get_running_loop()
        if seconds < FALLBACK_POLL:
            waiter.timer = loop.call_later(seconds, _expire, future)
        else:
            waiter.since = loop.time() + seconds - FALLBACK_POLL
            if self._sweep is None:
                self._sweep = loop.call_later(FALLBACK_POLL / 4, self._swept)
        return future

    def disarm(self, waiter: Waiter) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
            waiter.timer = None

    def _swept(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() - FALLBACK_POLL
        for waiters in self.by_run.values():
            for w in waiters:
                if w.timer is None and w.since <= due and not w.future.done():
                    w.future.set_result(None)
        self._sweep = loop.call_later(FALLBACK_POLL / 4, self._swept) if self.by_run else None

    def written(self, record: Record) -> None:
        """This process wrote ``record``: hand it to the waiters it satisfies."""
        waiters = self.by_run.get(record.run_id)
        if waiters is None:
            return
        finished = record.run_state.finished
        for w in waiters:
            if (
                (record.status == w.target or finished)
                and record.version > w.version
                and not w.future.done()
            ):
                w.future.set_result(record)

    def _delivered(self, events: Sequence[Event]) -> None:
        by_run = self.by_run
        if not by_run:
            return
        for event in events:
            waiters = by_run.get(event.key)
            if waiters is None:
                continue
            headers = event.headers
            try:
                version = int(headers.get(Header.RECORD_VERSION, 0))
            except ValueError:
                version = 0
            finished = headers.get(Header.RUN_STATE) in _FINISHED
            for w in waiters:
                if version > w.version and (event.type == w.target or finished):
                    if event.type == w.target:
                        w.reached = max(w.reached, version)
                    if not w.future.done():
                        w.future.set_result(None)

    def _wake_topic(self, topic: str) -> None:
        """Events of ``topic`` may have been missed: every waiter that needs it reads again."""
        for waiters in self.by_run.values():
            for w in waiters:
                if topic in w.topics and not w.future.done():
                    w.future.set_result(None)

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, waiter: Waiter, interval: float) -> Awaitable[None] | None:
        """Make sure the topics ``waiter`` needs are received.

        A topic nobody receives yet is opened with ``interval`` as its poll interval. Returns
        what to await until every receiver is open, or None when they all are. The caller must
        :meth:`unsubscribe` the waiter when it is done.
        """
        unready: list[asyncio.Event] = []
        for topic in waiter.topics:
            sub = self._subs.get(topic)
            if sub is None:
                sub = self._subs[topic] = _Subscription(topic, interval)
            if sub.task is None:
                sub.task = asyncio.create_task(self._run(sub), name=f"{self._name}:{topic}")
            sub.users += 1
            if not sub.ready.is_set():
                unready.append(sub.ready)
        if not unready:
            return None
        return _all_set(unready)

    def poll_every(self, waiter: Waiter, interval: float) -> float:
        """How long ``waiter`` may wait before it reads the store again: :data:`FALLBACK_POLL`
        while every topic it needs is received at least as often as ``interval``, else
        ``interval``."""
        subs = self._subs
        for topic in waiter.topics:
            sub = subs.get(topic)
            if sub is None or not sub.healthy or sub.interval > interval:
                return interval
        return max(FALLBACK_POLL, interval)

    def unsubscribe(self, waiter: Waiter) -> None:
        for topic in waiter.topics:
            sub = self._subs.get(topic)
            if sub is None:
                continue
            sub.users -= 1
            if sub.users <= 0 and not self.linger:
                self._close(sub)

    def _close(self, sub: _Subscription) -> None:
        del self._subs[sub.topic]
        if sub.task is not None:
            sub.task.cancel()

    async def close_idle(self) -> None:
        """Stop lingering: close the subscriptions no waiter needs now."""
        self.linger = False
        idle = [sub for sub in self._subs.values() if sub.users <= 0]
        for sub in idle:
            self._close(sub)
        tasks: list[Any] = [sub.task for sub in idle if sub.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, sub: _Subscription) -> None:
        reopened = False
        while True:
            try:
                receiver: EventReceiver = await self._streamer.receiver(
                    sub.topic, self._name, poll_interval=sub.interval, ephemeral=True
                )
            except asyncio.CancelledError:
                sub.ready.set()
                raise
            except Exception as exc:
                self._failed(sub, exc)
                await asyncio.sleep(_RETRY)
                continue
            try:
                sub.healthy = True
                sub.ready.set()
                if reopened:
                    self._wake_topic(sub.topic)
                reopened = True
                while True:
                    self._delivered(await receiver.recv(_BATCH))
                    checkpoint()  # the receiver (or its driver) may have swallowed our cancel
            except Exception as exc:
                self._failed(sub, exc)
            finally:
                with contextlib.suppress(Exception):
                    await receiver.close()
            await asyncio.sleep(_RETRY)

    def _failed(self, sub: _Subscription, exc: BaseException) -> None:
        sub.healthy = False
        sub.ready.set()  # its waiters fall back to polling the store
        self._wake_topic(sub.topic)
        if not self._warned:
            self._warned = True
            log.warning(
                "statestream: wait_for cannot receive %s (%r); waiters poll the store instead "
                "until it can (logged once)",
                sub.topic,
                exc,
                extra=fields(self._workflow),
            )
