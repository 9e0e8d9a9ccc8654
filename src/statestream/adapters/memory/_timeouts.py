"""The in-memory timeout store."""

from __future__ import annotations

import builtins  # the stores' ``list`` methods shadow ``list`` in their class bodies
import dataclasses
from datetime import datetime

from ... import errors
from ..._core.clock import SystemClock
from ..._core.protocols import Clock
from ..._core.records import (
    TimeoutRecord,
)
from ._util import _check_window, _require_aware

__all__ = ["MemoryTimeoutStore"]


class MemoryTimeoutStore:
    """A :class:`~statestream.TimeoutStore` in dicts.

    IDs count from 1 and are never reused. Each visit of a status (``workflow_name, run_id,
    status, run_version``) has at most one timer: completed and cancelled timers are kept, so
    that a redelivered event cannot create the visit's timer again, until :meth:`prune` deletes
    them.

    Args:
        clock: Sets ``created_at`` of new timeouts; defaults to the system clock.

    >>> timeouts = MemoryTimeoutStore()
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._pending: dict[int, TimeoutRecord] = {}
        # Completed and cancelled timers, until pruned (``completed`` tells them apart).
        self._finished: dict[int, TimeoutRecord] = {}
        self._by_visit: dict[tuple[str, str, int, int], int] = {}
        self._last_id = 0

    async def create(
        self,
        workflow_name: str,
        foreign_id: str,
        run_id: str,
        status: int,
        run_version: int,
        expire_at: datetime,
    ) -> TimeoutRecord:
        """Store a pending timeout and return it with its new ID.

        If the visit ``(workflow_name, run_id, status, run_version)`` already has a timer
        (pending, claimed, completed or cancelled), return that one as it is instead.

        Raises:
            InvalidInput: ``expire_at`` is naive.
        """
        _require_aware("expire_at", expire_at)
        visit = (workflow_name, run_id, status, run_version)
        existing = self._by_visit.get(visit)
        if existing is not None:
            return self._pending.get(existing) or self._finished[existing]
        self._last_id += 1
        timeout = TimeoutRecord(
            id=self._last_id,
            workflow_name=workflow_name,
            foreign_id=foreign_id,
            run_id=run_id,
            status=status,
            run_version=run_version,
            expire_at=expire_at,
            created_at=self.clock.now(),
        )
        self._pending[timeout.id] = timeout
        self._by_visit[visit] = timeout.id
        return timeout

    def _check_known(self, timeout_id: int) -> None:
        if not 1 <= timeout_id <= self._last_id:
            raise errors.TimeoutNotFound(f"no timeout with ID {timeout_id}")

    async def claim(self, timeout_id: int, now: datetime, until: datetime) -> bool:
        """Claim a pending timeout up to ``until``, unless a claim is in force at ``now``.

        Returns:
            ``True`` for the caller that claimed it; ``False`` if it is completed, cancelled,
            or claimed with ``claimed_until > now``.

        Raises:
            InvalidInput: ``now`` or ``until`` is naive.
            TimeoutNotFound: No timeout ever had this ID.
        """
        _require_aware("now", now)
        _require_aware("until", until)
        timeout = self._pending.get(timeout_id)
        if timeout is None:
            self._check_known(timeout_id)
            return False
        if timeout.claimed_until is not None and timeout.claimed_until > now:
            return False
        self._pending[timeout_id] = dataclasses.replace(timeout, claimed_until=until)
        return True

    async def defer(self, timeout_id: int, until: datetime) -> None:
        """Make a pending timeout not due before ``until`` (a completed or cancelled one stays).

        Raises:
            InvalidInput: ``until`` is naive.
            TimeoutNotFound: No timeout ever had this ID.
        """
        _require_aware("until", until)
        timeout = self._pending.get(timeout_id)
        if timeout is None:
            self._check_known(timeout_id)
            return
        self._pending[timeout_id] = dataclasses.replace(timeout, claimed_until=until)

    async def complete(self, timeout_id: int) -> bool:
        """Complete a pending timeout, claimed or not.

        Returns:
            ``True`` for the call that completed it; ``False`` if it was already completed or
            cancelled.

        Raises:
            TimeoutNotFound: No timeout ever had this ID.
        """
        timeout = self._pending.pop(timeout_id, None)
        if timeout is None:
            self._check_known(timeout_id)
            return False
        self._finished[timeout_id] = dataclasses.replace(timeout, completed=True)
        return True

    async def cancel(self, timeout_id: int) -> None:
        """Cancel a timeout; cancelling a completed or cancelled one does nothing.

        Raises:
            TimeoutNotFound: No timeout ever had this ID.
        """
        timeout = self._pending.pop(timeout_id, None)
        if timeout is None:
            self._check_known(timeout_id)
        else:
            self._finished[timeout_id] = timeout

    async def cancel_for(
        self, workflow_name: str, run_id: str, status: int, below_version: int
    ) -> None:
        """Cancel the run's pending timeouts at ``status`` of visits before ``below_version``."""
        for timeout in [
            t
            for t in self._pending.values()
            if t.run_id == run_id
            and t.status == status
            and t.workflow_name == workflow_name
            and t.run_version < below_version
        ]:
            self._finished[timeout.id] = self._pending.pop(timeout.id)

    async def prune(self, workflow_name: str, before: datetime) -> int:
        """Delete the workflow's completed and cancelled timeouts created before ``before``.

        Returns:
            How many were deleted.

        Raises:
            InvalidInput: ``before`` is naive.
        """
        _require_aware("before", before)
        old = [
            t
            for t in self._finished.values()
            if t.workflow_name == workflow_name and t.created_at < before
        ]
        for t in old:
            del self._finished[t.id]
            del self._by_visit[(t.workflow_name, t.run_id, t.status, t.run_version)]
        return len(old)

    async def list(self, workflow_name: str) -> list[TimeoutRecord]:
        """Pending timeouts of the workflow (claimed ones too), by ID."""
        return [t for t in self._pending.values() if t.workflow_name == workflow_name]

    async def list_due(
        self, workflow_name: str, status: int, now: datetime, limit: int = 100
    ) -> builtins.list[TimeoutRecord]:
        """Pending, unclaimed timeouts at ``status`` with ``expire_at <= now``.

        A timeout whose ``claimed_until`` is at or before ``now`` counts as unclaimed. They are
        ordered by ``(expire_at, id)``.

        Raises:
            InvalidInput: ``now`` is naive or ``limit`` is negative.
        """
        _require_aware("now", now)
        _check_window(0, limit)
        due = [
            t
            for t in self._pending.values()
            if t.workflow_name == workflow_name
            and t.status == status
            and t.expire_at <= now
            and (t.claimed_until is None or t.claimed_until <= now)
        ]
        due.sort(key=lambda t: (t.expire_at, t.id))
        return due[:limit]
