"""Per-process options: set as workflow defaults on the Builder, overridden per step."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from .._core.types import Seconds, to_seconds
from ..errors import ConfigurationError

__all__ = [
    "ConnectorOptions",
    "OutboxOptions",
    "ProcessOptions",
    "StepOptions",
    "TimeoutOptions",
    "resolve_options",
    "validate_overrides",
]


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
            (0 never pauses it). A step whose auto-pause itself fails parks the event.
        park_after_errors: for consumers that do not pause runs (hooks, connectors, the data
            deleter, pause retry): after this many failed attempts at one event, park it (see
            ``Workflow.parked()``) and move on; 0 retries it for ever, holding back the
            consumer's position.
        lag: only handle events at least this old.
        lag_alert: lag (beyond ``lag``) above which the process logs a warning and reports
            itself as ``ProcessState.LAGGING``; 0 turns the alert off.
    """

    parallel_count: int = 1
    concurrency: int = 64
    polling_frequency: float = 0.5
    error_backoff: float = 1.0
    max_error_backoff: float = 60.0
    pause_after_errors: int = 10
    park_after_errors: int = 10
    lag: float = 0.0
    lag_alert: float = 1800.0


_COUNTS = {"parallel_count", "concurrency"}
_DURATIONS = {"polling_frequency", "error_backoff", "max_error_backoff"}


def validate_overrides(options: Mapping[str, Any], kind: type[Any], where: str) -> dict[str, Any]:
    """Check options where they are given, so that the mistake is raised at the call.

    Args:
        options: the keyword arguments given.
        kind: the TypedDict of the options ``where`` takes (StepOptions, TimeoutOptions...).
        where: the call, for messages.
    """
    allowed = kind.__required_keys__ | kind.__optional_keys__
    clean: dict[str, Any] = {}
    for name, value in options.items():
        if name not in allowed:
            raise ConfigurationError(
                f"{where} does not take the option {name!r} (it takes: "
                f"{', '.join(sorted(allowed))})"
            )
        if value is None:
            continue
        if name in _COUNTS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}")
        elif name in ("pause_after_errors", "park_after_errors"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"{name} must be an int >= 0 (0 = never), got {value!r}")
        elif name in _DURATIONS:
            value = to_seconds(value, name)
        elif name in ("lag", "lag_alert"):
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


class TimeoutOptions(TypedDict, total=False):
    """Options of a timeout poller (see :class:`ProcessOptions`)."""

    polling_frequency: Seconds
    error_backoff: Seconds
    max_error_backoff: Seconds
    pause_after_errors: int
    lag_alert: Seconds


class ConnectorOptions(TypedDict, total=False):
    """Options of a connector's consumers (see :class:`ProcessOptions`)."""

    parallel_count: int
    concurrency: int
    polling_frequency: Seconds
    error_backoff: Seconds
    max_error_backoff: Seconds
    lag: Seconds
    lag_alert: Seconds
    park_after_errors: int


class StepOptions(ConnectorOptions, total=False):
    """Options of a step's consumers, and workflow defaults (see :class:`ProcessOptions`)."""

    pause_after_errors: int


class OutboxOptions(TypedDict, total=False):
    """Options of the outbox relay."""

    polling_frequency: Seconds
    error_backoff: Seconds
