"""Cron schedules that trigger runs, exactly once per tick across every process.

One process at a time holds a schedule's role. It derives the next tick from the creation time
of the foreign ID's latest run (durable, shared by every process), so a role that moves to
another process neither repeats nor skips a tick; after downtime the one missed tick fires at
once and the following ticks are counted from then (no catch-up storm).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .._codec import check_instance
from .._core.types import StatusT, T, is_async_callable
from .._definition.options import ProcessOptions
from ..errors import ConfigurationError, InvalidInput, RecordNotFound, WorkflowInProgress
from .logfields import fields
from .processes import Body
from .usercode import call_user

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["CronSpec", "Schedule", "next_ticks"]

log = logging.getLogger("statestream")

_EVERY = re.compile(r"^@every\s+(.+)$")
_UNIT = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MAX_EVERY = timedelta(days=36525)


def _parse_duration(text: str) -> timedelta:
    text = text.replace(" ", "")
    pos, total = 0, 0.0
    for match in _UNIT.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or total <= 0:
        raise InvalidInput(f"invalid @every duration {text!r} (use e.g. 90s, 5m, 1h30m, 1d)")
    # Bounded before timedelta() overflows (inf for 400 digits), and so that ticks stay dates.
    if total > _MAX_EVERY.total_seconds():
        raise InvalidInput(
            f"@every duration {text!r} is longer than a century ({_MAX_EVERY.days}d)"
        )
    interval = timedelta(seconds=total)
    if not interval:
        raise InvalidInput(f"@every duration {text!r} rounds to zero microseconds")
    return interval


class CronSpec:
    """A parsed schedule: a cron expression read in a time zone, or a fixed interval."""

    def __init__(self, spec: str, tz: str = "UTC") -> None:
        if not isinstance(spec, str) or not spec.strip():
            raise InvalidInput(f"schedule spec must be a non-empty string, got {spec!r}")
        if not isinstance(tz, str) or not tz:
            raise InvalidInput(f"tz must be an IANA time zone name, got {tz!r}")
        try:
            self.zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise InvalidInput(f"unknown time zone {tz!r}") from exc
        self.spec = spec.strip()
        self.interval: timedelta | None = None
        every = _EVERY.match(self.spec)
        if every:
            self.interval = _parse_duration(every.group(1))
            return
        try:
            from croniter import croniter
        except ImportError as exc:  # pragma: no cover - the cron extra is missing
            raise ConfigurationError(
                "cron schedules need croniter: pip install 'statestream[cron]'"
            ) from exc
        if not self.spec.startswith("@") and len(self.spec.split()) != 5:
            raise InvalidInput(
                f"invalid cron spec {self.spec!r}: expected 5 fields (minute hour day-of-month "
                "month day-of-week); seconds and years are not supported"
            )
        if not croniter.is_valid(self.spec):
            raise InvalidInput(
                f"invalid cron spec {self.spec!r}: expected 5 fields (minute hour day-of-month "
                "month day-of-week) with ranges, lists, steps and names, a shortcut such as "
                "@daily, or @every <duration>"
            )
        self._croniter = croniter
        try:
            self.next_after(datetime.now(UTC))
        except Exception as exc:  # croniter's "no such date" errors, e.g. 30 February
            raise InvalidInput(f"cron spec {self.spec!r} never fires: {exc}") from exc

    def next_after(self, when: datetime) -> datetime:
        """The first tick strictly after ``when`` (an aware datetime), in UTC."""
        if when.tzinfo is None:
            raise InvalidInput(f"next_after needs a timezone-aware datetime, got {when!r}")
        if self.interval is not None:
            return (when + self.interval).astimezone(UTC)
        local = when.astimezone(self.zone)
        nxt: datetime = self._croniter(self.spec, local).get_next(datetime)
        return nxt.astimezone(UTC)


def next_ticks(spec: str, start: datetime, count: int = 5, tz: str = "UTC") -> list[datetime]:
    """The next ``count`` ticks of ``spec`` after ``start`` (for tests and previews)."""
    cron = CronSpec(spec, tz)
    ticks: list[datetime] = []
    when = start
    for _ in range(count):
        when = cron.next_after(when)
        ticks.append(when)
    return ticks


class Schedule(Generic[T, StatusT]):
    """A registered schedule (returned by :meth:`Workflow.schedule`)."""

    def __init__(
        self,
        rt: Runtime[T, StatusT],
        foreign_id: str,
        spec: str,
        *,
        initial: T | None,
        filter: Callable[[datetime], Any] | None,
        tz: str,
    ) -> None:
        if filter is not None and not callable(filter):
            raise InvalidInput(f"filter must be callable, got {filter!r}")
        if initial is not None:
            check_instance(rt.d.object_type, initial)
        self.cron = CronSpec(spec, tz)
        self.foreign_id = foreign_id
        self.spec = self.cron.spec
        self._rt = rt
        self._initial = initial
        self._filter = filter
        self._filter_async = filter is not None and is_async_callable(filter)
        # Role names are lower case, but foreign IDs are case-sensitive keys: keep them as given.
        clean = self.spec.replace(" ", "_").lower()
        self.name = f"{foreign_id}-scheduler-{clean}"
        self.role = f"{rt.name.lower().replace(' ', '_')}-{foreign_id}-scheduler-{clean}"
        self.triggered = 0
        self.skipped = 0

    def process(self) -> tuple[str, str, Body, ProcessOptions]:
        return (self.name, self.role, self._body, self._rt.d.defaults)

    async def _last_run(self) -> datetime | None:
        try:
            latest = await self._rt.store.latest(self._rt.name, self.foreign_id)
        except RecordNotFound:
            return None
        return latest.created_at

    async def _body(self, stopping: asyncio.Event) -> None:
        rt = self._rt
        last_tick: datetime | None = None  # ticks skipped by the filter are not stored
        first = rt.clock.now()  # with no run yet, ticks count from when the schedule started
        while not stopping.is_set():
            last_run = await self._last_run()
            base = max((t for t in (last_run, last_tick) if t is not None), default=first)
            tick = self.cron.next_after(base)
            wait = (tick - rt.clock.now()).total_seconds()
            if wait > 0:
                await rt.sleep_clock(wait, stopping)
                continue  # re-read: another process may have triggered meanwhile
            last_tick = tick
            if self._filter is not None and not await call_user(
                self._filter, self._filter_async, tick
            ):
                self.skipped += 1
                continue
            try:
                await rt.create(self.foreign_id, rt.d.start_status, self._initial)
                self.triggered += 1
            except WorkflowInProgress:
                self.skipped += 1
                log.info(
                    "statestream: schedule %s skipped the %s tick: a run of %s is unfinished",
                    self.spec,
                    tick.isoformat(),
                    self.foreign_id,
                    extra=fields(rt.name, foreign_id=self.foreign_id),
                )
