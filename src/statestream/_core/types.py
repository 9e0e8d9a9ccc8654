"""Type variables, user-function shapes and the one duration helper."""

from __future__ import annotations

import asyncio
import enum
import inspect
import math
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from .run import Control, Run

__all__ = [
    "CallbackFn",
    "HookFn",
    "Seconds",
    "StatusT",
    "StepFn",
    "T",
    "TimeoutFn",
    "TimerFn",
    "call_user",
    "is_async_callable",
    "to_seconds",
]

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


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` returns a coroutine (async functions and async ``__call__``)."""
    call = getattr(fn, "__call__", None)  # noqa: B004 - objects with an async __call__
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


async def call_user(fn: Callable[..., Any], is_async: bool, *args: Any) -> Any:
    """Call a user function: coroutine functions on the loop, plain ones in a worker thread."""
    if is_async:
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


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
