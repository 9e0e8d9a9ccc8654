"""The key-ordered event dispatcher that every consumer process runs.

A consumer handles events of different runs concurrently (up to ``concurrency``) and the events of
one run strictly one at a time, in order. The receiver's position is acknowledged only up to the
oldest event whose handling has not finished, so a crash replays at most the unfinished window.
When it stops it lets the events in flight finish and acknowledges; when it stops because its
role is handed over to another worker it also handles the events it holds queued behind them,
so that the next holder starts after everything it received (but an event backing off after an
error: the next holder reads the events after it again, and passes over those whose run moved
past them, see ``Runtime.fresh_record``).

A failing event backs off on its own (only its run's later events wait behind it) and is retried;
the error policy decides when it counts as done (a step's run paused after repeated errors) or is
parked (:mod:`.parking`), after which the position moves past it. Inside a background process
(see :mod:`.lease`) the dispatcher also starts no handler once the role's lease is past its
deadline, measures its lag, and retries the parked events an operator asked for.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from time import monotonic
from typing import Any

from .._core.aio import checkpoint, wait_event
from .._core.protocols import EventReceiver
from .._core.records import Event, ParkedEvent, shard_of
from . import observe
from .lease import HELD, Abandon, Held, LeaseExpired
from .logfields import of_event
from .parking import Parker, ParkEvent, describe_error
from .supervisor import backoff, sleep_unless

__all__ = ["ErrorPolicy", "Handler", "KeyedDispatcher", "Settled"]

log = logging.getLogger("statestream")

Handler = Callable[[Event], Awaitable[None]]
#: Called after a failed attempt; returns True when the event should count as handled, False to
#: retry it after a backoff. Raising :class:`ParkEvent` parks the event; raising anything else
#: (the policy itself failed, say a step's auto-pause) parks it too, when parking is available.
ErrorPolicy = Callable[[Event, BaseException, int], Awaitable[bool]]
#: What a consumer reads once a wrapper around its receiver has done its work (a catch-up):
#: the receiver underneath, and the ``accept`` filter to use from then on.
Settled = tuple[EventReceiver, Callable[[Event], bool] | None]

#: Consecutive failed acknowledgements before the consumer gives up and is restarted.
ACK_ATTEMPTS = 5
#: At most one "lagging" warning per consumer in this many seconds.
LAG_LOG_INTERVAL = 60.0
#: How often a consumer recounts its parked events when it has not parked or retried any.
COUNT_INTERVAL = 60.0


def _cancelling() -> bool:
    """Whether the current task is being cancelled (by the engine), as opposed to user code
    having raised or leaked a CancelledError."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


class _Slot:
    __slots__ = ("done", "event")

    def __init__(self, event: Event, done: bool = False) -> None:
        self.event = event
        self.done = done


class KeyedDispatcher:
    """Feeds events from a receiver to a handler with per-key ordering and bounded concurrency."""

    def __init__(
        self,
        receiver: EventReceiver,
        handle: Handler,
        on_error: ErrorPolicy,
        *,
        concurrency: int,
        shard: int = 0,
        shards: int = 1,
        error_backoff: float = 1.0,
        max_error_backoff: float = 60.0,
        accept: Callable[[Event], bool] | None = None,
        lag_alert: float = 0.0,
        settle: Callable[[], Settled | None] | None = None,
    ) -> None:
        self._receiver = receiver
        self._accept = accept
        #: Asked after each receive until it answers: then the receiver and filter to use.
        self._settle = settle
        #: The observer's scope (None without one): each event taken is reported to it inline in
        #: _run_slot (no wrapping coroutine per event).
        self._scope = observe.current()
        self._lag_alert = lag_alert
        self._handle = handle
        self._on_error = on_error
        self._concurrency = concurrency
        self._window = max(concurrency * 16, 256)
        self._shard = shard
        self._shards = shards
        self._error_backoff = error_backoff
        self._max_error_backoff = max_error_backoff
        self._slots: deque[_Slot] = deque()
        self._busy: dict[str, deque[_Slot]] = {}
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._space = asyncio.Event()
        self._space.set()
        self._progress = asyncio.Event()
        self._done_upto: Event | None = None
        self._acked_upto: Event | None = None
        self._stopping = asyncio.Event()
        self._held: Held | None = None
        #: Set when work was abandoned because the lease passed its deadline: the consumer
        #: then ends (and is restarted under a new lease) instead of keeping a hole in its window.
        self._expired = asyncio.Event()
        self._lag_logged = -math.inf
        self._parked_dirty = True
        self._parked_counted = -math.inf
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set, then let in-flight events finish and acknowledge."""
        # Looked up once: each look-up is a getpid system call under Python 3.11.
        self._loop = asyncio.get_running_loop()
        self._stopping = stopping
        self._held = held = HELD.get()
        stop = asyncio.ensure_future(stopping.wait())
        helpers: list[asyncio.Task[Any]] = [
            asyncio.create_task(self._ack_loop(), name="ack"),
            asyncio.create_task(self._expired.wait(), name="lease deadline"),
        ]
        if held is not None:
            helpers.append(asyncio.create_task(self._housekeeping(held), name="housekeeping"))
        # One task receives for as long as the consumer runs (not one task and one
        # asyncio.wait per batch: with one event at a time that was a fifth of the loop).
        recv: asyncio.Future[None] | None = None
        failure: BaseException | None = None
        try:
            if not stopping.is_set():
                recv = asyncio.ensure_future(self._receive(stopping))
                await asyncio.wait({recv, stop, *helpers}, return_when=asyncio.FIRST_COMPLETED)
                if not recv.done():  # stopping, or a helper ended
                    recv.cancel()
                    await asyncio.gather(recv, return_exceptions=True)
                    _raise_if_ended(helpers)
                else:
                    recv.result()  # the receiver failed: raise it
            while self._tasks:  # (a handover starts the queued events of a run as it goes)
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            stop.cancel()
            for helper in helpers:
                helper.cancel()
            if recv is not None and not recv.done():
                recv.cancel()  # cancelled (the role was lost): don't leave a pending receive
                await asyncio.gather(recv, return_exceptions=True)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*helpers, *self._tasks, return_exceptions=True)
            try:
                await self._ack_now()
            except Exception as exc:
                self._report("acknowledging events", exc)
                if failure is None:
                    raise
                log.error("statestream: acknowledging events failed", exc_info=exc)

    async def _receive(self, stopping: asyncio.Event) -> None:
        """Receive and submit events until stopping (cancelled by :meth:`run` otherwise)."""
        space = self._space
        receiver = self._receiver
        while not stopping.is_set():
            checkpoint()  # a receiver (or its driver) may have swallowed our cancellation
            if not space.is_set():
                await space.wait()
                continue
            limit = min(self._concurrency - self._active, self._window - len(self._slots))
            for event in await receiver.recv(limit):
                self._submit(event)
            if self._settle is not None:
                settled = self._settle()
                if settled is not None:
                    self._settle = None
                    receiver, self._accept = settled
                    self._receiver = receiver

    # ------------------------------------------------------------------ events

    def _submit(self, event: Event) -> None:
        if (self._shards > 1 and shard_of(event.key, self._shards) != self._shard) or (
            self._accept is not None and not self._accept(event)
        ):
            # Another shard's event, or one this consumer ignores: done without a task.
            if self._scope is not None:
                self._scope.skipped(event, "filtered out")
            self._slots.append(_Slot(event, done=True))
            self._advance()
            if len(self._slots) >= self._window:
                self._space.clear()  # other shards' events wait behind a slow one of ours
            return
        slot = _Slot(event)
        self._slots.append(slot)
        self._active += 1
        if self._active >= self._concurrency or len(self._slots) >= self._window:
            self._space.clear()
        queue = self._busy.get(event.key)
        if queue is not None:
            queue.append(slot)
            return
        self._busy[event.key] = deque()
        self._start(slot)

    def _start(self, slot: _Slot) -> None:
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(self._run_slot(slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_slot(self, slot: _Slot) -> None:
        event = slot.event
        held = self._held
        attempt = 0
        scope = self._scope
        work = None if scope is None else scope.taken(event, self._lag_alert)
        while True:
            if held is not None and monotonic() >= held.lease.valid_until:
                self._expired.set()
                return  # start nothing under an expired lease; the next holder gets it
            try:
                if work is None:
                    await self._handle(event)
                else:  # each attempt reported as work, inline (one try, no coroutine layer)
                    assert scope is not None
                    observer = scope.observer
                    token = observer.work_started(work)
                    started = monotonic()
                    try:
                        await self._handle(event)
                    except BaseException as exc:
                        observer.work_finished(work, token, monotonic() - started, exc)
                        raise
                    observer.work_finished(work, token, monotonic() - started, None)
                break
            except LeaseExpired:
                self._expired.set()
                return
            except Abandon:
                return  # stopping: leave it unacknowledged, it is delivered again later
            except asyncio.CancelledError as exc:
                if _cancelling():
                    raise
                error: BaseException = exc  # raised by the handler's own code: an error
            except BaseException as exc:  # user code must not end the consumer
                error = exc
            attempt += 1
            outcome = await self._after_error(event, error, attempt)
            if outcome is None:
                return
            if outcome:
                break
            delay = backoff(attempt, self._error_backoff, self._max_error_backoff)
            if await sleep_unless(self._stopping, delay):
                return  # stopping: leave it unacknowledged, it is delivered again later
        self._finish(slot)

    async def _after_error(self, event: Event, exc: BaseException, attempt: int) -> bool | None:
        """True: the event is done (resolved or parked); False: retry it; None: abandon it."""
        try:
            return await self._on_error(event, exc, attempt)
        except LeaseExpired:
            self._expired.set()
            return None
        except Abandon:
            return None
        except ParkEvent as park:
            return await self._park(event, park.error or exc, attempt, "")
        except asyncio.CancelledError as policy_exc:
            if _cancelling():
                raise
            failed: BaseException = policy_exc
        except Exception as policy_exc:
            failed = policy_exc
        log.error(
            "statestream: handling the error of event %s of run %s failed",
            event.id,
            event.key,
            exc_info=failed,
            extra=of_event(event),
        )
        return await self._park(event, exc, attempt, f"handling the error failed: {failed!r}")

    async def _park(
        self, event: Event, exc: BaseException, attempts: int, note: str
    ) -> bool | None:
        held = self._held
        parker = held.supervisor.parker if held is not None else None
        if held is None or parker is None:
            return False  # nowhere to park it: keep retrying it on its own
        if monotonic() >= held.lease.valid_until:
            self._expired.set()
            return None
        error = describe_error(exc) + (f" ({note})" if note else "")
        role = held.process.role
        try:
            entry = await parker.park(role, event, error, attempts)
        except Exception:
            log.exception(
                "statestream: %s: parking event %s failed; retrying it",
                role,
                event.id,
                extra=of_event(event),
            )
            return False
        held.process.parked += 1
        self._parked_dirty = True
        log.error(
            "statestream: %s gave up on event %s of run %s after %d attempts and parked it "
            "(%s); retry it with Workflow.retry_parked(%r) or statestream runs retry-parked",
            role,
            event.id,
            event.key,
            attempts,
            error,
            entry.id,
            extra=of_event(event),
        )
        return True

    def _finish(self, slot: _Slot) -> None:
        slot.done = True
        self._active -= 1
        key = slot.event.key  # _next_of, inline: once per event
        queue = self._busy[key]
        if queue and (not self._stopping.is_set() or self._handing_over()):
            self._start(queue.popleft())
        else:
            del self._busy[key]
        self._advance()

    def _next_of(self, key: str) -> None:
        """The work on ``key`` finished: start its next queued event, if any."""
        queue = self._busy[key]
        if queue and (not self._stopping.is_set() or self._handing_over()):
            self._start(queue.popleft())
        else:
            del self._busy[key]

    def _handing_over(self) -> bool:
        """Whether the stop is a handover of the role to another worker (not the supervisor
        stopping): the consumer then also handles the events it has queued behind the ones in
        flight (they are in hand, at most ``concurrency`` of them, and a handover has a grace
        of its own), so that it acknowledges all it received and the next holder starts after
        it. A stopping supervisor leaves them to the next start: its grace may be short."""
        held = self._held
        return held is not None and not held.supervisor.stopping.is_set()

    def _advance(self) -> None:
        slots = self._slots
        last: _Slot | None = None
        while slots and slots[0].done:
            last = slots.popleft()
        if last is not None:
            self._done_upto = last.event
            self._progress.set()
        if self._active < self._concurrency and len(slots) < self._window:
            self._space.set()

    # ------------------------------------------------------------------ acknowledging

    async def _ack_loop(self) -> None:
        failures = 0
        while True:
            await self._progress.wait()
            self._progress.clear()
            try:
                await self._ack_now()
            except Exception as exc:
                failures += 1
                self._report("acknowledging events", exc)
                if failures >= ACK_ATTEMPTS:
                    raise  # the receiver looks broken: fail the process, which restarts it
                log.warning(
                    "statestream: acknowledging events failed (%d of %d); will retry",
                    failures,
                    ACK_ATTEMPTS,
                    exc_info=exc,
                )
                await asyncio.sleep(backoff(failures, self._error_backoff, self._max_error_backoff))
                self._progress.set()
            else:
                failures = 0

    async def _ack_now(self) -> None:
        event = self._done_upto
        if event is not None and event is not self._acked_upto:
            held = self._held
            if held is not None and monotonic() >= held.lease.valid_until:
                return  # another process may hold the role and be past us by now
            await self._receiver.ack(event)
            self._acked_upto = event

    def _report(self, what: str, exc: BaseException) -> None:
        if self._held is not None:
            self._held.process.failed(what, exc)

    # ------------------------------------------------------------------ housekeeping

    async def _housekeeping(self, held: Held) -> None:
        """Every few seconds while the role is held: measure the lag, retry parked events."""
        opts = held.process.options
        interval = 5.0 if opts is None else min(5.0, max(0.05, opts.polling_frequency * 10))
        sup = held.supervisor
        failing = False
        while True:
            self._measure_lag(held)
            if sup.parker is not None:
                try:
                    await self._retry_parked(sup.parker, held)
                    failing = False
                except Abandon:
                    pass
                except Exception:
                    if not failing:
                        log.warning(
                            "statestream: %s: checking parked events failed",
                            held.process.role,
                            exc_info=True,
                        )
                    failing = True
            await wait_event(sup.parked_wake, interval)

    def _measure_lag(self, held: Held) -> None:
        clock = held.supervisor.clock
        if clock is None:
            return
        proc = held.process
        lag = 0.0
        if self._slots:
            lag = max(0.0, (clock.now() - self._slots[0].event.created_at).total_seconds())
        proc.lag = lag
        opts = proc.options
        if opts is None or not opts.lag_alert:
            return
        # A consumer with a deliberate lag holds each event that long before handling it.
        lagging = lag > opts.lag_alert + opts.lag
        if lagging:
            now = time.monotonic()
            if not proc.lagging or now - self._lag_logged >= LAG_LOG_INTERVAL:
                self._lag_logged = now
                log.warning(
                    "statestream: %s is lagging: its oldest unfinished event is %.1f s old "
                    "(lag_alert %.1f s)",
                    proc.role,
                    lag,
                    opts.lag_alert,
                )
        elif proc.lagging:
            log.info("statestream: %s caught up (lag %.1f s)", proc.role, lag)
        proc.lagging = lagging

    async def _retry_parked(self, parker: Parker, held: Held) -> None:
        proc = held.process
        requested = await parker.requested(proc.role)  # usually an empty, indexed query
        for entry in requested:
            if self._stopping.is_set() or monotonic() >= held.lease.valid_until:
                return
            key = entry.event.key
            if key in self._busy:
                continue  # an event of that run is in flight: at the next check
            self._busy[key] = deque()
            try:
                await self._retry_one(parker, proc.role, entry)
            finally:
                self._next_of(key)
        # The count (for process_info) costs a longer list: only when it may have changed.
        now = time.monotonic()
        if requested or self._parked_dirty or now - self._parked_counted >= COUNT_INTERVAL:
            self._parked_dirty = False
            self._parked_counted = now
            proc.parked = await parker.count(proc.role)

    async def _retry_one(self, parker: Parker, role: str, entry: ParkedEvent) -> None:
        try:
            await self._handle(entry.event)
        except Abandon:
            return  # stopping, or the lease expired: still flagged, retried by the next holder
        except asyncio.CancelledError as exc:
            if _cancelling():
                raise
            error: BaseException = exc
        except BaseException as exc:
            error = exc
        else:
            await parker.done(entry)
            log.info(
                "statestream: %s: retried parked event %s; it succeeded",
                role,
                entry.id,
                extra=of_event(entry.event),
            )
            return
        await parker.park_again(entry, describe_error(error))
        log.warning(
            "statestream: %s: retried parked event %s; it failed again and stays parked: %r",
            role,
            entry.id,
            error,
            extra=of_event(entry.event),
        )


def _raise_if_ended(helpers: Iterable[asyncio.Task[Any]]) -> None:
    """A helper task ended: the lease expired under some work, or acknowledging (or the
    housekeeping) failed; either ends the consumer, and the Supervisor restarts it."""
    for task in helpers:
        if task.done():
            if task.get_name() == "lease deadline":
                raise LeaseExpired("work was abandoned: the role's lease passed its deadline")
            exc = None if task.cancelled() else task.exception()
            raise exc or RuntimeError(f"consumer helper {task.get_name()} ended")
