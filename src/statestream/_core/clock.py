"""Clocks: the real one, and a fake one that tests advance by hand."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from ..errors import InvalidInput

__all__ = ["FakeClock", "SystemClock", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class SystemClock:
    """Wall-clock time in UTC and ``asyncio.sleep``."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when a test says so.

    ``sleep`` waits until :meth:`advance` (or :meth:`set`) moves time past its deadline.

    >>> clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    >>> clock.advance(timedelta(hours=1))
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise InvalidInput("FakeClock needs a timezone-aware start time")
        self._now = start
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> datetime:
        return self._now

    def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        """Wait until the clock reaches now + ``seconds``.

        The deadline is registered at the call, not when the coroutine first runs, so a test that
        moves the clock right after a task was created with ``clock.sleep(...)`` still wakes it.
        """
        if seconds <= 0:
            return asyncio.sleep(0)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(
            self._sleepers, (self._now + timedelta(seconds=seconds), next(self._seq), future)
        )
        return self._wait(future)

    @staticmethod
    async def _wait(future: asyncio.Future[None]) -> None:
        await future

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock."""
        return sum(1 for *_, f in self._sleepers if not f.done())

    def advance(self, delta: timedelta | float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        if isinstance(delta, int | float):
            delta = timedelta(seconds=delta)
        if delta < timedelta(0):
            raise InvalidInput("FakeClock cannot go backwards")
        self.set(self._now + delta)

    def set(self, when: datetime) -> None:
        if when < self._now:
            raise InvalidInput("FakeClock cannot go backwards")
        self._now = when
        while self._sleepers and self._sleepers[0][0] <= when:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
