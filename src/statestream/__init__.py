"""statestream: durable, event-driven, typed workflows for asyncio services.

>>> from statestream import Builder
>>> from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer
"""

from . import errors
from ._builder import Builder
from ._core.actions import Callback, Trigger
from ._core.clock import SystemClock
from ._core.protocols import (
    Clock,
    Codec,
    ConnectorSource,
    EventHistory,
    EventReceiver,
    EventStreamer,
    Lease,
    Observer,
    RecordStore,
    RoleMembers,
    RoleScheduler,
    RunCounter,
    ScanLister,
    SnapshotStore,
    TimeoutStore,
    Work,
)
from ._core.records import (
    Event,
    Message,
    Order,
    OutboxEvent,
    ParkedEvent,
    Record,
    RecordFilter,
    RunCounts,
    ScanPage,
    TimeoutRecord,
    delete_topic,
    run_state_change_topic,
    status_topic,
)
from ._core.run import Cancel, Control, Pause, Run, SaveAndRepeat, Skip
from ._core.runstate import RunState
from ._definition.options import ProcessOptions
from ._engine.callbacks import CallbackOutcome, CallbackResult
from ._engine.dispatch import ProcessInfo, ProcessState
from ._engine.observe import CompositeObserver, NullObserver
from ._engine.schedules import CronSpec, Schedule
from ._engine.source import StreamSource
from ._engine.timeouts import after, at
from ._workflow import Workflow
from .errors import (
    AdapterConnectionError,
    AdapterError,
    CodecError,
    ConfigurationError,
    InvalidInput,
    InvalidObject,
    InvalidTransition,
    RecordNotFound,
    RunStopped,
    StaleRead,
    TimeoutNotFound,
    UnknownStatus,
    UserCodeError,
    VersionConflict,
    WaitTimeout,
    WorkflowError,
    WorkflowInProgress,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterConnectionError",
    "AdapterError",
    "Builder",
    "Callback",
    "CallbackOutcome",
    "CallbackResult",
    "Cancel",
    "Clock",
    "Codec",
    "CodecError",
    "CompositeObserver",
    "ConfigurationError",
    "ConnectorSource",
    "Control",
    "CronSpec",
    "Event",
    "EventHistory",
    "EventReceiver",
    "EventStreamer",
    "InvalidInput",
    "InvalidObject",
    "InvalidTransition",
    "Lease",
    "Message",
    "NullObserver",
    "Observer",
    "Order",
    "OutboxEvent",
    "ParkedEvent",
    "Pause",
    "ProcessInfo",
    "ProcessOptions",
    "ProcessState",
    "Record",
    "RecordFilter",
    "RecordNotFound",
    "RecordStore",
    "RoleMembers",
    "RoleScheduler",
    "Run",
    "RunCounter",
    "RunCounts",
    "RunState",
    "RunStopped",
    "SaveAndRepeat",
    "ScanLister",
    "ScanPage",
    "Schedule",
    "Skip",
    "SnapshotStore",
    "StaleRead",
    "StreamSource",
    "SystemClock",
    "TimeoutNotFound",
    "TimeoutRecord",
    "TimeoutStore",
    "Trigger",
    "UnknownStatus",
    "UserCodeError",
    "VersionConflict",
    "WaitTimeout",
    "Work",
    "Workflow",
    "WorkflowError",
    "WorkflowInProgress",
    "__version__",
    "after",
    "at",
    "delete_topic",
    "errors",
    "run_state_change_topic",
    "status_topic",
]
