"""Type variables, user-function shapes and the one duration helper."""

from __future__ import annotations

import enum
import math
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._run import Control, Run

__all__ = ["HookFn", "Seconds", "StatusT", "StepFn", "T", "to_seconds"]

T = TypeVar("T")
StatusT = TypeVar("StatusT", bound=enum.IntEnum)

#: A duration: seconds as int/float, or a ``timedelta``.
Seconds: TypeAlias = float | int | timedelta

#: A step: receives the run, returns the next status (or a control result such as ``run.skip()``).
#: A plain ``def`` runs in a worker thread, off the event loop.
StepFn: TypeAlias = (
    "Callable[[Run[T, StatusT]], Awaitable[StatusT | Control]]"
    " | Callable[[Run[T, StatusT]], StatusT | Control]"
)

#: A hook run when a run is paused, cancelled or completed.
HookFn: TypeAlias = "Callable[[Run[T, StatusT]], Awaitable[Any]] | Callable[[Run[T, StatusT]], Any]"


def to_seconds(value: Seconds, name: str, *, allow_zero: bool = False) -> float:
    """Normalise a duration and reject negative, zero (unless allowed) and non-finite values."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be seconds or a timedelta, got {value!r}")
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be {bound} seconds, got {value!r}")
    return seconds
