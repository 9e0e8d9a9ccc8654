"""Role supervision: every background process works only while it holds its role.

A process (a step shard, a hook, the outbox relay...) waits for its role, runs its body while
the lease is held, and stops the body at once when the lease is lost or its local deadline
(:attr:`~statestream.Lease.valid_until`) passes. The body runs in a context that names the
holding (:mod:`.lease`), so that nothing started inside it writes after the deadline. Every
failure (the body's, acquiring or releasing the role) is logged, counted in the process's report
and followed by a backoff and a restart; :meth:`Process.report` never says running for a task
that has ended.

With a scheduler that implements :class:`~statestream.RoleMembers` the instances of a workflow
divide its roles (:mod:`.share`): a process tries for its role when the deal gives the role to
this instance (or this instance is below its share and nobody else took the role), and hands
its role over (finishes the event in hand, then releases the lease) when the deal gives it to
another.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import enum
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._core.aio import wait_event
from .._core.protocols import Clock, Lease, RoleMembers, RoleScheduler
from ..errors import AdapterConnectionError
from . import observe
from .lease import HELD, Held, LeaseExpired
from .logfields import fields
from .share import Kind, Share, kind_of
from .usercode import SYNC_EXECUTOR

if TYPE_CHECKING:
    from .._definition.options import ProcessOptions
    from .parking import Parker

__all__ = [
    "Body",
    "Process",
    "ProcessInfo",
    "ProcessState",
    "Supervisor",
    "backoff",
    "sleep_unless",
]

log = logging.getLogger("statestream")

#: How long a process handing its role over to another worker may take to finish the events in
#: hand before they are cancelled (and handled again by the next holder).
HANDOVER_GRACE = 30.0
#: A role lost within this many seconds of a loss logged at WARNING is logged at INFO (roles
#: are lost together: an outage, a stalled event loop).
LOSS_BURST = 5.0


class ProcessState(enum.IntEnum):
    """What a background process is doing, as reported by ``Workflow.states()``.

    The first four are luno/workflow's; ``LAGGING`` and ``ERROR`` refine ``RUNNING``.
    """

    UNKNOWN = 0
    SHUTDOWN = 1
    RUNNING = 2
    IDLE = 3
    """Waiting for its role (another process holds it, or this one already holds its share of
    the workflow's roles), or not started yet."""
    LAGGING = 4
    """Running, but the oldest event it has not finished is older than its ``lag_alert``."""
    ERROR = 5
    """Its work failed (or its task ended unexpectedly); it restarts after a backoff."""


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A background process's report, from ``Workflow.process_info()``.

    Attributes:
        state: as in ``Workflow.states()``.
        role: the role it runs under.
        lag: seconds between now (the workflow's clock) and the creation of the oldest event it
            has received and not finished, as last measured (every few seconds); 0 when it is
            caught up or is not an event consumer.
        errors: failures of the process itself since it started (its body, acquiring or
            releasing its role, acknowledging events); errors of runs are not counted here.
        last_error: the last of those failures, ``""`` if none.
        parked: events of this consumer parked in the store (counted up to 1000, after it parks
            or retries one and every minute while it holds its role); see ``Workflow.parked()``.
        skipped: events it passed over as not its own since it started: messages on the topic
            of another workflow's connection (``Builder.connect``) that are not that workflow's
            or do not decode, and messages a connector rejected (``EventRejected``, or actions
            that cannot be applied). Runs left alone because they moved on are not counted.
    """

    state: ProcessState
    role: str
    lag: float
    errors: int
    last_error: str
    parked: int
    skipped: int = 0


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: ``base * 2**(attempt-1)``, capped, times 0.5 to 1."""
    delay = min(cap, base * (2.0 ** min(attempt - 1, 32)))
    return delay * random.uniform(0.5, 1.0)


async def sleep_unless(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep, returning early with ``True`` if ``stopping`` is set first."""
    if stopping.is_set():
        return True
    return await wait_event(stopping, seconds)


Body = Callable[[asyncio.Event], Awaitable[None]]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(eq=False)
class Process:
    """One named background process and the role that guards it."""

    name: str
    role: str
    body: Body
    error_backoff: float = 1.0
    max_error_backoff: float = 60.0
    #: The process's options (lag alert, parking, polling), when it has any.
    options: ProcessOptions | None = None
    state: ProcessState = ProcessState.UNKNOWN
    errors: int = 0
    last_error: str = ""
    #: Set by the consumer running in the process (see ProcessInfo).
    lag: float = 0.0
    lagging: bool = False
    parked: int = 0
    skipped: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def failed(self, what: str, exc: BaseException) -> None:
        """Count and remember a failure of the process itself."""
        self.errors += 1
        self.last_error = f"{what}: {_describe(exc)}"[:1000]

    def report(self) -> ProcessState:
        """The state to report: never RUNNING for a task that has ended."""
        state = self.state
        task = self.task
        if task is not None and task.done() and state is not ProcessState.SHUTDOWN:
            return ProcessState.ERROR
        if state is ProcessState.RUNNING and self.lagging:
            return ProcessState.LAGGING
        return state

    def info(self) -> ProcessInfo:
        return ProcessInfo(
            self.report(),
            self.role,
            self.lag,
            self.errors,
            self.last_error,
            self.parked,
            self.skipped,
        )


class Supervisor:
    """Runs processes under their roles until stopped.

    Args:
        scheduler: where roles are acquired.
        workflow_name: for messages.
        clock: the workflow's clock (consumers measure their lag on it).
        parker: where consumers park events they give up on (none: they retry for ever).
        executor: the pool plain ``def`` user functions run on inside the processes.
    """

    seam: observe.Seam | None = None  # set by the runtime when an observer is configured

    def __init__(
        self,
        scheduler: RoleScheduler,
        workflow_name: str,
        *,
        clock: Clock | None = None,
        parker: Parker | None = None,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._workflow = workflow_name
        self.clock = clock
        self.parker = parker
        self.executor = executor
        self.stopping = asyncio.Event()
        self.processes: list[Process] = []
        #: Set (and replaced) when an operator asks for parked events to be retried.
        self.parked_wake = asyncio.Event()
        self._cleanup: set[asyncio.Future[None]] = set()
        #: The roles whose acquiring last failed because the backend was unreachable (one
        #: WARNING for the first of an outage, not one traceback per role and attempt).
        self._unreachable: set[str] = set()
        #: When a lost role (key: lost by its deadline) or a failed acquire ("acquire") was
        #: last logged at WARNING.
        self._lost_logged: dict[bool | str, float] = {}
        #: This instance's side of the division of the roles (None: the scheduler cannot).
        self.share: Share | None = None

    def start(self, processes: list[Process]) -> None:
        self.stopping = asyncio.Event()
        self.parked_wake = asyncio.Event()
        self.processes = []
        self.share = None
        scheduler = self._scheduler
        if isinstance(scheduler, RoleMembers):
            ttl = scheduler.member_ttl
            if ttl is not None:
                self.share = Share(scheduler, ttl, self._workflow, self._role_kinds)
                self.share.start(self.stopping)
        for proc in processes:
            self.add(proc)

    def _role_kinds(self) -> dict[str, Kind]:
        return {proc.role: kind_of(proc.name, proc.role) for proc in self.processes}

    def add(self, proc: Process) -> None:
        """Start supervising one more process (for example a schedule added while running)."""
        self.processes.append(proc)
        proc.state = ProcessState.IDLE
        self._launch(proc)

    def wake_parked(self) -> None:
        """Make every consumer of this process look for parked events to retry now."""
        wake, self.parked_wake = self.parked_wake, asyncio.Event()
        wake.set()

    def _launch(self, proc: Process) -> None:
        proc.task = task = asyncio.create_task(self._supervise(proc), name=proc.role)
        task.add_done_callback(lambda done: self._ended(proc, done))

    def _ended(self, proc: Process, task: asyncio.Task[None]) -> None:
        """The supervising task ended: fine when stopping; otherwise report it and restart."""
        if task.cancelled() or self.stopping.is_set() or proc.task is not task:
            return
        exc = task.exception()
        if exc is None:
            return
        log.error(
            "statestream: supervisor of process %s of %s died; restarting it",
            proc.name,
            self._workflow,
            exc_info=exc,
            extra=fields(self._workflow, role=proc.role),
        )
        proc.failed("supervisor", exc)
        proc.state = ProcessState.ERROR

        async def restart() -> None:
            delay = backoff(1, proc.error_backoff, proc.max_error_backoff)
            if not await sleep_unless(self.stopping, delay) and proc.task is task:
                self._launch(proc)

        restarting = asyncio.ensure_future(restart())
        self._cleanup.add(restarting)
        restarting.add_done_callback(self._cleanup.discard)

    async def stop(self, grace: float) -> None:
        """Ask every process to finish its in-flight work, wait up to ``grace``, then cancel."""
        self.stopping.set()
        tasks = [p.task for p in self.processes if p.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for proc, result in zip([p for p in self.processes if p.task], results, strict=True):
                if isinstance(result, BaseException) and not isinstance(
                    result, asyncio.CancelledError
                ):
                    log.error(
                        "statestream: process %s of %s failed while stopping",
                        proc.name,
                        self._workflow,
                        exc_info=result,
                        extra=fields(self._workflow, role=proc.role),
                    )
                    proc.failed("stopping", result)
        for proc in self.processes:
            proc.state = ProcessState.SHUTDOWN
        if self.share is not None:
            await self.share.close()  # after the releases: the others take the roles at once

    async def _acquire(self, role: str) -> Lease | None:
        """Wait for the role, or for stop or this instance no longer wanting it (then None).
        Never leaves an acquire behind: one that is granted after we gave up (stopped, not
        wanted, or cancelled ourselves) is released at once."""
        acquire = asyncio.ensure_future(self._scheduler.acquire(role))
        stop = asyncio.ensure_future(self.stopping.wait())
        waits: set[asyncio.Future[Any]] = {acquire, stop}
        if self.share is not None:
            waits.add(asyncio.ensure_future(self.share.wait_unwanted(role)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._abandon(acquire)
            raise
        finally:
            for wait in waits - {acquire}:
                wait.cancel()
        if acquire.done():
            return acquire.result()
        self._abandon(acquire)
        return None

    def _abandon(self, acquire: asyncio.Future[Lease]) -> None:
        def release_if_granted(done: asyncio.Future[Lease]) -> None:
            if not done.cancelled() and done.exception() is None:
                self._finish_release(None, asyncio.ensure_future(done.result().release()))

        acquire.add_done_callback(release_if_granted)
        acquire.cancel()

    def _finish_release(self, proc: Process | None, release: asyncio.Future[None]) -> None:
        """Keep a release running in the background, and report it if it fails."""

        def done(task: asyncio.Future[None]) -> None:
            self._cleanup.discard(task)
            if task.cancelled() or task.exception() is None:
                return
            exc = task.exception()
            assert exc is not None
            log.error(
                "statestream: releasing a role of %s failed",
                self._workflow,
                exc_info=exc,
                extra=fields(self._workflow),
            )
            if proc is not None:
                proc.failed("releasing the role", exc)

        self._cleanup.add(release)
        release.add_done_callback(done)

    async def _release(self, proc: Process, lease: Lease) -> bool:
        """Release the lease (even if we are cancelled meanwhile); False if it failed."""
        task = asyncio.ensure_future(lease.release())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                self._finish_release(proc, task)
            raise
        except Exception as exc:
            log.error(
                "statestream: releasing role %s of %s failed",
                proc.role,
                self._workflow,
                exc_info=exc,
                extra=fields(self._workflow, role=proc.role),
            )
            proc.failed("releasing the role", exc)
            return False
        return True

    async def _supervise(self, proc: Process) -> None:
        attempt = 0
        if self.seam is not None:
            self.seam.enter(proc.name)
        try:
            while not self.stopping.is_set():
                proc.state = ProcessState.IDLE
                share = self.share
                if share is not None and not await share.wait_wanted(proc.role, self.stopping):
                    break
                try:
                    lease = await self._acquire(proc.role)
                except Exception as exc:
                    self._acquire_failed(proc.role, exc)
                    proc.failed("acquiring the role", exc)
                    proc.state = ProcessState.ERROR
                    attempt += 1
                    await sleep_unless(
                        self.stopping, backoff(attempt, proc.error_backoff, proc.max_error_backoff)
                    )
                    continue
                if self._unreachable:
                    self._acquire_works(proc.role)
                if lease is None:
                    continue  # stopping, or this instance no longer wants the role
                if share is not None and not share.wants(proc.role):
                    # Granted together with others that filled the share (or the deal moved
                    # it meanwhile): give it back before doing any work under it.
                    await self._release(proc, lease)
                    continue
                proc.state = ProcessState.RUNNING
                if self.seam is not None:
                    self.seam.lease_changed(proc.role, True)
                ok = True
                expired = False
                handover = asyncio.Event()
                if share is not None:
                    share.took(proc.role, handover.set)
                try:
                    expired = await self._hold(proc, lease, handover)
                except LeaseExpired as exc:
                    # Not a failure of the process: give the role up and wait for it again.
                    log.warning(
                        "statestream: %s: %s; acquiring the role again",
                        proc.role,
                        exc,
                        extra=fields(self._workflow, role=proc.role),
                    )
                    expired = True
                except Exception as exc:
                    ok = False
                    log.exception(
                        "statestream: process %s of %s failed",
                        proc.name,
                        self._workflow,
                        extra=fields(self._workflow, role=proc.role),
                    )
                    proc.failed("process", exc)
                    proc.state = ProcessState.ERROR  # not RUNNING while it releases the role
                    if self.seam is not None:
                        self.seam.process_failed(proc.name, exc)
                finally:
                    proc.lag, proc.lagging = 0.0, False
                    if not await self._release(proc, lease):
                        ok = False
                    if share is not None:
                        share.gave_up(proc.role)
                    if self.seam is not None:
                        self.seam.lease_changed(proc.role, False)
                if ok:
                    attempt = 0
                    if expired:  # a short pause, so that leases born expired cannot spin
                        await sleep_unless(
                            self.stopping, backoff(1, proc.error_backoff, proc.max_error_backoff)
                        )
                    continue
                attempt += 1
                proc.state = ProcessState.ERROR
                await sleep_unless(
                    self.stopping, backoff(attempt, proc.error_backoff, proc.max_error_backoff)
                )
        finally:
            if self.stopping.is_set() or proc.state is not ProcessState.ERROR:
                proc.state = ProcessState.SHUTDOWN

    def _acquire_failed(self, role: str, exc: Exception) -> None:
        """Log a failed acquire. The backend unreachable (:class:`AdapterConnectionError`) is
        expected and transient: a WARNING without traceback for the first role of an outage
        (at most one each :data:`LOSS_BURST` seconds), DEBUG for the others until they acquire
        again; anything else keeps its traceback."""
        if not isinstance(exc, AdapterConnectionError):
            log.error(
                "statestream: acquiring role %s failed",
                role,
                exc_info=exc,
                extra=fields(self._workflow, role=role),
            )
            return
        now = time.monotonic()
        first = not self._unreachable and now - self._lost_logged.get("acquire", -math.inf) >= (
            LOSS_BURST
        )
        if first:
            self._lost_logged["acquire"] = now
        self._unreachable.add(role)
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "statestream: acquiring role %s of %s failed: %s; retrying with backoff",
            role,
            self._workflow,
            exc,
            extra=fields(self._workflow, role=role),
        )

    def _acquire_works(self, role: str) -> None:
        if role in self._unreachable and len(self._unreachable) == 1:
            log.info("statestream: acquiring the roles of %s works again", self._workflow)
        self._unreachable.discard(role)

    async def _hold(self, proc: Process, lease: Lease, handover: asyncio.Event) -> bool:
        """Run the body while the lease holds; True if its deadline ended it.

        The body stops (finishes what it has in hand and returns) when the supervisor stops or
        when ``handover`` is set; after a handover it has :data:`HANDOVER_GRACE` to do so."""
        stop = asyncio.Event()
        context = contextvars.copy_context()
        context.run(HELD.set, Held(proc, lease, self, stop))
        if self.executor is not None:
            context.run(SYNC_EXECUTOR.set, self.executor)
        loop = asyncio.get_running_loop()
        body: asyncio.Task[None] = loop.create_task(_run(proc.body, stop), context=context)
        lost = asyncio.ensure_future(lease.lost())
        expired = asyncio.ensure_future(_deadline(lease))
        ending = asyncio.ensure_future(self._stop_body(proc, body, stop, handover))
        try:
            await asyncio.wait({body, lost, expired}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            body.cancel()
            await asyncio.gather(body, return_exceptions=True)
            raise
        finally:
            by_deadline = expired.done() and not lost.done()
            lost.cancel()
            expired.cancel()
            ending.cancel()
        if body.done():
            if body.cancelled() and handover.is_set():
                return False  # cancelled after the handover's grace
            body.result()
            return False
        # Roles are lost together (an outage, a stalled loop): the first loss of a burst is a
        # WARNING, the others of the next LOSS_BURST seconds INFO.
        now = time.monotonic()
        last = self._lost_logged.get(by_deadline, -math.inf)
        level = logging.WARNING if now - last >= LOSS_BURST else logging.INFO
        if level == logging.WARNING:
            self._lost_logged[by_deadline] = now
        if not by_deadline:
            log.log(
                level,
                "statestream: lost role %s; stopping its work",
                proc.role,
                extra=fields(self._workflow, role=proc.role),
            )
        else:
            log.log(
                level,
                "statestream: the lease of role %s passed its deadline (the event loop stalled, "
                "or renewing it is late); stopping its work",
                proc.role,
                extra=fields(self._workflow, role=proc.role),
            )
        body.cancel()
        results = await asyncio.gather(body, return_exceptions=True)
        if isinstance(results[0], Exception):
            log.warning(
                "statestream: process %s failed while stopping after the loss of its role",
                proc.name,
                exc_info=results[0],
                extra=fields(self._workflow, role=proc.role),
            )
        return by_deadline

    async def _stop_body(
        self, proc: Process, body: asyncio.Task[None], stop: asyncio.Event, handover: asyncio.Event
    ) -> None:
        """Stop the body on the supervisor's stop or on a handover; cancel it if it is still
        running the handover's grace later (a stop has its own grace, in :meth:`stop`)."""
        stopping = asyncio.ensure_future(self.stopping.wait())
        handing = asyncio.ensure_future(handover.wait())
        try:
            await asyncio.wait({stopping, handing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            handing.cancel()
        stop.set()
        if self.stopping.is_set():
            return
        await asyncio.sleep(HANDOVER_GRACE)
        if not body.done():
            log.warning(
                "statestream: process %s of %s did not finish its work within %g s of handing "
                "its role over; cancelling it (its events are handled again by the next holder)",
                proc.name,
                self._workflow,
                HANDOVER_GRACE,
                extra=fields(self._workflow, role=proc.role),
            )
            body.cancel()


async def _run(body: Body, stopping: asyncio.Event) -> None:
    await body(stopping)


async def _deadline(lease: Lease) -> None:
    """Return once ``lease.valid_until`` has passed (it moves on at each renewal)."""
    while True:
        left = lease.valid_until - time.monotonic()
        if left <= 0:
            return
        if math.isinf(left):
            await asyncio.get_running_loop().create_future()  # never expires by time
        await asyncio.sleep(left)
