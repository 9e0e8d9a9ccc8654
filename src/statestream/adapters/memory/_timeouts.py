"""The in-memory timeout store."""

from __future__ import annotations

import builtins  # the stores' ``list`` methods shadow ``list`` in their class bodies
import heapq
from datetime import datetime

from ... import errors
from ..._core.clock import SystemClock
from ..._core.protocols import Clock
from ..._core.records import (
    TimeoutRecord,
)
from ._util import _check_window, _require_aware

__all__ = ["MemoryTimeoutStore"]


def _changed(t: TimeoutRecord, completed: bool, claimed_until: datetime | None) -> TimeoutRecord:
    # The constructor directly: dataclasses.replace costs three times as much (two per firing).
    return TimeoutRecord(
        t.id,
        t.workflow_name,
        t.foreign_id,
        t.run_id,
        t.status,
        t.run_version,
        t.expire_at,
        t.created_at,
        completed,
        claimed_until,
    )


class MemoryTimeoutStore:
    """A :class:`~statestream.TimeoutStore` in dicts.

    IDs count from 1 and are never reused. Each visit of a status (``workflow_name, run_id,
    status, run_version``) has at most one timer: completed and cancelled timers are kept, so
    that a redelivered event cannot create the visit's timer again, until :meth:`prune` deletes
    them. Pending timers are indexed by run and, in a heap by ``(expire_at, id)``, by workflow
    and status, so that :meth:`list_due` and :meth:`cancel_for` do not scan every timer.

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
        # Pending timer IDs by (workflow_name, run_id).
        self._by_run: dict[tuple[str, str], set[int]] = {}
        # (expire_at, id) of pending timers by (workflow_name, status); an entry whose timer is
        # no longer pending is dropped when it is reached, or when the heap is rebuilt.
        self._due: dict[tuple[str, int], builtins.list[tuple[datetime, int]]] = {}
        self._due_live: dict[tuple[str, int], int] = {}
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
        self._by_run.setdefault((workflow_name, run_id), set()).add(timeout.id)
        key = (workflow_name, status)
        heapq.heappush(self._due.setdefault(key, []), (expire_at, timeout.id))
        self._due_live[key] = self._due_live.get(key, 0) + 1
        return timeout

    def _unindex(self, timeout: TimeoutRecord) -> None:
        """Forget a timer that is no longer pending in the run and due indexes."""
        run_key = (timeout.workflow_name, timeout.run_id)
        ids = self._by_run[run_key]
        ids.discard(timeout.id)
        if not ids:
            del self._by_run[run_key]
        key = (timeout.workflow_name, timeout.status)
        live = self._due_live[key] - 1
        self._due_live[key] = live
        heap = self._due[key]
        if len(heap) > 64 and len(heap) > 2 * live:
            # Mostly stale (timers cancelled long before they expire): rebuild, amortised O(1).
            heap[:] = [e for e in heap if e[1] in self._pending]
            heapq.heapify(heap)

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
        self._pending[timeout_id] = _changed(timeout, timeout.completed, until)
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
        self._pending[timeout_id] = _changed(timeout, timeout.completed, until)

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
        self._unindex(timeout)
        self._finished[timeout_id] = _changed(timeout, True, timeout.claimed_until)
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
            self._unindex(timeout)
            self._finished[timeout_id] = timeout

    async def cancel_for(
        self, workflow_name: str, run_id: str, status: int, below_version: int
    ) -> None:
        """Cancel the run's pending timeouts at ``status`` of visits before ``below_version``."""
        ids = self._by_run.get((workflow_name, run_id))
        if not ids:
            return
        for timeout_id in sorted(ids):
            timeout = self._pending[timeout_id]
            if timeout.status == status and timeout.run_version < below_version:
                del self._pending[timeout_id]
                self._unindex(timeout)
                self._finished[timeout_id] = timeout

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

    async def list_for_run(self, workflow_name: str, run_id: str) -> builtins.list[TimeoutRecord]:
        """Pending timeouts of one run (claimed ones too), by ID: a dict lookup."""
        ids = self._by_run.get((workflow_name, run_id))
        if not ids:
            return []
        pending = self._pending
        return [pending[i] for i in sorted(ids)]

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
        heap = self._due.get((workflow_name, status))
        due: builtins.list[TimeoutRecord] = []
        if not heap:
            return due
        # Take entries off the heap in (expire_at, id) order up to the first not yet expired,
        # then put back those still pending: O((limit + claimed) log n), not a scan.
        keep: builtins.list[tuple[datetime, int]] = []
        pending = self._pending
        while heap and len(due) < limit and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            t = pending.get(entry[1])
            if t is None:
                continue  # completed or cancelled
            keep.append(entry)
            if t.claimed_until is None or t.claimed_until <= now:
                due.append(t)
        for entry in keep:
            heapq.heappush(heap, entry)
        return due
