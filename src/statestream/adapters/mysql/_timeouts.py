"""MySQL timeout store."""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Any

from ..._core.records import TimeoutRecord
from ...errors import TimeoutNotFound
from ..sql._rows import TIMEOUT_COLUMNS, check_aware
from ._db import MysqlDatabase
from ._rows import CANCELLED, COMPLETED, encode, fits, timeout_from_row, to_us

__all__ = ["MysqlTimeoutStore"]


class MysqlTimeoutStore:
    """Durable timers on the same server.

    A visit of a status (workflow, run, status, run version) has at most one timer, held by a
    unique key: ``create`` for a visit that has one returns it. A poller ``claim``s a due timer
    (a compare-and-set on ``claimed_until``) before acting on it, so that two pollers never
    both do; a claim that lapses makes the timer due again. Completed and cancelled timers stay
    until ``prune``. ``list_due`` is one range of the ``(workflow, status, state, expire_at)``
    index.
    """

    def __init__(self, db: MysqlDatabase) -> None:
        self.db = db

    async def create(
        self,
        workflow_name: str,
        foreign_id: str,
        run_id: str,
        status: int,
        run_version: int,
        expire_at: datetime,
    ) -> TimeoutRecord:
        check_aware("expire_at", expire_at)
        created = datetime.now(UTC)
        workflow = encode("workflow name", workflow_name)
        run = encode("run ID", run_id)
        p = self.db.prefix
        visit = (workflow, run, status, run_version)
        values = (
            workflow,
            encode("foreign ID", foreign_id),
            run,
            status,
            run_version,
            to_us(expire_at),
            to_us(created),
        )
        # One round trip: insert unless the visit has its timer, then read the visit's timer.
        results = await self.db.script(
            lambda bind: [
                bind(
                    f"INSERT IGNORE INTO {p}timeouts (workflow_name, foreign_id, run_id, status, "
                    "run_version, expire_at, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    values,
                ),
                bind(
                    f"SELECT {TIMEOUT_COLUMNS} FROM {p}timeouts WHERE workflow_name = %s "
                    "AND run_id = %s AND status = %s AND run_version = %s",
                    visit,
                ),
            ],
            idempotent=True,
        )
        return timeout_from_row((results[1].rows or ())[0])

    async def _change(self, timeout_id: int, sql: str, args: tuple[Any, ...]) -> bool:
        """Run an UPDATE of the timer (``args`` end with its ID); whether it changed a row.
        Raises TimeoutNotFound for an unknown ID."""
        if await self.db.execute(sql, args) == 1:
            return True
        if await self.db.fetch(
            f"SELECT 1 FROM {self.db.prefix}timeouts WHERE id = %s", (timeout_id,)
        ):
            return False
        raise TimeoutNotFound(f"no timeout {timeout_id}")

    async def claim(self, timeout_id: int, now: datetime, until: datetime) -> bool:
        check_aware("now", now)
        check_aware("until", until)
        return await self._change(
            timeout_id,
            f"UPDATE {self.db.prefix}timeouts SET claimed_until = %s WHERE id = %s AND state = 0 "
            "AND (claimed_until IS NULL OR claimed_until <= %s)",
            (to_us(until), timeout_id, to_us(now)),
        )

    async def defer(self, timeout_id: int, until: datetime) -> None:
        check_aware("until", until)
        await self._change(
            timeout_id,
            f"UPDATE {self.db.prefix}timeouts SET claimed_until = %s WHERE id = %s AND state = 0",
            (to_us(until), timeout_id),
        )

    async def complete(self, timeout_id: int) -> bool:
        return await self._change(
            timeout_id,
            f"UPDATE {self.db.prefix}timeouts SET state = %s WHERE id = %s AND state = 0",
            (COMPLETED, timeout_id),
        )

    async def cancel(self, timeout_id: int) -> None:
        await self._change(
            timeout_id,
            f"UPDATE {self.db.prefix}timeouts SET state = %s WHERE id = %s AND state = 0",
            (CANCELLED, timeout_id),
        )

    async def cancel_for(
        self, workflow_name: str, run_id: str, status: int, below_version: int
    ) -> None:
        workflow = fits("workflow name", workflow_name)
        run = fits("run ID", run_id)
        if workflow is None or run is None:
            return
        await self.db.execute(
            f"UPDATE {self.db.prefix}timeouts SET state = %s WHERE workflow_name = %s "
            "AND run_id = %s AND status = %s AND run_version < %s AND state = 0",
            (CANCELLED, workflow, run, status, below_version),
            idempotent=True,
        )

    async def prune(self, workflow_name: str, before: datetime) -> int:
        """Delete the workflow's completed and cancelled timers created before ``before``, a
        few thousand per statement; how many."""
        check_aware("before", before)
        workflow = fits("workflow name", workflow_name)
        if workflow is None:
            return 0
        total = 0
        while True:
            deleted = await self.db.execute(
                f"DELETE FROM {self.db.prefix}timeouts WHERE workflow_name = %s AND state != 0 "
                "AND created_at < %s ORDER BY id LIMIT 2000",
                (workflow, to_us(before)),
                idempotent=True,
            )
            total += deleted
            if deleted < 2000:
                return total

    async def list(self, workflow_name: str) -> builtins.list[TimeoutRecord]:
        """Pending timers (claimed or not), by ID."""
        workflow = fits("workflow name", workflow_name)
        if workflow is None:
            return []
        rows = await self.db.fetch(
            f"SELECT {TIMEOUT_COLUMNS} FROM {self.db.prefix}timeouts "
            "WHERE workflow_name = %s AND state = 0 ORDER BY id",
            (workflow,),
        )
        return [timeout_from_row(row) for row in rows]

    async def list_for_run(self, workflow_name: str, run_id: str) -> builtins.list[TimeoutRecord]:
        """The run's pending timers (claimed or not), by ID: one range of the visit's unique
        key, which starts with (workflow_name, run_id)."""
        workflow, run = fits("workflow name", workflow_name), fits("run ID", run_id)
        if workflow is None or run is None:
            return []
        rows = await self.db.fetch(
            f"SELECT {TIMEOUT_COLUMNS} FROM {self.db.prefix}timeouts "
            "WHERE workflow_name = %s AND run_id = %s AND state = 0 ORDER BY id",
            (workflow, run),
        )
        return [timeout_from_row(row) for row in rows]

    async def list_due(
        self, workflow_name: str, status: int, now: datetime, limit: int = 100
    ) -> builtins.list[TimeoutRecord]:
        """Pending, unclaimed timers due at ``now``, earliest first."""
        check_aware("now", now)
        workflow = fits("workflow name", workflow_name)
        if workflow is None:
            return []
        at = to_us(now)
        rows = await self.db.fetch(
            f"SELECT {TIMEOUT_COLUMNS} FROM {self.db.prefix}timeouts "
            "WHERE workflow_name = %s AND status = %s AND state = 0 AND expire_at <= %s "
            "AND (claimed_until IS NULL OR claimed_until <= %s) ORDER BY expire_at, id LIMIT %s",
            (workflow, status, at, at, limit),
        )
        return [timeout_from_row(row) for row in rows]
