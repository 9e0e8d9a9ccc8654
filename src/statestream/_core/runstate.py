"""Run states: the system lifecycle of a run, and the only transitions allowed between them."""

from __future__ import annotations

import enum

__all__ = ["RunState"]


class RunState(enum.IntEnum):
    """Lifecycle of a run. The numeric values match luno/workflow and are what stores persist."""

    UNKNOWN = 0
    INITIATED = 1
    RUNNING = 2
    PAUSED = 3
    CANCELLED = 4
    COMPLETED = 5
    DATA_DELETED = 6
    REQUESTED_DATA_DELETED = 7

    @property
    def label(self) -> str:
        """Human form: ``"Requested Data Deleted"``."""
        return self.name.replace("_", " ").title()

    @property
    def valid(self) -> bool:
        return self is not RunState.UNKNOWN

    @property
    def finished(self) -> bool:
        """No more steps will run: Completed, Cancelled, or data deletion requested or done."""
        return self in _FINISHED

    @property
    def stopped(self) -> bool:
        """Consumers skip the run: Paused, Cancelled, or data deletion requested or done.

        Completed is finished but not stopped.
        """
        return self in _STOPPED

    def can_become(self, other: RunState) -> bool:
        """Whether the controller may move a run from this state to ``other`` (reference §2)."""
        return other in _TRANSITIONS.get(self, frozenset())


_FINISHED = frozenset(
    {
        RunState.COMPLETED,
        RunState.CANCELLED,
        RunState.REQUESTED_DATA_DELETED,
        RunState.DATA_DELETED,
    }
)
_STOPPED = frozenset(
    {
        RunState.PAUSED,
        RunState.CANCELLED,
        RunState.REQUESTED_DATA_DELETED,
        RunState.DATA_DELETED,
    }
)
_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    # An Initiated run must be paused before it can be cancelled, as in luno/workflow.
    RunState.INITIATED: frozenset({RunState.RUNNING, RunState.PAUSED}),
    RunState.RUNNING: frozenset({RunState.COMPLETED, RunState.PAUSED, RunState.CANCELLED}),
    RunState.PAUSED: frozenset({RunState.RUNNING, RunState.CANCELLED}),
    RunState.COMPLETED: frozenset({RunState.REQUESTED_DATA_DELETED}),
    RunState.CANCELLED: frozenset({RunState.REQUESTED_DATA_DELETED}),
    RunState.REQUESTED_DATA_DELETED: frozenset({RunState.DATA_DELETED}),
    RunState.DATA_DELETED: frozenset({RunState.REQUESTED_DATA_DELETED}),
}
