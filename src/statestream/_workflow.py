"""The running workflow: triggers runs, drives steps through the store and the stream."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any, Generic

from ._codec import check_text
from ._core.protocols import (
    Clock,
    EventStreamer,
    Observer,
    RecordStore,
    RoleScheduler,
    TimeoutStore,
)
from ._core.records import ParkedEvent, Record
from ._core.run import Run
from ._core.runstate import RunState
from ._core.types import Seconds, StatusT, T, to_seconds
from ._definition.specs import Definition
from ._engine.callbacks import CallbackResult, run_callback
from ._engine.dispatch import Process, ProcessInfo, ProcessState
from ._engine.observe import Guarded, Seam
from ._engine.plan import ProcessSpec, process_specs
from ._engine.runtime import H_PAUSED_BY, Runtime
from ._engine.schedules import Schedule
from ._engine.usercode import SYNC_EXECUTOR
from .errors import (
    ConfigurationError,
    InvalidInput,
    InvalidTransition,
    RecordNotFound,
    RunStopped,
    UnknownStatus,
    WaitTimeout,
)

__all__ = ["Workflow"]

log = logging.getLogger("statestream")


class Workflow(Generic[T, StatusT]):
    """A workflow bound to its adapters. Made by :meth:`Builder.build`.

    Use it as an async context manager (``async with wf:``) or call :meth:`start` and
    :meth:`stop`; while started it runs its background processes (step consumers, the outbox
    relay, timeouts, hooks...), each under a role so that only one process in the cluster runs
    it. ``trigger``, ``wait_for``, ``callback`` and the run controls work whether or not this
    instance is started: another process may be running the workers.
    """

    def __init__(
        self,
        definition: Definition[T, StatusT],
        *,
        streamer: EventStreamer,
        store: RecordStore,
        scheduler: RoleScheduler,
        timeout_store: TimeoutStore | None,
        clock: Clock,
        outbox: bool,
        observer: Observer | None = None,
        sync_workers: int = 32,
    ) -> None:
        self._def = definition
        self._rt = rt = Runtime(
            definition,
            streamer=streamer,
            store=store,
            scheduler=scheduler,
            timeout_store=timeout_store,
            clock=clock,
            observer=observer,
            sync_workers=sync_workers,
        )
        rt.facade = self
        self.name = definition.name
        self.streamer = streamer
        self.store = store
        self.scheduler = scheduler
        self.timeout_store = timeout_store
        self.clock = clock
        self._outbox_enabled = outbox
        self._statuses = definition.statuses
        self._supervisor = rt.supervisor
        self._schedules: dict[str, Schedule[T, StatusT]] = {}
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the background processes. Idempotent while started; may be called after stop."""
        if self._started:
            return
        self._started = True
        rt = self._rt
        rt.outbox_wake = asyncio.Event()
        rt.timeout_wakes = {status: asyncio.Event() for status in self._def.timeouts}
        rt.waiters.linger = True  # keep wait_for's receivers open between waiters until stop
        self._supervisor.start(self._processes())

    async def stop(self, grace: Seconds = 10.0) -> None:
        """Stop taking new work, let in-flight steps finish for up to ``grace``, then cancel."""
        if not self._started:
            return
        seconds = to_seconds(grace, "grace", allow_zero=True)
        self._rt.outbox_wake.set()
        for wake in self._rt.timeout_wakes.values():
            wake.set()
        await self._supervisor.stop(seconds)
        await self._rt.waiters.close_idle()
        # A plain def step still running past the grace keeps its (daemon) thread until it
        # returns; it does not keep the process alive.
        self._rt.executor.shutdown(wait=False)
        self._started = False

    async def __aenter__(self) -> Workflow[T, StatusT]:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._started

    @property
    def observers(self) -> tuple[Observer, ...]:
        """The observers this instance reports to (``build(observer=)``, :meth:`add_observer`),
        a :class:`~statestream.CompositeObserver` flattened into its members."""
        current = self._rt.observer
        return () if current is None else current.observers

    def add_observer(self, observer: Observer) -> None:
        """Report to ``observer`` too, as if it were given to ``build(observer=)`` with the
        others (the worker's ``--metrics-port`` adds a metrics observer this way).

        Raises:
            InvalidInput: the workflow is started (add observers before :meth:`start`).
            ConfigurationError: ``observer`` does not implement :class:`~statestream.Observer`.
        """
        if self._started:
            raise InvalidInput(f"workflow {self.name!r} is started: add observers before start()")
        if not isinstance(observer, Observer):
            raise ConfigurationError(
                f"observer does not implement Observer (subclass NullObserver): {observer!r}"
            )
        rt = self._rt
        rt.observer = Guarded(*self.observers, observer)
        rt.supervisor.seam = Seam(rt.observer, self.name, rt.clock)

    def states(self) -> dict[str, ProcessState]:
        """Each background process of this instance and what it is doing.

        ``RUNNING`` while it holds its role and works (``LAGGING`` when its oldest unfinished
        event is older than its ``lag_alert``), ``IDLE`` while another process holds the role
        (or this instance already holds its share of the roles), ``ERROR`` while it restarts
        after a failure, ``SHUTDOWN`` once stopped.
        """
        current = {p.name: p.report() for p in self._supervisor.processes}
        return {name: current.get(name, ProcessState.UNKNOWN) for name, *_ in self._specs()}

    def process_info(self) -> dict[str, ProcessInfo]:
        """Each background process of this instance with its state, lag, errors and parked
        events (see :class:`ProcessInfo`)."""
        current = {p.name: p for p in self._supervisor.processes}
        out: dict[str, ProcessInfo] = {}
        for name, role, *_ in self._specs():
            proc = current.get(name)
            out[name] = (
                proc.info()
                if proc is not None
                else ProcessInfo(ProcessState.UNKNOWN, role, 0.0, 0, "", 0)
            )
        return out

    async def parked(self, *, consumer: str | None = None, limit: int = 100) -> list[ParkedEvent]:
        """Events that a consumer of this workflow gave up on after repeated errors, oldest first.

        A consumer that cannot handle an event (a hook, connector handler, data deleter or pause
        retry failing ``park_after_errors`` times, or a step whose auto-pause failed) parks it and
        moves on. :meth:`retry_parked` asks for one to be handled again.

        Args:
            consumer: only those of this consumer (its role name, :attr:`ProcessInfo.role`).
            limit: at most this many.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput(f"limit must be an int >= 1, got {limit!r}")
        if consumer is not None:
            self._check_id(consumer, "consumer")
        return await self.store.list_parked(self.name, consumer=consumer, limit=limit)

    async def retry_parked(self, parked_id: str) -> None:
        """Ask for a parked event to be handled again.

        The consumer that parked it, in whichever process holds its role, handles it within a
        few seconds (at once when that is this process): the entry is deleted if it succeeds and
        parked again, with the new error, if it fails. The handler runs at least once more; a
        step whose run has moved on since is not called.

        Raises:
            RecordNotFound: no parked event with this ID.
        """
        await self.store.retry_parked(self._check_id(parked_id, "parked_id"))
        if self._started:
            self._supervisor.wake_parked()

    def mermaid(self, direction: str = "LR") -> str:
        """The workflow's graph as a Mermaid state diagram (fenced for Markdown)."""
        return self._def.graph.mermaid(self.name, self._describe, direction)

    @property
    def graph(self) -> dict[StatusT, list[StatusT]]:
        """Each status and the statuses it may move to."""
        g = self._def.graph
        return {self._statuses[n]: [self._statuses[d] for d in g.transitions(n)] for n in g.nodes}

    def _describe(self, status: int) -> str:
        return self._rt.describe(status)

    # ------------------------------------------------------------------ processes

    def _specs(self) -> list[ProcessSpec]:
        """(process name, role, body, options) of every background process, in a stable order."""
        extra = [schedule.process() for schedule in self._schedules.values()]
        return process_specs(self._rt, outbox=self._outbox_enabled, extra=extra)

    def _processes(self) -> list[Process]:
        return [self._process(spec) for spec in self._specs()]

    @staticmethod
    def _process(spec: ProcessSpec) -> Process:
        name, role, body, opts = spec
        return Process(name, role, body, opts.error_backoff, opts.max_error_backoff, opts)

    def _add_process(self, spec: ProcessSpec) -> None:
        if self._started:
            self._supervisor.add(self._process(spec))

    # ------------------------------------------------------------------ public API

    def _check_status(self, status: object, what: str) -> StatusT:
        if not isinstance(status, self._def.status_type):
            raise UnknownStatus(
                f"{what} must be a member of {self._def.status_type.__name__}, got {status!r}"
            )
        if int(status) not in self._def.graph:
            raise UnknownStatus(f"{what} {status!r} is not a status of workflow {self.name!r}")
        return status

    @staticmethod
    def _check_id(value: object, what: str) -> str:
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"{what} must be a non-empty string, got {value!r}")
        return check_text(value, what)

    async def trigger(
        self, foreign_id: str, *, initial: T | None = None, start_at: StatusT | None = None
    ) -> str:
        """Start a run for ``foreign_id`` and return its run ID.

        The run and its first event are written in one atomic step, which refuses when an
        unfinished run (initiated, running or paused) exists for the same foreign ID.

        Args:
            foreign_id: the business key (an order ID, a user ID...).
            initial: the run's object; default ``object_type()``.
            start_at: the status to start at; default the workflow's starting status.

        Raises:
            WorkflowInProgress: an unfinished run exists for ``foreign_id``.
            UnknownStatus: ``start_at`` is not a status of the workflow, or is terminal.
            InvalidObject: ``initial`` is not of the workflow's object type.
        """
        self._check_id(foreign_id, "foreign_id")
        status = self._def.start_status
        if start_at is not None:
            status = self._check_status(start_at, "start_at")
            if self._def.graph.is_terminal(int(status)):
                raise UnknownStatus(
                    f"start_at {status!r} is terminal: a run started there would never move"
                )
        record = await self._rt.create(foreign_id, status, initial)
        return record.run_id

    def to_run(self, record: Record) -> Run[T, StatusT]:
        """Decode a stored record into a typed :class:`Run`."""
        return self._rt.to_run(record)

    async def _own(self, run_id: str) -> Record:
        record = await self.store.lookup(self._check_id(run_id, "run_id"))
        if record.workflow_name != self.name:
            raise RecordNotFound(f"run {run_id} belongs to workflow {record.workflow_name!r}")
        return record

    async def get(self, run_id: str) -> Run[T, StatusT]:
        """The run with this ID. Raises RecordNotFound."""
        return self.to_run(await self._own(run_id))

    async def latest(self, foreign_id: str) -> Run[T, StatusT]:
        """The most recent run of ``foreign_id``. Raises RecordNotFound."""
        self._check_id(foreign_id, "foreign_id")
        return self.to_run(await self.store.latest(self.name, foreign_id))

    async def wait_for(
        self,
        foreign_id: str,
        run_id: str,
        status: StatusT,
        *,
        timeout: Seconds | None = None,
        poll_interval: Seconds = 0.1,
    ) -> Run[T, StatusT]:
        """Wait until the run is at ``status`` and return it.

        The record is checked first, so a run already at ``status`` returns at once. Writes made
        by this process wake the waiter immediately (with the record written, so it returns
        exactly the version at ``status``). Writes by other processes are seen through their
        events: one receiver per topic, shared by every waiter of this workflow in the process,
        polls the stream every ``poll_interval`` (streams that push, like the memory one, wake
        it at once). A waiter also reads the store every few seconds, in case an event is
        never published, and every ``poll_interval`` while the stream cannot be read.

        A run that passed through ``status`` and moved on before the call is not at ``status``
        any more: wait for the status it moves to instead. One that reaches ``status`` during
        the call, in another process, and moves on before this waiter reads it is returned as
        it is when read (after ``status``).

        Raises:
            UnknownStatus: ``status`` is not in the workflow's graph.
            RecordNotFound: no such run of this workflow and foreign ID.
            RunStopped: the run finished (completed elsewhere, cancelled, deleted) without being
                at ``status``.
            WaitTimeout: ``timeout`` passed first.
        """
        self._check_id(foreign_id, "foreign_id")
        self._check_id(run_id, "run_id")
        target = int(self._check_status(status, "status"))
        interval = to_seconds(poll_interval, "poll_interval")
        deadline = None
        if timeout is not None:
            deadline = time.monotonic() + to_seconds(timeout, "timeout", allow_zero=True)
        waiters = self._rt.waiters
        waiter = waiters.add(run_id, target)
        try:
            # Subscribed before the first read, so that no write after that read goes unseen.
            opening = waiters.subscribe(waiter, interval)
            if opening is not None:
                await opening
            record = await self.store.lookup(run_id)
            if record.workflow_name != self.name or record.foreign_id != foreign_id:
                raise RecordNotFound(
                    f"run {run_id} is not a run of {foreign_id!r} in workflow {self.name!r}"
                )
            while True:
                if record.status == target or (waiter.reached and record.version >= waiter.reached):
                    return self.to_run(record)
                if record.run_state.finished:
                    raise RunStopped(
                        f"run {run_id} is {record.run_state.label} at "
                        f"{self._describe(record.status)}, not at {status.name}"
                    )
                waiter.version = max(waiter.version, record.version)
                # The store is behind an event we were shown: read again soon.
                behind = waiter.reached > record.version
                wait = interval if behind else waiters.poll_every(waiter, interval)
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise WaitTimeout(
                            f"run {run_id} did not reach {status.name} in time "
                            f"(it is at {self._describe(record.status)})"
                        )
                    wait = min(wait, left)
                woken = waiters.arm(waiter, wait)
                if not woken.done():
                    try:
                        await woken
                    finally:
                        waiters.disarm(waiter)
                handed = woken.result()
                if handed is None:
                    waiter.rearm()
                    record = await self.store.lookup(run_id)
                else:
                    record = handed  # at the status, or finished: the loop ends here
        finally:
            waiters.remove(waiter)
            waiters.unsubscribe(waiter)

    async def _control(
        self,
        run_id: str,
        state: RunState,
        reason: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> Record:
        check_text(reason, "reason")
        record = await self._own(run_id)
        current = record.run_state
        if current is RunState.INITIATED and state is RunState.CANCELLED:
            raise InvalidTransition(
                f"run {run_id} is Initiated: pause it before cancelling it (run-state table)"
            )
        if not current.can_become(state):
            raise InvalidTransition(f"run {run_id} cannot go from {current.label} to {state.label}")
        return await self._rt.update(
            record, run_state=state, run_state_reason=reason, headers=headers, **extra
        )

    async def pause(self, run_id: str, reason: str = "") -> Run[T, StatusT]:
        """Pause a run: consumers, callbacks and timeouts leave it alone until it is resumed.

        A run paused through this call (an operator's decision) is not resumed by pause retry,
        unlike in luno/workflow; runs paused by their steps or after repeated errors are.

        Raises:
            InvalidTransition: the run cannot be paused from its state.
            VersionConflict: the run changed while this call was writing; retry.
        """
        return self.to_run(
            await self._control(run_id, RunState.PAUSED, reason, {H_PAUSED_BY: "operator"})
        )

    async def resume(self, run_id: str) -> Run[T, StatusT]:
        """Resume a paused run: the step at its status runs again. Resets the count of
        automatic resumes, so pause retry applies afresh."""
        return self.to_run(await self._control(run_id, RunState.RUNNING, "", auto_resumes=0))

    async def cancel(self, run_id: str, reason: str = "") -> Run[T, StatusT]:
        """Cancel a run for good (from Running or Paused)."""
        return self.to_run(await self._control(run_id, RunState.CANCELLED, reason))

    async def delete_data(self, run_id: str, reason: str = "") -> Run[T, StatusT]:
        """Request deletion of a finished run's data (GDPR): the delete process scrubs its object
        (see :meth:`Builder.on_delete_data`) and marks it Data Deleted.

        Raises:
            InvalidTransition: the run is not Completed, Cancelled or Data Deleted (deleting
                again is allowed, as the run-state table says).
            ConfigurationError: no ``on_delete_data`` was declared and ``object_type()`` fails.
        """
        if self._def.delete_fn is None:
            try:
                self._def.object_type()
            except Exception as exc:
                raise ConfigurationError(
                    f"cannot scrub {self._def.object_type.__name__} objects: "
                    f"{self._def.object_type.__name__}() fails ({exc}); declare "
                    "Builder.on_delete_data(fn)"
                ) from exc
        return self.to_run(await self._control(run_id, RunState.REQUESTED_DATA_DELETED, reason))

    async def callback(
        self, foreign_id: str, status: StatusT, payload: object = b""
    ) -> CallbackResult[T, StatusT]:
        """Deliver outside input to the latest run of ``foreign_id`` if it waits at ``status``.

        Args:
            payload: ``bytes``/``str`` (decoded to each callback's ``payload_type``), or an
                instance of that type.

        Returns:
            A :class:`CallbackResult`: ``APPLIED``, ``SKIPPED`` (every callback skipped),
            ``NOT_AT_STATUS`` or ``STOPPED``, with the run as it is now.

        Raises:
            UnknownStatus: no callback is declared at ``status``.
            InvalidInput: the payload does not decode; nothing is written.
            RecordNotFound: no run of ``foreign_id``.
            VersionConflict: the run changed meanwhile and is still at ``status``; retry.
            UserCodeError: the callback function raised CancelledError, GeneratorExit,
                KeyboardInterrupt or SystemExit (wrapped); nothing is written.
            Exception: whatever the callback function raised; nothing is written.
        """

        self._check_id(foreign_id, "foreign_id")
        checked = self._check_status(status, "status")
        token = SYNC_EXECUTOR.set(self._rt.executor)  # a plain def callback runs on our pool
        try:
            return await self._rt.observed_callback(
                foreign_id, int(checked), run_callback(self._rt, foreign_id, checked, payload)
            )
        finally:
            SYNC_EXECUTOR.reset(token)

    def schedule(
        self,
        foreign_id: str,
        spec: str,
        *,
        initial: T | None = None,
        filter: Callable[[datetime], Any] | None = None,
        tz: str = "UTC",
    ) -> Schedule[T, StatusT]:
        """Trigger a run for ``foreign_id`` at every tick of a cron ``spec``, in every started
        instance of this workflow, with exactly one trigger per tick across all of them.

        ``spec`` is a cron expression (5 fields with ranges, lists, steps and names; ``@daily``
        and the other shortcuts) or ``@every <duration>`` (``@every 90s``, ``@every 1h30m``).
        Returns at once; the schedule runs while the workflow is started. After downtime, one
        missed tick is caught up at once, never more.

        Args:
            initial: the object of each run (default ``object_type()``).
            filter: ``filter(tick)`` (sync or async) returning False skips that tick.
            tz: the time zone the spec is read in (an IANA name).

        Raises:
            InvalidInput: an invalid spec or time zone, or a schedule already registered for the
                same foreign ID and spec.
        """
        self._check_id(foreign_id, "foreign_id")
        schedule = Schedule(self._rt, foreign_id, spec, initial=initial, filter=filter, tz=tz)
        if schedule.role in self._schedules:
            raise InvalidInput(f"schedule {spec!r} for {foreign_id!r} is already registered")
        self._schedules[schedule.role] = schedule
        self._add_process(schedule.process())
        return schedule
