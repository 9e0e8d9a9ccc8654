"""What a connection between two workflows does with a run of the other workflow.

``Builder.connect(other, at=Other.SHIPPED, to=fn)`` calls ``fn(other_run)`` whenever a run of the
other workflow reaches ``at``; ``fn`` returns one of these (or several, or ``None`` for nothing).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Callback", "Trigger"]

O = TypeVar("O")  # noqa: E741 - the connected workflow's object type


@dataclass(frozen=True, slots=True)
class Trigger(Generic[O]):
    """Start a run of this workflow for ``foreign_id``.

    The run ID is derived from the other run's ID and version (the visit of ``at``) and the
    connection's name (for a connector: from its name and the event's topic and ID), so a
    redelivered event starts no second run. While ``foreign_id`` has an
    unfinished run (running or paused), the trigger is skipped (logged, and reported to the
    observer as ``"run in progress"``).

    Attributes:
        foreign_id: the new run's business key.
        initial: its object (default ``object_type()``).
        start_at: the status it starts at (default the workflow's starting status).
    """

    foreign_id: str
    initial: O | None = None
    start_at: enum.IntEnum | None = None


@dataclass(frozen=True, slots=True)
class Callback:
    """Deliver ``payload`` to the latest run of ``foreign_id`` if it waits at ``status``, through
    the callbacks declared there with ``Builder.add_callback`` (as ``Workflow.callback`` does).

    A run that does not exist yet, or is at a status before ``status`` (one from which it can
    reach ``status`` and that it cannot reach from ``status``), is waited for: the delivery is
    retried with backoff (and parked after ``park_after_errors`` attempts). A run past
    ``status`` (moved on: a redelivery), paused, cancelled or finished is left alone and the
    delivery is skipped.

    Attributes:
        foreign_id: whose run.
        status: the status the run waits at (a member of this workflow's status enum).
        payload: what the callbacks receive: bytes, or an instance of their ``payload_type``
            (the other run's object, typically).
    """

    foreign_id: str
    status: enum.IntEnum
    payload: Any = b""
