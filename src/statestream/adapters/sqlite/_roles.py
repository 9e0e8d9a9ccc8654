"""SQLite role scheduler: the shared lease and member rows (:mod:`..sql._roles`), their expiry
on the host's wall clock, written in the file's one writer transaction."""

from __future__ import annotations

import sqlite3
import time

from ..sql._roles import ServerLease, ServerRoleScheduler
from ._db import SqliteDatabase

__all__ = ["SqliteLease", "SqliteRoleScheduler"]

#: A lease of :class:`SqliteRoleScheduler` (the shared lease: see :class:`ServerLease`).
SqliteLease = ServerLease


class SqliteRoleScheduler(ServerRoleScheduler):
    """At most one holder per role across every process using the file, through lease rows;
    see :class:`~statestream.adapters.sql._roles.ServerRoleScheduler` for the timing (a
    process that dies loses its roles after at most ``ttl`` seconds, and stops acting under
    them ``margin`` before) and the division of the roles among the workflow's instances.

    Clocks: the expiry stored in the row is wall-clock time (``time.time()``), written and
    compared by the processes that share the file, so that it means the same in all of them
    and across restarts and reboots. They all run on the one host that holds the file, so they
    read the same clock: no skew between them is assumed or allowed for. A step of the host's
    clock forward by more than ``margin`` during a lease (not a slew: NTP slews small offsets)
    would let another process take a role early; a step backward only delays a takeover.

    Args:
        db: the file.
        ttl: the time to live of a lease, in seconds.
        poll_interval: how often a process waiting for a role held elsewhere tries again.
        member_ttl: the time to live of a member row; ``None`` turns the
            division off: the first worker to start then takes every role, the others stand by.
    """

    def __init__(
        self,
        db: SqliteDatabase,
        *,
        ttl: float = 10.0,
        poll_interval: float = 0.5,
        member_ttl: float | None = 10.0,
    ) -> None:
        super().__init__(ttl=ttl, poll_interval=poll_interval, member_ttl=member_ttl)
        self.db = db

    async def _try(self, role: str, holder: str) -> bool:
        def take(conn: sqlite3.Connection) -> bool:
            now = time.time()
            cursor = conn.execute(
                "INSERT INTO statestream_leases (role, holder, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (role) DO UPDATE SET holder = excluded.holder, "
                "expires_at = excluded.expires_at WHERE statestream_leases.expires_at < ?",
                (role, holder, now + self.ttl, now),
            )
            return cursor.rowcount == 1

        return await self.db.write(take)

    async def _extend(self, role: str, holder: str) -> bool:
        def extend(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE statestream_leases SET expires_at = ? WHERE role = ? AND holder = ?",
                (time.time() + self.ttl, role, holder),
            )
            return cursor.rowcount == 1

        return await self.db.write(extend)

    async def _delete(self, role: str, holder: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM statestream_leases WHERE role = ? AND holder = ?", (role, holder)
            )

        await self.db.write(delete)

    async def _beat(self, group: str, member: str, held: int, ttl: float) -> dict[str, int]:
        def beat(conn: sqlite3.Connection) -> dict[str, int]:
            now = time.time()
            conn.execute(
                "INSERT INTO statestream_members (group_name, member, held, expires_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (group_name, member) DO UPDATE SET "
                "held = excluded.held, expires_at = excluded.expires_at",
                (group, member, held, now + ttl),
            )
            conn.execute(
                "DELETE FROM statestream_members WHERE group_name = ? AND expires_at < ?",
                (group, now),
            )
            rows = conn.execute(
                "SELECT member, held FROM statestream_members WHERE group_name = ? ORDER BY member",
                (group,),
            )
            return dict(rows)

        return await self.db.write(beat, rerunnable=True)

    async def _leave(self, group: str, member: str) -> None:
        def leave(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM statestream_members WHERE group_name = ? AND member = ?",
                (group, member),
            )

        await self.db.write(leave, rerunnable=True)
