"""Per-process options: set as workflow defaults on the Builder, overridden per step."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ._types import Seconds, to_seconds
from .errors import ConfigurationError

__all__ = ["ProcessOptions", "resolve_options"]


@dataclass(frozen=True, slots=True)
class ProcessOptions:
    """Resolved options of one background process (a step's consumers, a hook...).

    Attributes:
        parallel_count: number of consumer shards (roles) for a step; events are spread over them
            by a stable hash of the run ID.
        concurrency: events of different runs a shard handles at once; one run's events are always
            handled one at a time, in order.
        polling_frequency: how often to look for work written by other processes (work written by
            this process wakes its consumers at once).
        error_backoff: the first delay after an error; it doubles per consecutive error of the
            same run, with jitter, up to ``max_error_backoff``.
        max_error_backoff: the cap on that delay.
        pause_after_errors: pause a run after this many consecutive errors in this process
            (0 never pauses it).
        lag: only handle events at least this old.
        lag_alert: lag above which the process reports itself as lagging.
    """

    parallel_count: int = 1
    concurrency: int = 64
    polling_frequency: float = 0.5
    error_backoff: float = 1.0
    max_error_backoff: float = 60.0
    pause_after_errors: int = 10
    lag: float = 0.0
    lag_alert: float = 1800.0


_COUNTS = {"parallel_count", "concurrency"}
_DURATIONS = {"polling_frequency", "error_backoff", "max_error_backoff", "lag_alert"}


def validate_overrides(**options: Any) -> dict[str, Any]:
    """Check option values where they are given, so that the mistake is raised at the call."""
    clean: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in _COUNTS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}")
        elif name == "pause_after_errors":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"{name} must be an int >= 0 (0 = never), got {value!r}")
        elif name in _DURATIONS:
            value = to_seconds(value, name)
        elif name == "lag":
            value = to_seconds(value, name, allow_zero=True)
        else:
            raise ConfigurationError(f"unknown option {name!r}")
        clean[name] = value
    return clean


def resolve_options(defaults: dict[str, Any], overrides: dict[str, Any]) -> ProcessOptions:
    merged = {**defaults, **overrides}
    opts = ProcessOptions(**merged)
    if opts.max_error_backoff < opts.error_backoff:
        opts = dataclasses.replace(opts, max_error_backoff=opts.error_backoff)
    return opts


def option_kwargs(
    parallel_count: int | None = None,
    concurrency: int | None = None,
    polling_frequency: Seconds | None = None,
    error_backoff: Seconds | None = None,
    max_error_backoff: Seconds | None = None,
    pause_after_errors: int | None = None,
    lag: Seconds | None = None,
    lag_alert: Seconds | None = None,
) -> dict[str, Any]:
    """Validated, non-None option overrides (one signature shared by every ``add_*`` call)."""
    return validate_overrides(
        parallel_count=parallel_count,
        concurrency=concurrency,
        polling_frequency=polling_frequency,
        error_backoff=error_backoff,
        max_error_backoff=max_error_backoff,
        pause_after_errors=pause_after_errors,
        lag=lag,
        lag_alert=lag_alert,
    )
