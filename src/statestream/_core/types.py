"""Type variables and the one duration helper."""

from __future__ import annotations

import enum
import inspect
import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeAlias, TypeVar

from ..errors import ConfigurationError

__all__ = [
    "Seconds",
    "StatusT",
    "T",
    "is_async_callable",
    "to_seconds",
]

T = TypeVar("T")
StatusT = TypeVar("StatusT", bound=enum.IntEnum)

#: A duration: seconds as int/float, or a ``timedelta``.
Seconds: TypeAlias = float | int | timedelta


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """Whether calling ``fn`` returns a coroutine (async functions and async ``__call__``)."""
    call = getattr(fn, "__call__", None)  # noqa: B004 - objects with an async __call__
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


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
