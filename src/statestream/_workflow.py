"""The running workflow: triggers runs, drives steps through the store and the stream."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Generic

from ._builder import Definition, HookSpec, StepSpec
from ._consumer import KeyedDispatcher, Process, ProcessState, Supervisor
from ._protocols import Clock, EventStreamer, RecordStore, RoleScheduler, TimeoutStore
from ._record import (
    Event,
    Message,
    OutboxEvent,
    Record,
    run_state_change_topic,
    status_topic,
    topic_for,
)
from ._run import Cancel, Control, Pause, Run, SaveAndRepeat, Skip
from ._runstate import RunState
from ._types import Seconds, StatusT, T, to_seconds
from .errors import (
    InvalidInput,
    InvalidObject,
    InvalidTransition,
    RecordNotFound,
    RunStopped,
    StaleRead,
    UnknownStatus,
    VersionConflict,
    WaitTimeout,
)

__all__ = ["Workflow"]

log = logging.getLogger("statestream")

H_WORKFLOW = "workflow_name"
H_FOREIGN_ID = "foreign_id"
H_RUN_ID = "run_id"
H_TOPIC = "topic"
H_RUN_STATE = "run_state"
H_VERSION = "record_version"

_AUTO_PAUSE_REASON = "paused after {n} consecutive errors: {err}"


def _role(*parts: object) -> str:
    return "-".join(str(p) for p in parts).lower().replace(" ", "_")


class Workflow(Generic[T, StatusT]):
    """A workflow bound to its adapters. Made by :meth:`Builder.build`.

    Use it as an async context manager (``async with wf:``) or call :meth:`start` and
    :meth:`stop`; while started it runs its background processes (step consumers, the outbox
    relay, hooks), each under a role so that only one process in the cluster runs it.
    ``trigger``, ``wait_for`` and the run controls work whether or not this process is started.
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
        self._watchers: dict[str, list[asyncio.Future[None]]] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the background processes. Idempotent while started; may be called after stop."""
        if self._started:
            return
        self._started = True
        self._outbox_wake = asyncio.Event()
        self._supervisor.start(self._processes())

    async def stop(self, grace: Seconds = 10.0) -> None:
        """Stop taking new events, let in-flight steps finish for up to ``grace``, then cancel."""
        if not self._started:
            return
        seconds = to_seconds(grace, "grace", allow_zero=True)
        self._outbox_wake.set()
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
        names = self._process_names()
        current = {p.name: p.state for p in self._supervisor.processes}
        return {name: current.get(name, ProcessState.UNKNOWN) for name in names}

    def mermaid(self, direction: str = "LR") -> str:
        """The workflow's graph as a Mermaid state diagram (fenced for Markdown)."""
        return self._def.graph.mermaid(self.name, self._describe, direction)

    @property
    def graph(self) -> dict[StatusT, list[StatusT]]:
        """Each status and the statuses its step may move to."""
        g = self._def.graph
        return {self._statuses[n]: [self._statuses[d] for d in g.transitions(n)] for n in g.nodes}

    def _describe(self, status: int) -> str:
        from ._graph import describe_status

        member = self._statuses.get(status)
        return describe_status(member.name) if member is not None else str(status)

    # ------------------------------------------------------------------ processes

    def _process_names(self) -> list[str]:
        return [p[0] for p in self._process_specs()]

    def _process_specs(
        self,
    ) -> list[tuple[str, str, Callable[[asyncio.Event], Awaitable[None]], Any]]:
        specs: list[tuple[str, str, Callable[[asyncio.Event], Awaitable[None]], Any]] = []
        for status, spec in self._def.steps.items():
            n = spec.options.parallel_count
            label = spec.status.name.lower()
            for i in range(n):
                name = f"{label}-consumer-{i + 1}-of-{n}"
                role = _role(self.name, status, "consumer", i + 1, "of", n)
                specs.append((name, role, self._step_body(spec, i, n, role), spec.options))
        for state, hook in self._def.hooks.items():
            label = state.name.lower()
            name = f"{label}-run-state-change-hook-consumer"
            role = _role(self.name, label, "run-state-change-hook-consumer")
            specs.append((name, role, self._hook_body(hook, role), hook.options))
        if self._outbox_enabled:
            opts = self._def.outbox_options
            specs.append(
                ("outbox-consumer", _role(self.name, "outbox-consumer"), self._relay, opts)
            )
        return specs

    def _processes(self) -> list[Process]:
        return [
            Process(name, role, body, opts.error_backoff, opts.max_error_backoff)
            for name, role, body, opts in self._process_specs()
        ]

    # ------------------------------------------------------------------ outbox relay

    async def _relay(self, stopping: asyncio.Event) -> None:
        wake = self._outbox_wake
        interval = self._def.outbox_options.polling_frequency
        while not stopping.is_set():
            wake.clear()
            events = await self.store.list_outbox(self.name, 1000)
            if not events:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), interval)
                continue
            await self._publish(events)

    async def _publish(self, events: list[OutboxEvent]) -> None:
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

    def _event_for(self, record: Record) -> OutboxEvent:
        topic = topic_for(record)
        headers = {
            H_WORKFLOW: record.workflow_name,
            H_FOREIGN_ID: record.foreign_id,
            H_RUN_ID: record.run_id,
            H_TOPIC: topic,
            H_RUN_STATE: str(int(record.run_state)),
            H_VERSION: str(record.version),
        }
        message = Message(record.run_id, record.status, headers, record.updated_at)
        return OutboxEvent(uuid.uuid4().hex, record.workflow_name, topic, message)

    def _written(self, record: Record) -> None:
        self._outbox_wake.set()
        if self._watchers:
            for waiter in self._watchers.pop(record.run_id, ()):
                if not waiter.done():
                    waiter.set_result(None)

    async def _update(self, current: Record, **changes: Any) -> Record:
        """Compare-and-set write of ``current`` with ``changes``; raises VersionConflict."""
        status = changes.get("status", current.status)
        member = self._statuses.get(status)
        record = Record(
            workflow_name=current.workflow_name,
            foreign_id=current.foreign_id,
            run_id=current.run_id,
            run_state=changes.get("run_state", current.run_state),
            status=status,
            object=changes.get("object", current.object),
            created_at=current.created_at,
            updated_at=self.clock.now(),
            version=current.version + 1,
            run_state_reason=changes.get("run_state_reason", current.run_state_reason),
            status_description=member.name if member is not None else str(status),
        )
        await self.store.update(record, self._event_for(record))
        self._written(record)
        return record

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
        return value

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
            UnknownStatus: ``start_at`` is not a status a step starts from.
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
        elif self._def.object_type is not dict and not isinstance(initial, self._def.object_type):
            raise InvalidObject(
                f"initial must be a {self._def.object_type.__name__}, got {type(initial).__name__}"
            )
        data = self._codec.encode(initial)
        now = self.clock.now()
        record = Record(
            workflow_name=self.name,
            foreign_id=foreign_id,
            run_id=uuid.uuid4().hex,
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

    async def get(self, run_id: str) -> Run[T, StatusT]:
        """The run with this ID. Raises RecordNotFound."""
        record = await self.store.lookup(self._check_id(run_id, "run_id"))
        if record.workflow_name != self.name:
            raise RecordNotFound(f"run {run_id} belongs to workflow {record.workflow_name!r}")
        return self.to_run(record)

    async def latest(self, foreign_id: str) -> Run[T, StatusT]:
        """The most recent run of ``foreign_id``. Raises RecordNotFound."""
        return self.to_run(
            await self.store.latest(self.name, self._check_id(foreign_id, "foreign_id"))
        )

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
        within ``poll_interval``.

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
                    await asyncio.wait_for(waiter, wait)
            finally:
                waiters = self._watchers.get(run_id)
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
                    if not waiters:
                        del self._watchers[run_id]

    async def _control(
        self, run_id: str, state: RunState, reason: str, *, event_status: int | None = None
    ) -> Run[T, StatusT]:
        self._check_id(run_id, "run_id")
        record = await self.store.lookup(run_id)
        if record.workflow_name != self.name:
            raise RecordNotFound(f"run {run_id} belongs to workflow {record.workflow_name!r}")
        current = record.run_state
        if current is RunState.INITIATED and state is RunState.CANCELLED:
            raise InvalidTransition(
                f"run {run_id} is Initiated: pause it before cancelling it (run-state table)"
            )
        if not current.can_become(state):
            raise InvalidTransition(f"run {run_id} cannot go from {current.label} to {state.label}")
        updated = await self._update(record, run_state=state, run_state_reason=reason)
        return self.to_run(updated)

    async def pause(self, run_id: str, reason: str = "") -> Run[T, StatusT]:
        """Pause a run: consumers skip it until it is resumed.

        Raises:
            InvalidTransition: the run cannot be paused from its state.
            VersionConflict: the run changed while this call was writing; retry.
        """
        return await self._control(run_id, RunState.PAUSED, reason)

    async def resume(self, run_id: str) -> Run[T, StatusT]:
        """Resume a paused run: the step at its status runs again."""
        return await self._control(run_id, RunState.RUNNING, "")

    async def cancel(self, run_id: str, reason: str = "") -> Run[T, StatusT]:
        """Cancel a run for good (from Running or Paused)."""
        return await self._control(run_id, RunState.CANCELLED, reason)

    # ------------------------------------------------------------------ step consumer

    def _step_body(
        self, spec: StepSpec[T, StatusT], shard: int, shards: int, role: str
    ) -> Callable[[asyncio.Event], Awaitable[None]]:
        topic = status_topic(self.name, int(spec.status))
        opts = spec.options
        process = role

        async def handle(event: Event) -> None:
            await self._consume_step(spec, event, process)

        async def on_error(event: Event, exc: BaseException, attempt: int) -> bool:
            return await self._step_failed(spec, event, exc, process)

        async def body(stopping: asyncio.Event) -> None:
            receiver = await self.streamer.receiver(
                topic, role, poll_interval=opts.polling_frequency
            )
            try:
                dispatcher = KeyedDispatcher(
                    receiver,
                    handle,
                    on_error,
                    concurrency=opts.concurrency,
                    shard=shard,
                    shards=shards,
                    error_backoff=opts.error_backoff,
                    max_error_backoff=opts.max_error_backoff,
                )
                await dispatcher.run(stopping)
            finally:
                await receiver.close()

        return body

    async def _fresh_record(self, event: Event) -> Record | None:
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
        if record.run_state.stopped or record.status != event.type:
            return None
        return record

    async def _consume_step(self, spec: StepSpec[T, StatusT], event: Event, process: str) -> None:
        if spec.options.lag:
            due = event.created_at.timestamp() + spec.options.lag
            wait = due - self.clock.now().timestamp()
            if wait > 0:
                await self.clock.sleep(wait)
        record = await self._fresh_record(event)
        if record is None:
            return
        run = self.to_run(record)
        if run.run_state is RunState.INITIATED:
            run.run_state = RunState.RUNNING
        if spec.is_async:
            result = await spec.fn(run)  # type: ignore[misc]
        else:
            result = await asyncio.to_thread(spec.fn, run)
        try:
            await self._apply(spec, record, run, result)
        except VersionConflict:
            log.info(
                "statestream: run %s changed while step %s ran; its result is discarded",
                record.run_id,
                spec.status.name,
            )
        if self._errors:
            self._errors.pop((process, record.run_id), None)

    async def _apply(
        self, spec: StepSpec[T, StatusT], record: Record, run: Run[T, StatusT], result: object
    ) -> None:
        if isinstance(result, Control):
            if isinstance(result, Skip):
                return
            if isinstance(result, Pause):
                await self._update(
                    record, run_state=RunState.PAUSED, run_state_reason=result.reason
                )
            elif isinstance(result, Cancel):
                await self._update(
                    record, run_state=RunState.CANCELLED, run_state_reason=result.reason
                )
            elif isinstance(result, SaveAndRepeat):
                await self._update(
                    record, run_state=RunState.RUNNING, object=self._codec.encode(run.object)
                )
            return
        if not isinstance(result, self._def.status_type) or result not in spec.destinations:
            allowed = ", ".join(d.name for d in spec.destinations)
            raise InvalidTransition(
                f"step {spec.status.name} returned {result!r}; it may only return: {allowed}"
            )
        terminal = self._def.graph.is_terminal(int(result))
        await self._update(
            record,
            status=int(result),
            run_state=RunState.COMPLETED if terminal else RunState.RUNNING,
            object=self._codec.encode(run.object),
        )

    async def _step_failed(
        self, spec: StepSpec[T, StatusT], event: Event, exc: BaseException, process: str
    ) -> bool:
        key = (process, event.key)
        count = self._errors.get(key, 0) + 1
        self._errors[key] = count
        limit = spec.options.pause_after_errors
        log.warning(
            "statestream: step %s of %s failed for run %s (error %d%s): %r",
            spec.status.name,
            self.name,
            event.key,
            count,
            f" of {limit}" if limit else "",
            exc,
            exc_info=not isinstance(exc, StaleRead),
        )
        if not limit or count < limit:
            return False
        record = await self._fresh_record(event)
        del self._errors[key]
        if record is None:
            return True
        reason = _AUTO_PAUSE_REASON.format(n=count, err=f"{type(exc).__name__}: {exc}")[:1000]
        # someone else moved the run on; nothing is left to pause
        with contextlib.suppress(VersionConflict):
            await self._update(record, run_state=RunState.PAUSED, run_state_reason=reason)
        return True

    # ------------------------------------------------------------------ hooks

    def _hook_body(
        self, hook: HookSpec[T, StatusT], role: str
    ) -> Callable[[asyncio.Event], Awaitable[None]]:
        topic = run_state_change_topic(self.name)
        wanted = str(int(hook.run_state))
        opts = hook.options

        async def handle(event: Event) -> None:
            if event.headers.get(H_RUN_STATE) != wanted:
                return
            try:
                record = await self.store.lookup(event.key)
            except RecordNotFound:
                return
            run = self.to_run(record)
            if hook.is_async:
                await hook.fn(run)
            else:
                result = await asyncio.to_thread(hook.fn, run)
                if inspect.isawaitable(result):
                    await result

        async def on_error(event: Event, exc: BaseException, attempt: int) -> bool:
            log.warning(
                "statestream: %s hook of %s failed for run %s (attempt %d): %r",
                hook.run_state.label,
                self.name,
                event.key,
                attempt,
                exc,
                exc_info=True,
            )
            return False

        async def body(stopping: asyncio.Event) -> None:
            receiver = await self.streamer.receiver(
                topic, role, poll_interval=opts.polling_frequency
            )
            try:
                await KeyedDispatcher(
                    receiver,
                    handle,
                    on_error,
                    concurrency=opts.concurrency,
                    error_backoff=opts.error_backoff,
                    max_error_backoff=opts.max_error_backoff,
                ).run(stopping)
            finally:
                await receiver.close()

        return body
