"""The running workflow: triggers runs, drives steps through the store and the stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic

from ._builder import Definition
from ._codec import check_instance, check_text, scrub_text
from ._consumer import Abandon, Process, ProcessState, Supervisor
from ._graph import describe_status
from ._ids import new_id
from ._options import ProcessOptions
from ._processes import (
    H_PAUSED_BY,
    H_VERSION,
    Body,
    connector_body,
    delete_body,
    hook_body,
    pause_retry_body,
    step_body,
)
from ._protocols import Clock, EventStreamer, RecordStore, RoleScheduler, TimeoutStore
from ._record import Event, Message, OutboxEvent, Record, topic_for
from ._run import Cancel, Control, Pause, Run, SaveAndRepeat, Skip
from ._runstate import RunState
from ._types import Seconds, StatusT, T, to_seconds
from .errors import (
    ConfigurationError,
    InvalidInput,
    InvalidTransition,
    RecordNotFound,
    RunStopped,
    StaleRead,
    UnknownStatus,
    VersionConflict,
    WaitTimeout,
)

if TYPE_CHECKING:
    from ._callback import CallbackResult
    from ._schedule import Schedule

__all__ = ["Workflow"]

log = logging.getLogger("statestream")

_AUTO_PAUSE_REASON = "paused after {n} consecutive errors in {what}: {err}"


_new_id = new_id  # run and outbox event IDs: time-ordered UUIDv7, 32 hex digits


def _role(*parts: object) -> str:
    return "-".join(str(p) for p in parts).lower().replace(" ", "_")


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
    ) -> None:
        self._def = definition
        self.name = definition.name
        self.streamer = streamer
        self.store = store
        self.scheduler = scheduler
        self.timeout_store = timeout_store
        self.clock = clock
        self._outbox_enabled = outbox
        self._codec = definition.codec
        self._statuses = definition.statuses
        self._supervisor = Supervisor(scheduler, definition.name)
        self._outbox_wake = asyncio.Event()
        #: per status with a timeout: set when this process stores a new timer there
        self._timeout_wakes: dict[int, asyncio.Event] = {}
        self._watchers: dict[str, list[asyncio.Future[None]]] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._schedules: dict[str, Schedule[T, StatusT]] = {}
        #: (run state, status) -> (topic, run-state header), computed once per pair
        self._topics: dict[tuple[RunState, int], tuple[str, str]] = {}
        self._names = {value: member.name for value, member in definition.statuses.items()}
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the background processes. Idempotent while started; may be called after stop."""
        if self._started:
            return
        self._started = True
        self._outbox_wake = asyncio.Event()
        self._timeout_wakes = {status: asyncio.Event() for status in self._def.timeouts}
        self._supervisor.start(self._processes())

    async def stop(self, grace: Seconds = 10.0) -> None:
        """Stop taking new work, let in-flight steps finish for up to ``grace``, then cancel."""
        if not self._started:
            return
        seconds = to_seconds(grace, "grace", allow_zero=True)
        self._outbox_wake.set()
        for wake in self._timeout_wakes.values():
            wake.set()
        await self._supervisor.stop(seconds)
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

    def states(self) -> dict[str, ProcessState]:
        """Each background process of this instance and what it is doing."""
        current = {p.name: p.state for p in self._supervisor.processes}
        return {name: current.get(name, ProcessState.UNKNOWN) for name, *_ in self._specs()}

    def mermaid(self, direction: str = "LR") -> str:
        """The workflow's graph as a Mermaid state diagram (fenced for Markdown)."""
        return self._def.graph.mermaid(self.name, self._describe, direction)

    @property
    def graph(self) -> dict[StatusT, list[StatusT]]:
        """Each status and the statuses it may move to."""
        g = self._def.graph
        return {self._statuses[n]: [self._statuses[d] for d in g.transitions(n)] for n in g.nodes}

    def _describe(self, status: int) -> str:
        member = self._statuses.get(status)
        return describe_status(member.name) if member is not None else str(status)

    # ------------------------------------------------------------------ processes

    def _specs(self) -> list[tuple[str, str, Body, ProcessOptions]]:
        """(process name, role, body, options) of every background process, in a stable order."""
        from ._timeout import inserter_body, poller_body

        d = self._def
        specs: list[tuple[str, str, Body, ProcessOptions]] = []
        for status, spec in d.steps.items():
            n = spec.options.parallel_count
            label = spec.status.name.lower()
            for i in range(n):
                role = _role(self.name, status, "consumer", i + 1, "of", n)
                body = step_body(self, spec, i, n, role)
                specs.append((f"{label}-consumer-{i + 1}-of-{n}", role, body, spec.options))
        for status, tspec in d.timeouts.items():
            label = tspec.status.name.lower()
            role = _role(self.name, status, "timeout-auto-inserter-consumer")
            specs.append(
                (
                    f"{label}-timeout-auto-inserter-consumer",
                    role,
                    inserter_body(self, tspec, role),
                    tspec.options,
                )
            )
            role = _role(self.name, status, "timeout-consumer")
            specs.append(
                (f"{label}-timeout-consumer", role, poller_body(self, tspec, role), tspec.options)
            )
        for cspec in d.connectors:
            n = cspec.options.parallel_count
            for i in range(n):
                name = _role(cspec.name, "connector-to", self.name, "consumer", i + 1, "of", n)
                specs.append((name, name, connector_body(self, cspec, i, n, name), cspec.options))
        for state, hook in d.hooks.items():
            label = state.name.lower()
            role = _role(self.name, label, "run-state-change-hook-consumer")
            name = f"{label}-run-state-change-hook-consumer"
            specs.append((name, role, hook_body(self, hook, role), hook.options))
        role = _role(self.name, "delete-consumer")
        specs.append(("delete-consumer", role, delete_body(self, role, d.defaults), d.defaults))
        if d.pause_retry is not None:
            role = _role(self.name, "paused-records-retry-consumer")
            body = pause_retry_body(self, role, d.defaults)
            specs.append(("paused-records-retry-consumer", role, body, d.defaults))
        for schedule in self._schedules.values():
            specs.append(schedule.process())
        if self._outbox_enabled:
            opts = d.outbox_options
            specs.append(
                ("outbox-consumer", _role(self.name, "outbox-consumer"), self._relay, opts)
            )
        return specs

    def _processes(self) -> list[Process]:
        return [
            Process(name, role, body, opts.error_backoff, opts.max_error_backoff)
            for name, role, body, opts in self._specs()
        ]

    def _add_process(self, spec: tuple[str, str, Body, ProcessOptions]) -> None:
        if self._started:
            name, role, body, opts = spec
            self._supervisor.add(
                Process(name, role, body, opts.error_backoff, opts.max_error_backoff)
            )

    async def _sleep_clock(
        self, seconds: float, stopping: asyncio.Event, wake: asyncio.Event | None = None
    ) -> None:
        """Sleep on the workflow's clock, returning early on ``stopping`` or ``wake``."""
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self.clock.sleep(seconds))]
        waits.append(asyncio.ensure_future(stopping.wait()))
        if wake is not None:
            waits.append(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _wait_lag(self, event: Event, lag: float) -> None:
        """Wait until ``event`` is ``lag`` seconds old on the workflow's clock."""
        stopping = self._supervisor.stopping
        while True:
            left = event.created_at.timestamp() + lag - self.clock.now().timestamp()
            if left <= 0:
                return
            if stopping.is_set():
                raise Abandon
            await self._sleep_clock(left, stopping)

    # ------------------------------------------------------------------ outbox relay

    async def _relay(self, stopping: asyncio.Event) -> None:
        wake = self._outbox_wake
        interval = self._def.outbox_options.polling_frequency
        while not stopping.is_set():
            wake.clear()
            events = await self.store.list_outbox(self.name, 1000)
            if not events:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await wake.wait()
                continue
            by_topic: dict[str, list[Message]] = {}
            for event in events:
                msgs = by_topic.get(event.topic)
                if msgs is None:
                    by_topic[event.topic] = [event.message]
                else:
                    msgs.append(event.message)
            for topic, messages in by_topic.items():
                await self.streamer.publish(topic, messages)
            await self.store.delete_outbox([e.id for e in events])

    # ------------------------------------------------------------------ writes

    def _event_for(self, record: Record, extra: dict[str, str] | None = None) -> OutboxEvent:
        key = (record.run_state, record.status)
        cached = self._topics.get(key)
        if cached is None:
            cached = self._topics[key] = (topic_for(record), str(int(record.run_state)))
        topic, state = cached
        headers = {
            "workflow_name": record.workflow_name,
            "foreign_id": record.foreign_id,
            "run_id": record.run_id,
            "topic": topic,
            "run_state": state,
            H_VERSION: str(record.version),
        }
        if extra:
            headers.update(extra)
        message = Message(record.run_id, record.status, headers, record.updated_at)
        return OutboxEvent(_new_id(), record.workflow_name, topic, message)

    def _written(self, record: Record) -> None:
        self._outbox_wake.set()
        if self._watchers:
            for waiter in self._watchers.pop(record.run_id, ()):
                if not waiter.done():
                    waiter.set_result(None)

    async def _update(
        self, current: Record, *, headers: dict[str, str] | None = None, **changes: Any
    ) -> Record:
        """Compare-and-set write of ``current`` with ``changes``; raises VersionConflict."""
        status = changes.get("status", current.status)
        state = changes.get("run_state", current.run_state)
        reason = changes.get("run_state_reason", current.run_state_reason)
        resumes = changes.get("auto_resumes", current.auto_resumes)
        if (
            state is RunState.PAUSED
            and self._def.pause_retry is not None
            and resumes >= self._def.pause_retry_limit
        ):
            reason = (
                f"{reason} (stays paused: already resumed automatically {resumes} times; "
                "resume it by hand)"
            )
        record = Record(
            workflow_name=current.workflow_name,
            foreign_id=current.foreign_id,
            run_id=current.run_id,
            run_state=state,
            status=status,
            object=changes.get("object", current.object),
            created_at=current.created_at,
            updated_at=self.clock.now(),
            version=current.version + 1,
            run_state_reason=reason,
            status_description=self._names.get(status) or str(status),
            auto_resumes=resumes,
        )
        await self.store.update(record, self._event_for(record, headers))
        self._written(record)
        return record

    async def _fresh_record(self, event: Event, *, allow_stopped: bool = False) -> Record | None:
        """The record an event is about, if the event is still current (reference §3)."""
        try:
            record = await self.store.lookup(event.key)
        except RecordNotFound:
            log.debug("statestream: skipping event for unknown run %s", event.key)
            return None
        version = int(event.headers.get(H_VERSION, 0))
        if record.version > version:
            return None  # superseded or already handled
        if record.version < version:
            raise StaleRead(
                f"store returned version {record.version} of run {record.run_id}, "
                f"older than the event's {version}"
            )
        if not allow_stopped and (record.run_state.stopped or record.status != event.type):
            return None
        return record

    async def _apply_result(
        self,
        what: str,
        destinations: tuple[StatusT, ...],
        record: Record,
        run: Run[T, StatusT],
        result: object,
    ) -> Record | None:
        """Store what a step, callback or timeout returned (a status or a Control)."""
        if isinstance(result, Control):
            if isinstance(result, Skip):
                return None
            # Pausing or cancelling keeps what the function wrote to the object (say, why).
            if isinstance(result, Pause):
                return await self._update(
                    record,
                    run_state=RunState.PAUSED,
                    run_state_reason=check_text(result.reason, "reason"),
                    object=self._codec.encode(run.object),
                )
            if isinstance(result, Cancel):
                return await self._update(
                    record,
                    run_state=RunState.CANCELLED,
                    run_state_reason=check_text(result.reason, "reason"),
                    object=self._codec.encode(run.object),
                )
            if isinstance(result, SaveAndRepeat):
                return await self._update(
                    record, run_state=RunState.RUNNING, object=self._codec.encode(run.object)
                )
        if not isinstance(result, self._def.status_type) or result not in destinations:
            allowed = ", ".join(d.name for d in destinations)
            raise InvalidTransition(f"{what} returned {result!r}; it may only return: {allowed}")
        terminal = self._def.graph.is_terminal(int(result))
        return await self._update(
            record,
            status=int(result),
            run_state=RunState.COMPLETED if terminal else RunState.RUNNING,
            object=self._codec.encode(run.object),
        )

    def _clear_errors(self, process: str, run_id: str) -> None:
        if self._errors:
            self._errors.pop((process, run_id), None)

    async def _failed(
        self,
        what: str,
        process: str,
        run_id: str,
        exc: BaseException,
        opts: ProcessOptions,
        *,
        event: Event | None = None,
        status: int | None = None,
    ) -> bool:
        """Count an error of ``process`` for a run; pause the run at the limit.

        Returns True when the run was paused (or has moved on), so the work item is done.
        """
        if isinstance(exc, VersionConflict):
            log.info("statestream: run %s changed while %s ran; result discarded", run_id, what)
            return True
        key = (process, run_id)
        count = self._errors.get(key, 0) + 1
        self._errors[key] = count
        limit = opts.pause_after_errors
        log.warning(
            "statestream: %s of %s failed for run %s (error %d%s): %r",
            what,
            self.name,
            run_id,
            count,
            f" of {limit}" if limit else "",
            exc,
            exc_info=not isinstance(exc, StaleRead),
        )
        if not limit or count < limit:
            return False
        del self._errors[key]
        if event is not None:
            record = await self._fresh_record(event)
        else:
            record = await self.store.lookup(run_id)
            if (
                record.run_state.stopped
                or record.run_state.finished
                or (status is not None and record.status != status)
            ):
                record = None  # it moved on: there is nothing of this work left to pause
        if record is None:
            return True
        reason = _AUTO_PAUSE_REASON.format(n=count, what=what, err=f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(VersionConflict):  # someone else moved the run on meanwhile
            await self._update(
                record, run_state=RunState.PAUSED, run_state_reason=scrub_text(reason)[:2000]
            )
        return True

    def _scrubbed_object(self, record: Record) -> bytes:
        if self._def.delete_fn is not None:
            return self._codec.encode(self._def.delete_fn(self._codec.decode(record.object)))
        return self._codec.encode(self._def.object_type())

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
        if initial is None:
            try:
                initial = self._def.object_type()
            except Exception as exc:
                raise InvalidInput(
                    f"{self._def.object_type.__name__}() failed ({exc}); pass initial="
                ) from exc
        else:
            check_instance(self._def.object_type, initial)
        data = self._codec.encode(initial)
        now = self.clock.now()
        record = Record(
            workflow_name=self.name,
            foreign_id=foreign_id,
            run_id=_new_id(),
            run_state=RunState.INITIATED,
            status=int(status),
            object=data,
            created_at=now,
            updated_at=now,
            version=1,
            status_description=status.name,
        )
        await self.store.create(record, self._event_for(record))
        self._written(record)
        return record.run_id

    def to_run(self, record: Record) -> Run[T, StatusT]:
        """Decode a stored record into a typed :class:`Run`."""
        status = self._statuses.get(record.status)
        if status is None:
            raise UnknownStatus(f"record {record.run_id} has unknown status {record.status}")
        return Run(
            workflow_name=record.workflow_name,
            foreign_id=record.foreign_id,
            run_id=record.run_id,
            run_state=record.run_state,
            status=status,
            object=self._codec.decode(record.object),
            created_at=record.created_at,
            updated_at=record.updated_at,
            version=record.version,
            run_state_reason=record.run_state_reason,
        )

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

        The record is checked first, so a run already at ``status`` returns at once; writes made
        by this process wake the waiter immediately, and writes by other processes are seen
        within ``poll_interval``. A run that passed through ``status`` and moved on before the
        call is not at ``status`` any more: wait for the status it moves to instead.

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
        loop = asyncio.get_running_loop()
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            self._watchers.setdefault(run_id, []).append(waiter)
            try:
                record = await self.store.lookup(run_id)
                if record.workflow_name != self.name or record.foreign_id != foreign_id:
                    raise RecordNotFound(
                        f"run {run_id} is not a run of {foreign_id!r} in workflow {self.name!r}"
                    )
                if record.status == target:
                    return self.to_run(record)
                if record.run_state.finished:
                    raise RunStopped(
                        f"run {run_id} is {record.run_state.label} at "
                        f"{self._describe(record.status)}, not at {status.name}"
                    )
                wait = interval
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise WaitTimeout(
                            f"run {run_id} did not reach {status.name} in time "
                            f"(it is at {self._describe(record.status)})"
                        )
                    wait = min(wait, left)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await waiter
            finally:
                waiters = self._watchers.get(run_id)
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
                    if not waiters:
                        del self._watchers[run_id]

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
        return await self._update(
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
            Exception: whatever the callback function raised; nothing is written.
        """
        from ._callback import run_callback

        self._check_id(foreign_id, "foreign_id")
        return await run_callback(self, foreign_id, self._check_status(status, "status"), payload)

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
        from ._schedule import Schedule

        self._check_id(foreign_id, "foreign_id")
        schedule = Schedule(self, foreign_id, spec, initial=initial, filter=filter, tz=tz)
        if schedule.role in self._schedules:
            raise InvalidInput(f"schedule {spec!r} for {foreign_id!r} is already registered")
        self._schedules[schedule.role] = schedule
        self._add_process(schedule.process())
        return schedule
