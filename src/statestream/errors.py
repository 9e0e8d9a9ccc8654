"""The statestream error tree.

Every exception the library raises on purpose is a subclass of :class:`WorkflowError`::

    WorkflowError
     +-- ConfigurationError          a mistake in a workflow's definition (Builder, build())
     +-- InvalidInput                bad arguments to a call (unknown status, unencodable text)
     |    +-- UnknownStatus
     |    +-- InvalidObject          an object that cannot be written (wrong type, bad field...)
     |    +-- EventRejected          a connector refuses an outside message: counted and skipped
     +-- RecordNotFound              no run with that run ID / foreign ID
     +-- WorkflowInProgress          trigger refused: an unfinished run exists for the foreign ID
     +-- InvalidTransition           a run-state or status change that the tables do not allow
     +-- VersionConflict             a compare-and-set write lost: the record changed meanwhile
     +-- StaleRead                   the store returned an older version than an event announced
     +-- WaitTimeout                 wait_for() ran out of time (also a TimeoutError)
     +-- RunStopped                  wait_for(): the run stopped or finished elsewhere
     +-- TimeoutNotFound
     +-- UserCodeError               user code raised CancelledError, GeneratorExit,
     |                               KeyboardInterrupt or SystemExit: an error of that run
     +-- AdapterError                a backend failed; adapters raise this or a subclass
          +-- AdapterConnectionError
          +-- CodecError             stored bytes could not be decoded

Adapters translate their driver's exceptions into :class:`AdapterError` subclasses with
``raise ... from exc`` so that callers can handle any backend the same way.
"""

from __future__ import annotations

__all__ = [
    "AdapterConnectionError",
    "AdapterError",
    "CodecError",
    "ConfigurationError",
    "EventRejected",
    "InvalidInput",
    "InvalidObject",
    "InvalidTransition",
    "RecordNotFound",
    "RunStopped",
    "StaleRead",
    "TimeoutNotFound",
    "UnknownStatus",
    "UserCodeError",
    "VersionConflict",
    "WaitTimeout",
    "WorkflowError",
    "WorkflowInProgress",
]


class WorkflowError(Exception):
    """Root of every error statestream raises on purpose."""


class ConfigurationError(WorkflowError):
    """The workflow definition is invalid: raised by the Builder and ``build()``."""


class InvalidInput(WorkflowError, ValueError):
    """An argument passed to a public call is invalid."""


class UnknownStatus(InvalidInput):
    """A status that is not part of the workflow's graph (or not a member of its enum)."""


class InvalidObject(InvalidInput, TypeError):
    """An object that cannot be written for a workflow: the caller's mistake, nothing is stored.

    It is not of the workflow's object type, or it holds a value that cannot be encoded (a
    lone surrogate in a ``str``...) or that would not decode again (a field of the wrong type).
    """


class EventRejected(InvalidInput):
    """A connector's handler refuses an outside message: it does not decode, or it is not one
    the workflow acts on in a way that retrying could fix.

    Raised by a handler (or by a source's translator, :class:`~statestream.adapters.kafka.
    KafkaSource`), it makes the engine count the message in the process's
    :attr:`~statestream.ProcessInfo.skipped`, report it to the observer (``event_skipped`` with
    reason ``"rejected: <message>"``), log it (rate-limited) and move on; it is never retried.
    """


class RecordNotFound(WorkflowError, LookupError):
    """No record matches the run ID or foreign ID."""


class WorkflowInProgress(WorkflowError):
    """A run for this foreign ID is not finished yet, so a new one cannot be triggered."""


class InvalidTransition(WorkflowError):
    """The requested change of run state or status is not allowed from the current one."""


class VersionConflict(WorkflowError):
    """A compare-and-set write found another version than expected: someone else wrote first."""

    def __init__(self, run_id: str, expected: int, actual: int | None) -> None:
        self.run_id = run_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"record {run_id} was modified concurrently: "
            f"expected version {expected}, found {actual}"
        )


class StaleRead(WorkflowError):
    """The store returned an older version of a record than an event announced (replica lag)."""


class WaitTimeout(WorkflowError, TimeoutError):
    """``wait_for`` did not see the run reach the status in time."""


class RunStopped(WorkflowError):
    """``wait_for``: the run finished (completed elsewhere, cancelled, data deleted) without
    reaching the status. A paused run is waited for: it may be resumed."""


class TimeoutNotFound(WorkflowError, LookupError):
    """No timeout with that ID."""


class UserCodeError(WorkflowError):
    """A step, callback, timer, hook or connector handler raised a ``BaseException`` that is not
    an ``Exception`` (``asyncio.CancelledError`` not caused by the engine's own stop,
    ``GeneratorExit``, ``KeyboardInterrupt``, ``SystemExit``).

    It counts as an error of that run, like any exception the function raised, so user code
    cannot stop the worker. The original is ``__cause__`` and :attr:`original`.
    """

    def __init__(self, message: str, original: BaseException) -> None:
        super().__init__(message)
        self.original = original


class AdapterError(WorkflowError):
    """A backend (store, streamer, scheduler) failed."""


class AdapterConnectionError(AdapterError, ConnectionError):
    """A backend could not be reached."""


class CodecError(AdapterError):
    """Stored bytes could not be decoded into the workflow's object type.

    The data is corrupt, or was written for another type. Objects that cannot be written are
    refused with :class:`InvalidObject` instead; a custom codec may raise this for either.
    """
