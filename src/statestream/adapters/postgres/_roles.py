"""PostgreSQL role scheduler: lease rows whose expiry is the server's clock."""

from __future__ import annotations

from ...errors import InvalidInput
from ..sql._roles import ServerLease, ServerRoleScheduler
from ..sql._rows import check_text
from ._db import PostgresDatabase

__all__ = ["PostgresLease", "PostgresRoleScheduler"]

PostgresLease = ServerLease


class PostgresRoleScheduler(ServerRoleScheduler):
    """At most one holder per role across every process using the database; see
    :class:`~statestream.adapters.sql._roles.ServerRoleScheduler` for the timing.

    The expiry is ``now() + ttl`` on the server, compared with the server's ``now()``: hosts
    with skewed clocks agree on it. The member rows (:class:`~statestream.RoleMembers`) expire
    on the same clock.
    """

    def __init__(
        self,
        db: PostgresDatabase,
        *,
        ttl: float = 10.0,
        poll_interval: float = 0.5,
        member_ttl: float | None = 10.0,
    ) -> None:
        if not isinstance(db, PostgresDatabase):
            raise InvalidInput("PostgresRoleScheduler needs a PostgresDatabase")
        super().__init__(ttl=ttl, poll_interval=poll_interval, member_ttl=member_ttl)
        self.db = db
        sql = db.sql
        self._take = sql(
            "INSERT INTO {prefix}leases AS l (role, holder, expires_at) VALUES ($1, $2, "
            "clock_timestamp() + make_interval(secs => $3)) ON CONFLICT (role) DO UPDATE SET "
            "holder = excluded.holder, expires_at = excluded.expires_at "
            "WHERE l.expires_at < clock_timestamp() RETURNING 1"
        )
        self._renew_sql = sql(
            "UPDATE {prefix}leases SET expires_at = clock_timestamp() + make_interval(secs => $3) "
            "WHERE role = $1 AND holder = $2"
        )
        self._delete_sql = sql("DELETE FROM {prefix}leases WHERE role = $1 AND holder = $2")
        # One statement, so one transaction: the CTEs and the final SELECT share a snapshot
        # taken before the upsert, so the member's own row comes from the upsert's RETURNING.
        # A member that beats again while another deletes its expired row is not deleted: the
        # DELETE re-checks the updated row's expiry (READ COMMITTED) after waiting for it.
        self._beat_sql = sql(
            "WITH beat AS (INSERT INTO {prefix}members AS m "
            "(group_name, member, held, expires_at) "
            "VALUES ($1, $2, $3, clock_timestamp() + make_interval(secs => $4)) "
            "ON CONFLICT (group_name, member) DO UPDATE SET held = excluded.held, "
            "expires_at = excluded.expires_at RETURNING m.member, m.held), "
            "gone AS (DELETE FROM {prefix}members "
            "WHERE group_name = $1 AND member <> $2 AND expires_at < clock_timestamp() "
            "RETURNING 1) "
            "SELECT member, held FROM {prefix}members "
            "WHERE group_name = $1 AND member <> $2 AND expires_at >= clock_timestamp() "
            "UNION ALL SELECT member, held FROM beat"
        )
        self._leave_sql = sql("DELETE FROM {prefix}members WHERE group_name = $1 AND member = $2")

    async def _try(self, role: str, holder: str) -> bool:
        check_text("the role", role)
        row = await self.db.fetchval(self._take, role, holder, float(self.ttl), idempotent=False)
        return row is not None

    async def _extend(self, role: str, holder: str) -> bool:
        status = await self.db.execute(
            self._renew_sql, role, holder, float(self.ttl), idempotent=False
        )
        return status == "UPDATE 1"

    async def _delete(self, role: str, holder: str) -> None:
        await self.db.execute(self._delete_sql, role, holder)

    async def _beat(self, group: str, member: str, held: int, ttl: float) -> dict[str, int]:
        check_text("the group", group)
        check_text("the member", member)
        # Safe to repeat after a lost connection: it sets the row to the same values.
        rows = await self.db.fetch(self._beat_sql, group, member, held, float(ttl))
        return {row[0]: row[1] for row in sorted(rows)}

    async def _leave(self, group: str, member: str) -> None:
        check_text("the group", group)
        check_text("the member", member)
        await self.db.execute(self._leave_sql, group, member)
