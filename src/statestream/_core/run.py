"""The run a step sees, and the control results a step may return instead of a status."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeAlias

from .runstate import RunState
from .types import StatusT, T

__all__ = [
    "CallbackFn",
    "Cancel",
    "Control",
    "HookFn",
    "Pause",
    "Run",
    "SaveAndRepeat",
    "Skip",
    "StepFn",
    "TimeoutFn",
    "TimerFn",
]


class Control:
    """Base of the results a step returns to do something other than move to a status."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Pause(Control):
    """Pause the run (run state Paused) with a reason; it stays at its status until resumed."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Cancel(Control):
    """Cancel the run for good."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Skip(Control):
    """Write nothing: the event is consumed and the run stays as it is."""


@dataclass(frozen=True, slots=True)
class SaveAndRepeat(Control):
    """Store the (changed) object and run the same step again, behind other waiting runs."""


_SKIP = Skip()
_REPEAT = SaveAndRepeat()


class Run(Generic[T, StatusT]):
    """One run of a workflow, as handed to steps, hooks and returned by ``wait_for``.

    ``object`` is the user's object, decoded for this call; a step may change it in place, and
    what it holds when the step returns is stored with the next status.

    A step ends by returning a status, or one of :meth:`pause`, :meth:`cancel`, :meth:`skip`,
    :meth:`save_and_repeat`. Nothing is written until the step returns, and then only if the run
    was not changed by someone else meanwhile (the write is a compare-and-set on ``version``).

    The stored change is therefore made once, but the function itself may run more than once for
    the same visit (an event delivered again, a retry after an error, a worker that lost its role
    mid-step): side effects inside a step are at least once. Make them idempotent with
    :attr:`idempotency_key`.
    """

    __slots__ = (
        "created_at",
        "foreign_id",
        "object",
        "run_id",
        "run_state",
        "run_state_reason",
        "status",
        "updated_at",
        "version",
        "workflow_name",
    )

    def __init__(
        self,
        *,
        workflow_name: str,
        foreign_id: str,
        run_id: str,
        run_state: RunState,
        status: StatusT,
        object: T,
        created_at: datetime,
        updated_at: datetime,
        version: int,
        run_state_reason: str = "",
    ) -> None:
        self.workflow_name = workflow_name
        self.foreign_id = foreign_id
        self.run_id = run_id
        self.run_state = run_state
        self.status = status
        self.object = object
        self.created_at = created_at
        self.updated_at = updated_at
        self.version = version
        self.run_state_reason = run_state_reason

    @property
    def idempotency_key(self) -> str:
        """``"<run_id>-<version>"``: the same every time this visit of the run is handled.

        Every delivery of the event that brought the run here, and every retry of the step after
        an error, sees the same key; the next write makes a new version, so the next visit gets
        a new key. Pass it to whatever the step changes outside the store so that a repeated call
        has no second effect: an ``Idempotency-Key`` header to a payment API, or a unique column
        in your own table written with ``INSERT ... ON CONFLICT DO NOTHING``::

            async def charge(run):
                await payments.charge(run.object.amount, idempotency_key=run.idempotency_key)
                return Status.CHARGED

        The key names the visit, not the function: a step and an ``on_timeout`` or a callback
        acting on the same visit see the same key (at most one of them moves the run). Add a
        suffix (``f"{run.idempotency_key}-refund"``) when one visit makes several side effects
        that must not be deduplicated against each other.
        """
        return f"{self.run_id}-{self.version}"

    def pause(self, reason: str = "") -> Pause:
        """Return this from a step to pause the run."""
        return Pause(reason)

    def cancel(self, reason: str = "") -> Cancel:
        """Return this from a step to cancel the run."""
        return Cancel(reason)

    def skip(self) -> Skip:
        """Return this from a step to leave the run untouched (the event is consumed)."""
        return _SKIP

    def save_and_repeat(self) -> SaveAndRepeat:
        """Return this from a step to store the object and run the step again later."""
        return _REPEAT

    def __repr__(self) -> str:
        return (
            f"Run(workflow={self.workflow_name!r}, foreign_id={self.foreign_id!r}, "
            f"run_id={self.run_id!r}, status={self.status!r}, "
            f"run_state={self.run_state.name}, version={self.version})"
        )


#: A step: receives the run, returns the next status (or a control result such as ``run.skip()``).
#: A plain ``def`` runs in a worker thread, off the event loop.
StepFn: TypeAlias = (
    "Callable[[Run[T, StatusT]], Awaitable[StatusT | Control]]"
    " | Callable[[Run[T, StatusT]], StatusT | Control]"
)

#: A hook run when a run is paused, cancelled or completed.
HookFn: TypeAlias = "Callable[[Run[T, StatusT]], Awaitable[Any]] | Callable[[Run[T, StatusT]], Any]"

#: A callback: receives the run and the (decoded) payload, returns the next status.
CallbackFn: TypeAlias = (
    "Callable[[Run[T, StatusT], Any], Awaitable[StatusT | Control]]"
    " | Callable[[Run[T, StatusT], Any], StatusT | Control]"
)

#: A timer: given the run that just reached the status and the time now, when should its timeout
#: fire (a timezone-aware datetime), or ``None`` for no timeout.
TimerFn: TypeAlias = (
    "Callable[[Run[T, StatusT], datetime], Awaitable[datetime | None]]"
    " | Callable[[Run[T, StatusT], datetime], datetime | None]"
)

#: What runs when a timeout fires: returns the next status, like a step.
TimeoutFn: TypeAlias = (
    "Callable[[Run[T, StatusT], datetime], Awaitable[StatusT | Control]]"
    " | Callable[[Run[T, StatusT], datetime], StatusT | Control]"
)
