"""SQLite timeout store: durable timers, one per visit of a status, claimed by pollers."""

from __future__ import annotations

import builtins
import sqlite3
from datetime import datetime
from typing import Any

from ..._core.clock import utcnow
from ..._core.records import TimeoutRecord
from ...errors import TimeoutNotFound
from ..sql._rows import CANCELLED as _CANCELLED
from ..sql._rows import COMPLETED as _COMPLETED
from ..sql._rows import TIMEOUT_COLUMNS as _TIMEOUT_COLUMNS
from ..sql._rows import check_aware, from_us, to_us
from ..sql._rows import timeout_from_row as _timeout
from ._db import SqliteDatabase

__all__ = ["SqliteTimeoutStore"]

# state: 0 pending (written as a literal in the SQL, which the partial due index needs to be
# used), 1 completed (_COMPLETED), 2 cancelled (_CANCELLED).

#: One range of the due index (workflow, status, expire_at: pending timers only), in its order.
_LIST_DUE = (
    f"SELECT {_TIMEOUT_COLUMNS} FROM statestream_timeouts "
    "WHERE workflow_name = ? AND status = ? AND state = 0 AND expire_at <= ? "
    "AND (claimed_until IS NULL OR claimed_until <= ?) ORDER BY expire_at, id LIMIT ?"
)


#: One run's pending timers: one range of the visit's unique index (workflow, run, ...).
_LIST_FOR_RUN = (
    f"SELECT {_TIMEOUT_COLUMNS} FROM statestream_timeouts "
    "WHERE workflow_name = ? AND run_id = ? AND state = 0 ORDER BY id"
)


class SqliteTimeoutStore:
    """Durable timers in the same SQLite file.

    A visit of a status (workflow, run, status, run version) has at most one timer, held by a
    unique key: ``create`` for a visit that has one returns it. A poller ``claim``s a due timer
    (a compare-and-set on ``claimed_until``) before acting on it, so that two pollers, in this
    process or another, never both do; a claim that lapses (its poller died) makes the timer due
    again. Completed and cancelled timers stay until ``prune``.
    """

    def __init__(self, db: SqliteDatabase) -> None:
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
        created = utcnow()
        values = (
            workflow_name,
            foreign_id,
            run_id,
            status,
            run_version,
            to_us(expire_at),
            to_us(created),
        )

        def insert(conn: sqlite3.Connection) -> int | TimeoutRecord:
            cursor = conn.execute(
                "INSERT INTO statestream_timeouts (workflow_name, foreign_id, run_id, status, "
                "run_version, expire_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (workflow_name, run_id, status, run_version) DO NOTHING",
                values,
            )
            if cursor.rowcount == 1:
                return int(cursor.lastrowid or 0)
            row = conn.execute(
                f"SELECT {_TIMEOUT_COLUMNS} FROM statestream_timeouts WHERE workflow_name = ? "
                "AND run_id = ? AND status = ? AND run_version = ?",
                (workflow_name, run_id, status, run_version),
            ).fetchone()
            return _timeout(row)

        timeout_id = await self.db.write(insert)
        if isinstance(timeout_id, TimeoutRecord):
            return timeout_id  # this visit already has its timer
        return TimeoutRecord(
            timeout_id,
            workflow_name,
            foreign_id,
            run_id,
            status,
            run_version,
            from_us(to_us(expire_at)),
            from_us(to_us(created)),
        )

    async def _change(self, timeout_id: int, sql: str, args: tuple[Any, ...]) -> bool:
        """Run an UPDATE of the timer (``args`` end with its ID); whether it changed a row.
        Raises TimeoutNotFound for an unknown ID."""

        def change(conn: sqlite3.Connection) -> bool:
            if conn.execute(sql, args).rowcount == 1:
                return True
            if conn.execute(
                "SELECT 1 FROM statestream_timeouts WHERE id = ?", (timeout_id,)
            ).fetchone():
                return False
            raise TimeoutNotFound(f"no timeout {timeout_id}")

        return await self.db.write(change)

    async def claim(self, timeout_id: int, now: datetime, until: datetime) -> bool:
        check_aware("now", now)
        check_aware("until", until)
        return await self._change(
            timeout_id,
            "UPDATE statestream_timeouts SET claimed_until = ? WHERE id = ? AND state = 0 "
            "AND (claimed_until IS NULL OR claimed_until <= ?)",
            (to_us(until), timeout_id, to_us(now)),
        )

    async def defer(self, timeout_id: int, until: datetime) -> None:
        check_aware("until", until)
        await self._change(
            timeout_id,
            "UPDATE statestream_timeouts SET claimed_until = ? WHERE id = ? AND state = 0",
            (to_us(until), timeout_id),
        )

    async def complete(self, timeout_id: int) -> bool:
        return await self._change(
            timeout_id,
            "UPDATE statestream_timeouts SET state = ? WHERE id = ? AND state = 0",
            (_COMPLETED, timeout_id),
        )

    async def cancel(self, timeout_id: int) -> None:
        await self._change(
            timeout_id,
            "UPDATE statestream_timeouts SET state = ? WHERE id = ? AND state = 0",
            (_CANCELLED, timeout_id),
        )

    async def cancel_for(
        self, workflow_name: str, run_id: str, status: int, below_version: int
    ) -> None:
        args = (_CANCELLED, workflow_name, run_id, status, below_version)

        def cancel(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE statestream_timeouts SET state = ? WHERE workflow_name = ? "
                "AND run_id = ? AND status = ? AND run_version < ? AND state = 0",
                args,
            )

        await self.db.write(cancel)

    async def prune(self, workflow_name: str, before: datetime) -> int:
        """Delete the workflow's completed and cancelled timers created before ``before``, a
        few thousand per transaction (other writes go on in between); how many."""
        check_aware("before", before)
        return await self.db.delete_in_chunks(
            "statestream_timeouts",
            condition="workflow_name = ? AND state != 0 AND created_at < ?",
            condition_args=(workflow_name, to_us(before)),
        )

    async def list(self, workflow_name: str) -> builtins.list[TimeoutRecord]:
        """Pending timers (claimed or not), by ID; on the query thread."""

        def select(conn: sqlite3.Connection) -> builtins.list[TimeoutRecord]:
            rows = conn.execute(
                f"SELECT {_TIMEOUT_COLUMNS} FROM statestream_timeouts "
                "WHERE workflow_name = ? AND state = 0 ORDER BY id",
                (workflow_name,),
            )
            return [_timeout(row) for row in rows]

        return await self.db.query(select)

    async def list_for_run(self, workflow_name: str, run_id: str) -> builtins.list[TimeoutRecord]:
        """The run's pending timers, by ID: one range of the visit's unique index (workflow,
        run, ...), on the query thread."""

        def select(conn: sqlite3.Connection) -> builtins.list[TimeoutRecord]:
            return [_timeout(row) for row in conn.execute(_LIST_FOR_RUN, (workflow_name, run_id))]

        return await self.db.query(select)

    async def list_due(
        self, workflow_name: str, status: int, now: datetime, limit: int = 100
    ) -> builtins.list[TimeoutRecord]:
        """Pending, unclaimed timers due at ``now``, earliest first; one range of the due index
        (pending timers only), on the query thread."""
        check_aware("now", now)
        at = to_us(now)
        args = (workflow_name, status, at, at, limit)

        def select(conn: sqlite3.Connection) -> builtins.list[TimeoutRecord]:
            return [_timeout(row) for row in conn.execute(_LIST_DUE, args)]

        return await self.db.query(select)
