"""PostgreSQL timeout store: durable timers, one per visit of a status, claimed by pollers."""

from __future__ import annotations

import builtins
from datetime import datetime

from ..._core.clock import utcnow
from ..._core.records import TimeoutRecord
from ...errors import TimeoutNotFound
from ..sql._rows import (
    CANCELLED,
    COMPLETED,
    TIMEOUT_COLUMNS,
    check_aware,
    check_text,
    from_us,
    timeout_from_row,
    to_us,
)
from ._db import PostgresDatabase

__all__ = ["PostgresTimeoutStore"]


class PostgresTimeoutStore:
    """Durable timers on PostgreSQL; the same contract and indexes as the SQLite store.

    A visit (workflow, run, status, run version) has at most one timer (a unique index);
    ``claim`` is a compare-and-set on ``claimed_until``; the due index covers pending timers
    only (``WHERE state = 0``), ordered by ``(workflow_name, status, expire_at)``.
    """

    #: Timers ``prune`` deletes per statement.
    prune_chunk = 2_000

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db
        sql = db.sql
        self._insert = sql(
            "INSERT INTO {prefix}timeouts (workflow_name, foreign_id, run_id, status, "
            "run_version, expire_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (workflow_name, run_id, status, run_version) DO NOTHING RETURNING id"
        )
        self._visit = sql(
            f"SELECT {TIMEOUT_COLUMNS} FROM {{prefix}}timeouts WHERE workflow_name = $1 "
            "AND run_id = $2 AND status = $3 AND run_version = $4"
        )
        self._exists = sql("SELECT 1 FROM {prefix}timeouts WHERE id = $1")
        self._claim = sql(
            "UPDATE {prefix}timeouts SET claimed_until = $2 WHERE id = $1 AND state = 0 "
            "AND (claimed_until IS NULL OR claimed_until <= $3)"
        )
        self._defer = sql(
            "UPDATE {prefix}timeouts SET claimed_until = $2 WHERE id = $1 AND state = 0"
        )
        self._finish = sql("UPDATE {prefix}timeouts SET state = $2 WHERE id = $1 AND state = 0")
        self._cancel_for = sql(
            "UPDATE {prefix}timeouts SET state = $1 WHERE workflow_name = $2 AND run_id = $3 "
            "AND status = $4 AND run_version < $5 AND state = 0"
        )
        self._prune = sql(
            "DELETE FROM {prefix}timeouts WHERE id IN (SELECT id FROM {prefix}timeouts "
            "WHERE workflow_name = $1 AND state != 0 AND created_at < $2 LIMIT $3)"
        )
        self._list = sql(
            f"SELECT {TIMEOUT_COLUMNS} FROM {{prefix}}timeouts WHERE workflow_name = $1 "
            "AND state = 0 ORDER BY id"
        )
        # The visit's unique index starts with (workflow_name, run_id): one range of it.
        self._list_for_run = sql(
            f"SELECT {TIMEOUT_COLUMNS} FROM {{prefix}}timeouts WHERE workflow_name = $1 "
            "AND run_id = $2 AND state = 0 ORDER BY id"
        )
        self._list_due = sql(
            f"SELECT {TIMEOUT_COLUMNS} FROM {{prefix}}timeouts WHERE workflow_name = $1 "
            "AND status = $2 AND state = 0 AND expire_at <= $3 "
            "AND (claimed_until IS NULL OR claimed_until <= $3) ORDER BY expire_at, id LIMIT $4"
        )

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
        for name, value in (
            ("workflow_name", workflow_name),
            ("foreign_id", foreign_id),
            ("run_id", run_id),
        ):
            check_text(name, value)
        created = utcnow()
        args = (workflow_name, run_id, status, run_version)
        timeout_id = await self.db.fetchval(
            self._insert,
            workflow_name,
            foreign_id,
            run_id,
            status,
            run_version,
            to_us(expire_at),
            to_us(created),
            idempotent=False,
        )
        if timeout_id is None:  # this visit already has its timer
            row = await self.db.fetchrow(self._visit, *args)
            return timeout_from_row(row)
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

    async def _change(self, timeout_id: int, sql: str, *args: object) -> bool:
        # Not repeated after a lost connection: a compare-and-set that committed would answer
        # False the second time (the caller retries it, and learns the truth).
        status = await self.db.execute(sql, timeout_id, *args, idempotent=False)
        if status == "UPDATE 1":
            return True
        if await self.db.fetchval(self._exists, timeout_id) is not None:
            return False
        raise TimeoutNotFound(f"no timeout {timeout_id}")

    async def claim(self, timeout_id: int, now: datetime, until: datetime) -> bool:
        check_aware("now", now)
        check_aware("until", until)
        return await self._change(timeout_id, self._claim, to_us(until), to_us(now))

    async def defer(self, timeout_id: int, until: datetime) -> None:
        check_aware("until", until)
        await self._change(timeout_id, self._defer, to_us(until))

    async def complete(self, timeout_id: int) -> bool:
        return await self._change(timeout_id, self._finish, COMPLETED)

    async def cancel(self, timeout_id: int) -> None:
        await self._change(timeout_id, self._finish, CANCELLED)

    async def cancel_for(
        self, workflow_name: str, run_id: str, status: int, below_version: int
    ) -> None:
        await self.db.execute(
            self._cancel_for, CANCELLED, workflow_name, run_id, status, below_version
        )

    async def prune(self, workflow_name: str, before: datetime) -> int:
        """Delete the workflow's completed and cancelled timers created before ``before``,
        :attr:`prune_chunk` per statement; how many."""
        check_aware("before", before)
        total = 0
        while True:
            status = await self.db.execute(
                self._prune, workflow_name, to_us(before), self.prune_chunk
            )
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < self.prune_chunk:
                return total

    async def list(self, workflow_name: str) -> builtins.list[TimeoutRecord]:
        return [timeout_from_row(row) for row in await self.db.fetch(self._list, workflow_name)]

    async def list_for_run(self, workflow_name: str, run_id: str) -> builtins.list[TimeoutRecord]:
        """The run's pending timers (claimed or not), by ID."""
        rows = await self.db.fetch(self._list_for_run, workflow_name, run_id)
        return [timeout_from_row(row) for row in rows]

    async def list_due(
        self, workflow_name: str, status: int, now: datetime, limit: int = 100
    ) -> builtins.list[TimeoutRecord]:
        check_aware("now", now)
        rows = await self.db.fetch(self._list_due, workflow_name, status, to_us(now), limit)
        return [timeout_from_row(row) for row in rows]
