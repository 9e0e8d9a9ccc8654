"""The validated definition of a workflow, as ``Builder.build`` hands it to the engine."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic

from .._core.protocols import Codec, ConnectorSource, EventStreamer, RecordStore
from .._core.records import Event
from .._core.run import CallbackFn, HookFn, StepFn, TimeoutFn, TimerFn
from .._core.runstate import RunState
from .._core.types import StatusT, T
from .graph import Graph
from .options import ProcessOptions

__all__ = [
    "CallbackSpec",
    "ConnectionSpec",
    "ConnectorSpec",
    "Definition",
    "HookSpec",
    "StepSpec",
    "TimeoutSpec",
]


@dataclass(frozen=True, slots=True)
class StepSpec(Generic[T, StatusT]):
    status: StatusT
    fn: StepFn[T, StatusT]
    destinations: tuple[StatusT, ...]
    options: ProcessOptions
    is_async: bool


@dataclass(frozen=True, slots=True)
class CallbackSpec(Generic[T, StatusT]):
    status: StatusT
    fn: CallbackFn[T, StatusT]
    destinations: tuple[StatusT, ...]
    payload_type: type[Any]
    payload_codec: Codec[Any] | None
    is_async: bool


@dataclass(frozen=True, slots=True)
class TimeoutSpec(Generic[T, StatusT]):
    status: StatusT
    timer: TimerFn[T, StatusT]
    fn: TimeoutFn[T, StatusT]
    destinations: tuple[StatusT, ...]
    options: ProcessOptions
    timer_is_async: bool
    is_async: bool


@dataclass(frozen=True, slots=True)
class ConnectorSpec(Generic[T, StatusT]):
    name: str
    source: ConnectorSource
    #: ``handler(workflow, event)``: the public Workflow is passed as its first argument; it
    #: may return Triggers and Callbacks to apply.
    fn: Callable[[Any, Event], Awaitable[object]]
    options: ProcessOptions


@dataclass(frozen=True, slots=True)
class ConnectionSpec:
    """``Builder.connect``: react to another workflow's runs reaching a status."""

    name: str
    #: the other workflow: its name, object codec and statuses (value -> member)
    source: str
    codec: Codec[Any]
    statuses: dict[int, enum.IntEnum]
    at: enum.IntEnum
    #: ``at`` is terminal in the other workflow (its arrivals are Completed run-state changes)
    terminal: bool
    #: ``fn(other_run)`` -> Trigger | Callback | a sequence of them | None
    fn: Callable[[Any], Any]
    is_async: bool
    #: where the other workflow's events and records are (None: this workflow's own)
    streamer: EventStreamer | None
    store: RecordStore | None
    catch_up: bool
    options: ProcessOptions


@dataclass(frozen=True, slots=True)
class HookSpec(Generic[T, StatusT]):
    run_state: RunState
    fn: HookFn[T, StatusT]
    is_async: bool
    options: ProcessOptions


@dataclass(slots=True)
class Definition(Generic[T, StatusT]):
    """Everything ``build()`` validated, handed to the Workflow."""

    name: str
    object_type: type[T]
    status_type: type[StatusT]
    codec: Codec[T]
    graph: Graph
    steps: dict[int, StepSpec[T, StatusT]]
    hooks: dict[RunState, HookSpec[T, StatusT]]
    defaults: ProcessOptions
    outbox_options: ProcessOptions
    start_status: StatusT
    statuses: dict[int, StatusT] = field(default_factory=dict)
    callbacks: dict[int, list[CallbackSpec[T, StatusT]]] = field(default_factory=dict)
    timeouts: dict[int, TimeoutSpec[T, StatusT]] = field(default_factory=dict)
    connectors: list[ConnectorSpec[T, StatusT]] = field(default_factory=list)
    connections: list[ConnectionSpec] = field(default_factory=list)
    delete_fn: Callable[[T], T] | None = None
    pause_retry: float | None = 3600.0
    pause_retry_limit: int = 5
    #: how long a poller's claim on a due timer lasts (``build(timeout_claim=)``)
    timeout_claim: float = 60.0
    #: prune events and finished timers older than this (``None``: keep them)
    retention: float | None = 7 * 86400.0
    retention_interval: float = 3600.0
