"""Background processes: role supervision and the key-ordered event dispatcher.

Every background process (a step shard, a hook, the outbox relay) runs under a role: it works
only while its lease is held, stops at once when the lease is lost, and backs off after errors.

A consumer handles events of different runs concurrently (up to ``concurrency``) and the events of
one run strictly one at a time, in order. The receiver's position is acknowledged only up to the
oldest event whose handling has not finished, so a crash replays at most the unfinished window.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .._core.protocols import EventReceiver, Lease, RoleScheduler
from .._core.records import Event, shard_of
from . import observe

__all__ = [
    "Abandon",
    "KeyedDispatcher",
    "Process",
    "ProcessState",
    "Supervisor",
    "backoff",
    "shard_of",
]

log = logging.getLogger("statestream")


class Abandon(Exception):
    """Raised by a handler to give up on an event without acknowledging it (we are stopping)."""


class ProcessState(enum.IntEnum):
    """What a background process is doing, as reported by ``Workflow.states()``."""

    UNKNOWN = 0
    SHUTDOWN = 1
    RUNNING = 2
    IDLE = 3


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: ``base * 2**(attempt-1)``, capped, times 0.5 to 1."""
    delay = min(cap, base * (2.0 ** min(attempt - 1, 32)))
    return delay * random.uniform(0.5, 1.0)


async def sleep_unless(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep, returning early with ``True`` if ``stopping`` is set first."""
    if stopping.is_set():
        return True
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        return False
    return True


Body = Callable[[asyncio.Event], Awaitable[None]]


@dataclass(eq=False)
class Process:
    """One named background process and the role that guards it."""

    name: str
    role: str
    body: Body
    error_backoff: float = 1.0
    max_error_backoff: float = 60.0
    state: ProcessState = ProcessState.UNKNOWN
    errors: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Supervisor:
    """Runs processes under their roles until stopped."""

    seam: observe.Seam | None = None  # set by the runtime when an observer is configured

    def __init__(self, scheduler: RoleScheduler, workflow_name: str) -> None:
        self._scheduler = scheduler
        self._workflow = workflow_name
        self.stopping = asyncio.Event()
        self.processes: list[Process] = []
        self._cleanup: set[asyncio.Task[None]] = set()

    def start(self, processes: list[Process]) -> None:
        self.stopping = asyncio.Event()
        self.processes = []
        for proc in processes:
            self.add(proc)

    def add(self, proc: Process) -> None:
        """Start supervising one more process (for example a schedule added while running)."""
        self.processes.append(proc)
        proc.state = ProcessState.IDLE
        proc.task = asyncio.create_task(self._supervise(proc), name=proc.role)

    async def stop(self, grace: float) -> None:
        """Ask every process to finish its in-flight work, wait up to ``grace``, then cancel."""
        self.stopping.set()
        tasks = [p.task for p in self.processes if p.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for proc in self.processes:
            proc.state = ProcessState.SHUTDOWN

    async def _acquire(self, role: str) -> Lease | None:
        """Wait for the role, or for stop (then None). Never leaves an acquire behind: one that
        is granted after we gave up (stopped, or cancelled ourselves) is released at once."""
        acquire = asyncio.ensure_future(self._scheduler.acquire(role))
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._abandon(acquire)
            raise
        finally:
            stop.cancel()
        if acquire.done():
            return acquire.result()
        self._abandon(acquire)
        return None

    def _abandon(self, acquire: asyncio.Future[Lease]) -> None:
        def release_if_granted(done: asyncio.Future[Lease]) -> None:
            if not done.cancelled() and done.exception() is None:
                task = asyncio.ensure_future(done.result().release())
                self._cleanup.add(task)
                task.add_done_callback(self._cleanup.discard)

        acquire.add_done_callback(release_if_granted)
        acquire.cancel()

    async def _supervise(self, proc: Process) -> None:
        attempt = 0
        if self.seam is not None:
            self.seam.enter(proc.name)
        try:
            while not self.stopping.is_set():
                proc.state = ProcessState.IDLE
                try:
                    lease = await self._acquire(proc.role)
                except Exception:
                    log.exception("statestream: acquiring role %s failed", proc.role)
                    attempt += 1
                    await sleep_unless(
                        self.stopping, backoff(attempt, proc.error_backoff, proc.max_error_backoff)
                    )
                    continue
                if lease is None:
                    break
                proc.state = ProcessState.RUNNING
                if self.seam is not None:
                    self.seam.lease_changed(proc.role, True)
                try:
                    await self._hold(proc, lease)
                    attempt = 0
                except Exception as exc:
                    proc.errors += 1
                    attempt += 1
                    log.exception("statestream: process %s of %s failed", proc.name, self._workflow)
                    if self.seam is not None:
                        self.seam.process_failed(proc.name, exc)
                    await sleep_unless(
                        self.stopping, backoff(attempt, proc.error_backoff, proc.max_error_backoff)
                    )
                finally:
                    await asyncio.shield(lease.release())
                    if self.seam is not None:
                        self.seam.lease_changed(proc.role, False)
        finally:
            proc.state = ProcessState.SHUTDOWN

    async def _hold(self, proc: Process, lease: Lease) -> None:
        body = asyncio.ensure_future(proc.body(self.stopping))
        lost = asyncio.ensure_future(lease.lost())
        try:
            await asyncio.wait({body, lost}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            body.cancel()
            await asyncio.gather(body, return_exceptions=True)
            raise
        finally:
            lost.cancel()
        if body.done():
            body.result()
            return
        log.warning("statestream: lost role %s; stopping its work", proc.role)
        body.cancel()
        await asyncio.gather(body, return_exceptions=True)


class _Slot:
    __slots__ = ("done", "event")

    def __init__(self, event: Event, done: bool = False) -> None:
        self.event = event
        self.done = done


Handler = Callable[[Event], Awaitable[None]]
#: Called after a failed attempt; returns True when the event should count as handled.
ErrorPolicy = Callable[[Event, BaseException, int], Awaitable[bool]]


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
    ) -> None:
        self._receiver = receiver
        self._accept = accept
        self._scope = scope = observe.current()
        self._handle = handle if scope is None else scope.wrap(handle, lag_alert)
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

    async def run(self, stopping: asyncio.Event) -> None:
        """Consume until ``stopping`` is set, then let in-flight events finish and acknowledge."""
        self._stopping = stopping
        stop = asyncio.ensure_future(stopping.wait())
        acker = asyncio.create_task(self._ack_loop())
        recv: asyncio.Future[list[Event]] | None = None
        try:
            while not stopping.is_set():
                if not self._space.is_set():
                    space = asyncio.ensure_future(self._space.wait())
                    await asyncio.wait({space, stop}, return_when=asyncio.FIRST_COMPLETED)
                    space.cancel()
                    continue
                limit = min(self._concurrency - self._active, self._window - len(self._slots))
                recv = asyncio.ensure_future(self._receiver.recv(limit))
                await asyncio.wait({recv, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not recv.done():
                    recv.cancel()
                    await asyncio.gather(recv, return_exceptions=True)
                    break
                for event in recv.result():
                    self._submit(event)
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
        finally:
            stop.cancel()
            acker.cancel()
            if recv is not None and not recv.done():
                recv.cancel()  # cancelled (the role was lost): don't leave a pending receive
                await asyncio.gather(recv, return_exceptions=True)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(acker, *self._tasks, return_exceptions=True)
            await self._ack_now()

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
        task = asyncio.get_running_loop().create_task(self._run_slot(slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_slot(self, slot: _Slot) -> None:
        event = slot.event
        attempt = 0
        while True:
            try:
                await self._handle(event)
                break
            except asyncio.CancelledError:
                raise
            except Abandon:
                return  # stopping: leave it unacknowledged, it is delivered again later
            except Exception as exc:
                attempt += 1
                try:
                    resolved = await self._on_error(event, exc, attempt)
                except Exception:
                    log.exception("statestream: error handling for event %s failed", event.id)
                    resolved = False
                if resolved:
                    break
                delay = backoff(attempt, self._error_backoff, self._max_error_backoff)
                if await sleep_unless(self._stopping, delay):
                    return  # stopping: leave it unacknowledged, it is delivered again later
        self._finish(slot)

    def _finish(self, slot: _Slot) -> None:
        slot.done = True
        self._active -= 1
        key = slot.event.key
        queue = self._busy[key]
        if queue and not self._stopping.is_set():
            self._start(queue.popleft())
        else:
            del self._busy[key]
        self._advance()

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

    async def _ack_loop(self) -> None:
        while True:
            await self._progress.wait()
            self._progress.clear()
            try:
                await self._ack_now()
            except Exception:
                log.exception("statestream: acknowledging events failed; will retry")
                await asyncio.sleep(self._error_backoff)
                self._progress.set()

    async def _ack_now(self) -> None:
        event = self._done_upto
        if event is not None and event is not self._acked_upto:
            await self._receiver.ack(event)
            self._acked_upto = event
