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
    with skewed clocks agree on it.
    """

    def __init__(
        self, db: PostgresDatabase, *, ttl: float = 10.0, poll_interval: float = 0.5
    ) -> None:
        if not isinstance(db, PostgresDatabase):
            raise InvalidInput("PostgresRoleScheduler needs a PostgresDatabase")
        super().__init__(ttl=ttl, poll_interval=poll_interval)
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
