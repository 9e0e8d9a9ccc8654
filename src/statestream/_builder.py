"""Builder: declare a workflow's steps, hooks and options, then bind it to adapters."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Generic, TypeAlias, TypeVar, Unpack

from ._codec import check_status_values, codec_for
from ._core.actions import Callback, Trigger
from ._core.clock import SystemClock
from ._core.protocols import (
    Clock,
    Codec,
    ConnectorSource,
    EventStreamer,
    Observer,
    RecordStore,
    RoleScheduler,
    TimeoutStore,
)
from ._core.records import Event
from ._core.run import CallbackFn, HookFn, Run, StepFn, TimeoutFn, TimerFn
from ._core.runstate import RunState
from ._core.types import Seconds, StatusT, T, is_async_callable, to_seconds
from ._definition.graph import Graph
from ._definition.options import (
    ConnectorOptions,
    OutboxOptions,
    StepOptions,
    TimeoutOptions,
    resolve_options,
    validate_overrides,
)
from ._definition.specs import (
    CallbackSpec,
    ConnectionSpec,
    ConnectorSpec,
    Definition,
    HookSpec,
    StepSpec,
    TimeoutSpec,
)
from ._workflow import Workflow
from .errors import ConfigurationError

__all__ = ["Builder", "ConnectResult"]

#: The other workflow's object and status types, in ``Builder.connect``.
OT = TypeVar("OT")
OS = TypeVar("OS", bound=enum.IntEnum)

#: What a connection's function returns: what to do in this workflow (nothing for ``None``).
ConnectResult: TypeAlias = "Trigger[T] | Callback | list[Trigger[T] | Callback] | None"


class Builder(Generic[T, StatusT]):
    """Declares a workflow: a typed state machine over the members of an ``IntEnum``.

    >>> b = Builder("orders", Order, Status)
    >>> b.add_step(Status.CREATED, pay, Status.PAID, parallel_count=2)
    >>> wf = b.build(MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler())

    Args:
        name: the workflow's name; stored with every run and used in topic and role names.
        object_type: the type of the object each run carries (a dataclass, pydantic model, msgspec
            Struct, TypedDict, ``dict`` or ``bytes``).
        status_type: the ``IntEnum`` of statuses. The value 0 is reserved and cannot be a step's
            status or destination.
        codec: how to turn the object into bytes; JSON for the supported types by default.

    Raises:
        ConfigurationError: for any mistake in the definition, at the call that makes it.
    """

    def __init__(
        self,
        name: str,
        object_type: type[T],
        status_type: type[StatusT],
        *,
        codec: Codec[T] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"workflow name must be a non-empty string, got {name!r}")
        if not isinstance(status_type, type) or not issubclass(status_type, enum.IntEnum):
            raise ConfigurationError(f"status_type must be an IntEnum class, got {status_type!r}")
        if not isinstance(object_type, type):
            raise ConfigurationError(f"object_type must be a class, got {object_type!r}")
        check_status_values(status_type)
        self._name = name
        self._object_type = object_type
        self._status_type = status_type
        self._codec: Codec[T] = codec if codec is not None else codec_for(object_type)
        self._graph = Graph()
        self._steps: dict[int, StepSpec[T, StatusT]] = {}
        self._step_overrides: dict[int, dict[str, Any]] = {}
        self._hooks: dict[RunState, tuple[HookFn[T, StatusT], dict[str, Any]]] = {}
        self._defaults: dict[str, Any] = {}
        self._outbox: dict[str, Any] = {"polling_frequency": 0.25, "error_backoff": 0.5}
        self._pending: list[tuple[StatusT, StepFn[T, StatusT], tuple[StatusT, ...]]] = []
        self._callbacks: dict[int, list[CallbackSpec[T, StatusT]]] = {}
        self._timeouts: dict[int, tuple[Any, ...]] = {}
        self._connectors: dict[str, tuple[ConnectorSource, Any, dict[str, Any]]] = {}
        self._delete_fn: Callable[[T], T] | None = None
        self._connections: dict[str, tuple[Any, ...]] = {}

    @property
    def name(self) -> str:
        return self._name

    def _status(self, status: object, what: str) -> StatusT:
        if not isinstance(status, self._status_type):
            raise ConfigurationError(
                f"{what} must be a member of {self._status_type.__name__}, got {status!r}"
            )
        if int(status) == 0:
            raise ConfigurationError(f"{what}: status value 0 is reserved for 'unknown'")
        return status

    def defaults(self, **options: Unpack[StepOptions]) -> Builder[T, StatusT]:
        """Set workflow-wide defaults; only the options given change (unlike luno/workflow's
        ``WithDefaultOptions``, unset ones keep the library defaults instead of becoming zero)."""
        self._defaults.update(validate_overrides(options, StepOptions, "defaults()"))
        return self

    def outbox(self, **options: Unpack[OutboxOptions]) -> Builder[T, StatusT]:
        """Tune the outbox relay (polling for other processes' writes, backoff after errors)."""
        self._outbox.update(validate_overrides(options, OutboxOptions, "outbox()"))
        return self

    def add_step(
        self,
        status: StatusT,
        fn: StepFn[T, StatusT],
        *to: StatusT,
        **options: Unpack[StepOptions],
    ) -> Builder[T, StatusT]:
        """Add the step that consumes runs arriving at ``status``.

        Args:
            status: where the step starts; one step per status.
            fn: ``async def fn(run) -> Status`` (or a plain ``def``, run in a thread).
            *to: every status ``fn`` may return; returning another one is an error and writes
                nothing.
            parallel_count: ... and the other options: see :class:`ProcessOptions`; unset ones
                take the workflow defaults.
        """
        src = self._status(status, "add_step status")
        if not callable(fn):
            raise ConfigurationError(f"step for {src!r} must be callable, got {fn!r}")
        if int(src) in self._step_overrides:
            raise ConfigurationError(f"a step for {src!r} is already declared")
        if not to:
            raise ConfigurationError(f"step for {src!r} must declare at least one next status")
        dests = tuple(self._status(d, f"next status of step {src!r}") for d in to)
        self._step_overrides[int(src)] = validate_overrides(options, StepOptions, "add_step()")
        for dst in dests:
            self._graph.add_edge(int(src), int(dst))
        self._pending.append((src, fn, dests))
        return self

    def step(
        self, status: StatusT, *, to: StatusT | tuple[StatusT, ...], **options: Any
    ) -> Callable[[StepFn[T, StatusT]], StepFn[T, StatusT]]:
        """Decorator form of :meth:`add_step`: ``@b.step(Status.CREATED, to=Status.PAID)``."""
        dests = to if isinstance(to, tuple) else (to,)

        def register(fn: StepFn[T, StatusT]) -> StepFn[T, StatusT]:
            self.add_step(status, fn, *dests, **options)
            return fn

        return register

    def _destinations(
        self, src: StatusT, to: tuple[StatusT, ...], what: str
    ) -> tuple[StatusT, ...]:
        if not to:
            raise ConfigurationError(f"{what} at {src!r} must declare at least one next status")
        return tuple(self._status(d, f"next status of {what} at {src!r}") for d in to)

    def add_callback(
        self,
        status: StatusT,
        fn: CallbackFn[T, StatusT],
        *to: StatusT,
        payload_type: type[Any] = bytes,
    ) -> Builder[T, StatusT]:
        """Add a callback: ``wf.callback(foreign_id, status, payload)`` calls ``fn(run, payload)``
        for a run waiting at ``status``, and moves it to the status ``fn`` returns.

        Several callbacks may share a status: they are tried in the order declared, each with the
        whole payload, until one returns something other than ``run.skip()``.

        Args:
            payload_type: ``bytes`` (the default, passed as is) or a type the codec supports (a
                dataclass, pydantic model...), decoded from JSON before ``fn`` is called.
        """
        src = self._status(status, "add_callback status")
        if not callable(fn):
            raise ConfigurationError(f"callback for {src!r} must be callable, got {fn!r}")
        dests = self._destinations(src, to, "callback")
        payload_codec = None if payload_type is bytes else codec_for(payload_type)
        for dst in dests:
            self._graph.add_edge(int(src), int(dst))
        spec = CallbackSpec(src, fn, dests, payload_type, payload_codec, is_async_callable(fn))
        self._callbacks.setdefault(int(src), []).append(spec)
        return self

    def add_timeout(
        self,
        status: StatusT,
        timer: TimerFn[T, StatusT],
        on_timeout: TimeoutFn[T, StatusT],
        *to: StatusT,
        **options: Unpack[TimeoutOptions],
    ) -> Builder[T, StatusT]:
        """Add a durable timer at ``status``.

        When a run reaches ``status``, ``timer(run, now)`` says when its timeout fires (a
        timezone-aware datetime; a time already past fires at once) or ``None`` for no timeout;
        the time is kept in the timeout store, one timer per visit of the status, and the timer
        is cancelled when the run leaves the status. When it is due and the run is still at
        ``status`` on the same visit, ``on_timeout(run, now)`` returns the next status, as a
        step does; one poller at a time runs it (see ``build(timeout_claim=)``). See
        :func:`after` and :func:`at` for common timers. One timeout per status.
        """
        src = self._status(status, "add_timeout status")
        for what, f in (("timer", timer), ("on_timeout", on_timeout)):
            if not callable(f):
                raise ConfigurationError(f"{what} for {src!r} must be callable, got {f!r}")
        if int(src) in self._timeouts:
            raise ConfigurationError(f"a timeout for {src!r} is already declared")
        dests = self._destinations(src, to, "timeout")
        overrides = validate_overrides(options, TimeoutOptions, "add_timeout()")
        for dst in dests:
            self._graph.add_edge(int(src), int(dst))
        self._timeouts[int(src)] = (src, timer, on_timeout, dests, overrides)
        return self

    def add_connector(
        self,
        name: str,
        source: ConnectorSource,
        handler: Callable[[Workflow[T, StatusT], Event], Awaitable[ConnectResult[T] | object]]
        | None = None,
        **options: Unpack[ConnectorOptions],
    ) -> Builder[T, StatusT]:
        """Consume an outside stream: ``await handler(wf, event)`` for every event of ``source``.

        The handler acts on the workflow itself, or returns what to do: a :class:`Trigger`, a
        :class:`Callback`, a list of them or None (other values are ignored). Returned actions
        are applied idempotently: a Trigger's run ID is derived from the connector's name and
        the event's topic and ID, so a redelivered event starts no second run. Without
        ``handler``, ``source.handle`` is used (a source that translates its own messages, such
        as :class:`statestream.adapters.kafka.KafkaSource`).

        Events are spread over ``parallel_count`` shards: by the source itself when it
        ``shards_itself`` (Kafka: by partition), else by a stable hash of ``event.key``. Each is
        handled at least once (a handler that acts itself must be idempotent); failures are
        retried with backoff; an event the handler refuses with
        :class:`~statestream.errors.EventRejected` is counted, logged and skipped.
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"connector name must be a non-empty string, got {name!r}")
        if name in self._connectors:
            raise ConfigurationError(f"a connector named {name!r} is already declared")
        if not isinstance(source, ConnectorSource):
            raise ConfigurationError(f"connector source must have receiver(name), got {source!r}")
        if handler is None:
            handler = getattr(source, "handle", None)
            if handler is None:
                raise ConfigurationError(
                    f"add_connector({name!r}) needs a handler: {source!r} has no handle()"
                )
        if not is_async_callable(handler):
            raise ConfigurationError(f"connector handler must be an async function: {handler!r}")
        overrides = validate_overrides(options, ConnectorOptions, "add_connector()")
        self._connectors[name] = (source, handler, overrides)
        return self

    def connect(
        self,
        other: Workflow[OT, OS] | Builder[OT, OS],
        *,
        at: OS,
        to: Callable[[Run[OT, OS]], Awaitable[ConnectResult[T]] | ConnectResult[T]],
        name: str | None = None,
        streamer: EventStreamer | None = None,
        store: RecordStore | None = None,
        catch_up: bool = True,
        **options: Unpack[ConnectorOptions],
    ) -> Builder[T, StatusT]:
        """React to runs of another workflow reaching a status: ``to(other_run)`` runs (at least
        once) for every run of ``other`` that arrives at ``at``, with that run decoded by the
        other workflow's codec (a typed ``Run[Other, OtherStatus]``), and returns what to do
        here: :class:`~statestream.Trigger` a run, deliver a :class:`~statestream.Callback` to a
        run waiting at a status, a list of those, or ``None``.

        Both are idempotent per visit: a redelivered event of the other workflow starts no
        second run (the run ID is derived from the other run's ID and version) and moves no run
        twice (a callback moves the run off the status it waited at). A callback that comes
        before its run (not triggered yet, or still before the status) waits for it, retried
        with backoff; see :class:`~statestream.Callback`.

        Args:
            other: the other workflow, or its Builder (in a process that does not run it).
            at: a status of the other workflow. For a terminal one, the arrivals are the runs'
                completions there.
            to: ``fn(run)``, async or plain (a plain ``def`` runs in a worker thread).
            name: the connection's name, in its role and process names (default
                ``"<other>-<at>"``); unique per workflow.
            streamer, store: where the other workflow's events and records are. Default: the
                other workflow's own when ``other`` is a Workflow, else this workflow's.
            catch_up: when the connection is new (its consumer name was never seen), it starts
                at the newest event, not at the other workflow's history; with ``catch_up`` it
                also picks up the runs at ``at`` now (Initiated or Running) from the other
                workflow's record store. Never for a terminal ``at``: those runs are history.
            parallel_count: ... and the other options: as :meth:`add_connector`; runs of the
                other workflow are spread over the shards by a stable hash of their run ID.
        """
        from ._workflow import Workflow

        if isinstance(other, Workflow):
            source = other.name
            status_type: type[enum.IntEnum] = other._def.status_type
        elif isinstance(other, Builder):
            source = other.name
            status_type = other._status_type
        else:
            raise ConfigurationError(f"connect() needs a Workflow or a Builder, got {other!r}")
        if not isinstance(at, status_type) or int(at) == 0:
            raise ConfigurationError(
                f"connect(at=) must be a member of {status_type.__name__} other than 0, got {at!r}"
            )
        if not callable(to):
            raise ConfigurationError(f"connect(to=) must be callable, got {to!r}")
        if name is None:
            name = f"{source}-{at.name.lower()}"
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"connection name must be a non-empty string, got {name!r}")
        if name in self._connections:
            raise ConfigurationError(
                f"a connection named {name!r} is already declared: pass connect(name=...)"
            )
        if streamer is not None and not isinstance(streamer, EventStreamer):
            raise ConfigurationError(f"streamer does not implement EventStreamer: {streamer!r}")
        if store is not None and not isinstance(store, RecordStore):
            raise ConfigurationError(f"store does not implement RecordStore: {store!r}")
        if not isinstance(catch_up, bool):
            raise ConfigurationError(f"catch_up must be a bool, got {catch_up!r}")
        overrides = validate_overrides(options, ConnectorOptions, "connect()")
        self._connections[name] = (other, at, to, streamer, store, catch_up, overrides)
        return self

    def _connection_specs(self) -> list[ConnectionSpec]:
        from ._workflow import Workflow

        specs = []
        for name, (other, at, fn, streamer, store, catch_up, over) in self._connections.items():
            if isinstance(other, Workflow):
                d = other._def
                codec, statuses, graph = d.codec, d.statuses, d.graph
                streamer = streamer or other.streamer
                store = store or other.store
            else:
                codec, graph = other._codec, other._graph
                statuses = {int(s): s for s in other._status_type}
            if int(at) not in graph:
                raise ConfigurationError(
                    f"connection {name!r}: {at!r} is not a status of workflow {other.name!r}"
                )
            specs.append(
                ConnectionSpec(
                    name=name,
                    source=other.name,
                    codec=codec,
                    statuses=dict(statuses),
                    at=at,
                    terminal=graph.is_terminal(int(at)),
                    fn=fn,
                    is_async=is_async_callable(fn),
                    streamer=streamer,
                    store=store,
                    catch_up=catch_up,
                    options=resolve_options(self._defaults, over),
                )
            )
        return specs

    def on_delete_data(self, fn: Callable[[T], T]) -> Builder[T, StatusT]:
        """How to scrub a run's object when its data is deleted: ``fn(obj)`` returns the object
        to keep (for example with personal fields blanked). Default: ``object_type()``."""
        if not callable(fn):
            raise ConfigurationError(f"on_delete_data needs a callable, got {fn!r}")
        self._delete_fn = fn
        return self

    def _hook(self, state: RunState, fn: HookFn[T, StatusT]) -> Builder[T, StatusT]:
        if not callable(fn):
            raise ConfigurationError(f"{state.label} hook must be callable, got {fn!r}")
        if state in self._hooks:
            raise ConfigurationError(f"a hook for {state.label} is already declared")
        self._hooks[state] = (fn, {})
        return self

    def on_pause(self, fn: HookFn[T, StatusT]) -> Builder[T, StatusT]:
        """Run ``fn(run)`` after a run is paused (at least once per pause)."""
        return self._hook(RunState.PAUSED, fn)

    def on_cancel(self, fn: HookFn[T, StatusT]) -> Builder[T, StatusT]:
        """Run ``fn(run)`` after a run is cancelled."""
        return self._hook(RunState.CANCELLED, fn)

    def on_complete(self, fn: HookFn[T, StatusT]) -> Builder[T, StatusT]:
        """Run ``fn(run)`` after a run completes (reaches a status with no outgoing step)."""
        return self._hook(RunState.COMPLETED, fn)

    def build(
        self,
        streamer: EventStreamer,
        store: RecordStore,
        scheduler: RoleScheduler,
        *,
        timeout_store: TimeoutStore | None = None,
        clock: Clock | None = None,
        outbox: bool = True,
        start_at: StatusT | None = None,
        pause_retry: Seconds | None = 3600.0,
        pause_retry_limit: int = 5,
        observer: Observer | None = None,
        timeout_claim: Seconds = 60.0,
        retention: Seconds | None = timedelta(days=7),
        retention_interval: Seconds = 3600.0,
        sync_workers: int = 32,
    ) -> Workflow[T, StatusT]:
        """Validate the definition and bind it to adapters.

        Args:
            streamer, store, scheduler: the adapters (see :mod:`statestream.adapters`).
            timeout_store: where durable timers live (needed once timeouts are declared).
            clock: time source; :class:`statestream.testing.FakeClock` in tests.
            outbox: run the outbox relay in this workflow's processes. Turn it off only when
                something else publishes the store's outbox.
            start_at: the default status of new runs (default: the first status declared that
                no step leads to).
            pause_retry: resume paused runs automatically after this long (``None`` disables it).
            pause_retry_limit: after this many automatic resumes a run stays paused until it is
                resumed by hand (so that a run that keeps failing does not cycle for ever).
            observer: hears the engine's moments (work, skips, lag, writes, leases, relay
                batches) for metrics and tracing; see :class:`~statestream.Observer`. Combine
                several with :class:`~statestream.CompositeObserver`.
            timeout_claim: how long a timeout poller holds a due timer while ``on_timeout``
                runs. Other pollers leave a claimed timer alone, so it must be longer than
                ``on_timeout`` takes; if a poller dies, the timer fires elsewhere after it.
            retention: events that every consumer has acknowledged, and completed or cancelled
                timers, are deleted once they are this old (``None`` keeps them for ever).
                Streamers with their own retention (Kafka) ignore it.
            retention_interval: how often the retention process prunes.
            sync_workers: threads for plain ``def`` steps, callbacks, timers and hooks: the
                workflow's own pool of daemon threads, so that a hung one can neither starve
                other code's use of the loop's default executor nor keep the process alive
                after ``stop``.

        Raises:
            ConfigurationError: the graph or the adapters are not usable.
        """
        from ._workflow import Workflow

        for value, proto, what in (
            (streamer, EventStreamer, "streamer"),
            (store, RecordStore, "store"),
            (scheduler, RoleScheduler, "scheduler"),
        ):
            if not isinstance(value, proto):
                raise ConfigurationError(f"{what} does not implement {proto.__name__}: {value!r}")
        into = getattr(store, "publishes_into", None)
        if into is not None and into is not streamer:
            # Else the events go where no consumer of this workflow reads: every run would hang.
            raise ConfigurationError(
                f"the record store writes each event into {into!r} (its publish_to), but the "
                f"workflow reads its events from {streamer!r}: pass that streamer to build(), or "
                "build the store without publish_to (its outbox relay then publishes each event "
                "to the workflow's streamer, as for Kafka)"
            )
        if timeout_store is not None and not isinstance(timeout_store, TimeoutStore):
            raise ConfigurationError(
                f"timeout_store does not implement TimeoutStore: {timeout_store!r}"
            )
        if observer is not None and not isinstance(observer, Observer):
            raise ConfigurationError(
                f"observer does not implement Observer (subclass NullObserver): {observer!r}"
            )
        if self._timeouts and timeout_store is None:
            raise ConfigurationError(
                f"workflow {self._name!r} has timeouts: pass build(..., timeout_store=...)"
            )
        if not self._pending and not self._callbacks and not self._timeouts:
            raise ConfigurationError(f"workflow {self._name!r} has no steps")
        retry = None if pause_retry is None else to_seconds(pause_retry, "pause_retry")
        if isinstance(pause_retry_limit, bool) or not isinstance(pause_retry_limit, int):
            raise ConfigurationError(f"pause_retry_limit must be an int, got {pause_retry_limit!r}")
        if pause_retry_limit < 1:
            raise ConfigurationError(f"pause_retry_limit must be >= 1, got {pause_retry_limit!r}")
        claim = to_seconds(timeout_claim, "timeout_claim")
        keep = None if retention is None else to_seconds(retention, "retention")
        prune_every = to_seconds(retention_interval, "retention_interval")
        if isinstance(sync_workers, bool) or not isinstance(sync_workers, int) or sync_workers < 1:
            raise ConfigurationError(f"sync_workers must be an int >= 1, got {sync_workers!r}")
        starting = self._graph.starting_nodes
        if not starting:
            raise ConfigurationError(
                f"workflow {self._name!r} has no starting status: every status is the "
                "destination of some step"
            )
        defaults = resolve_options(self._defaults, {})
        steps = {
            int(src): StepSpec(
                src,
                fn,
                dests,
                resolve_options(self._defaults, self._step_overrides[int(src)]),
                is_async_callable(fn),
            )
            for src, fn, dests in self._pending
        }
        hooks = {
            state: HookSpec(state, fn, is_async_callable(fn), resolve_options(self._defaults, over))
            for state, (fn, over) in self._hooks.items()
        }
        statuses = {int(s): s for s in self._status_type}
        start = statuses[starting[0]]
        if start_at is not None:
            start = self._status(start_at, "start_at")
            if int(start) not in self._graph or self._graph.is_terminal(int(start)):
                raise ConfigurationError(f"start_at {start!r} is not a status a step starts from")
        definition = Definition(
            name=self._name,
            object_type=self._object_type,
            status_type=self._status_type,
            codec=self._codec,
            graph=self._graph.copy(),
            steps=steps,
            hooks=hooks,
            defaults=defaults,
            outbox_options=resolve_options(self._defaults, self._outbox),
            start_status=start,
            statuses=statuses,
            callbacks={k: list(v) for k, v in self._callbacks.items()},
            timeouts={
                key: TimeoutSpec(
                    src,
                    timer,
                    fn,
                    dests,
                    resolve_options(self._defaults, over),
                    is_async_callable(timer),
                    is_async_callable(fn),
                )
                for key, (src, timer, fn, dests, over) in self._timeouts.items()
            },
            connectors=[
                ConnectorSpec(name, source, fn, resolve_options(self._defaults, over))
                for name, (source, fn, over) in self._connectors.items()
            ],
            connections=self._connection_specs(),
            delete_fn=self._delete_fn,
            pause_retry=retry,
            pause_retry_limit=pause_retry_limit,
            timeout_claim=claim,
            retention=keep,
            retention_interval=prune_every,
        )
        return Workflow(
            definition,
            streamer=streamer,
            store=store,
            scheduler=scheduler,
            timeout_store=timeout_store,
            clock=clock or SystemClock(),
            outbox=outbox,
            observer=observer,
            sync_workers=sync_workers,
        )
