"""MySQL role scheduler: the shared lease rows (:mod:`..sql._roles`), their expiry on the
server's clock (``UTC_TIMESTAMP(6)``).

Why lease rows and not ``GET_LOCK``: a named lock belongs to a connection and is released only
when the server notices that the connection is gone, which after a network cut can take as long
as ``wait_timeout`` (8 hours by default) or TCP keepalive, and the holder cannot tell how long
its lock will outlive it. A lease row expires at a known moment on one clock, the server's, so
that a holder cut off from the server knows when it must have stopped (its ``valid_until``) and
another process takes the role once that moment is past, however the first one died.
"""

from __future__ import annotations

from ..sql._roles import ServerLease, ServerRoleScheduler
from ._db import Bind, MysqlDatabase
from ._rows import encode

__all__ = ["MysqlLease", "MysqlRoleScheduler"]

#: A lease of :class:`MysqlRoleScheduler` (the shared lease: see :class:`ServerLease`).
MysqlLease = ServerLease


class MysqlRoleScheduler(ServerRoleScheduler):
    """At most one holder per role across every process using the database, through lease
    rows. A process that dies or is cut off loses its roles within ``ttl`` seconds (it stops
    acting under them ``margin`` before), and another process takes them. The member rows
    (:class:`~statestream.RoleMembers`) expire on the same clock, ``UTC_TIMESTAMP(6)``."""

    def __init__(
        self,
        db: MysqlDatabase,
        *,
        ttl: float = 10.0,
        poll_interval: float = 0.5,
        member_ttl: float | None = 10.0,
    ) -> None:
        super().__init__(ttl=ttl, poll_interval=poll_interval, member_ttl=member_ttl)
        self.db = db

    @property
    def _ttl_us(self) -> int:
        return int(self.ttl * 1_000_000)

    async def _try(self, role: str, holder: str) -> bool:
        # Assignments run left to right: holder first (taken only if the row has expired),
        # then the expiry, moved only if the row is now ours. 1: inserted, 2: taken, 0: held.
        changed = await self.db.execute(
            f"INSERT INTO {self.db.prefix}leases (role, holder, expires_at) VALUES "
            "(%s, %s, UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND) ON DUPLICATE KEY UPDATE "
            "holder = IF(expires_at < UTC_TIMESTAMP(6), VALUES(holder), holder), "
            "expires_at = IF(holder = VALUES(holder), VALUES(expires_at), expires_at)",
            (encode("role", role), holder.encode(), self._ttl_us),
        )
        return changed > 0

    async def _extend(self, role: str, holder: str) -> bool:
        changed = await self.db.execute(
            f"UPDATE {self.db.prefix}leases SET expires_at = UTC_TIMESTAMP(6) + INTERVAL %s "
            "MICROSECOND WHERE role = %s AND holder = %s AND expires_at >= UTC_TIMESTAMP(6)",
            (self._ttl_us, role.encode(), holder.encode()),
        )
        return changed == 1

    async def _delete(self, role: str, holder: str) -> None:
        await self.db.execute(
            f"DELETE FROM {self.db.prefix}leases WHERE role = %s AND holder = %s",
            (role.encode(), holder.encode()),
            idempotent=True,
        )

    async def _beat(self, group: str, member: str, held: int, ttl: float) -> dict[str, int]:
        g, m = encode("group", group), encode("member", member)
        table = f"{self.db.prefix}members"

        def build(bind: Bind) -> list[str]:
            return [
                bind(
                    f"INSERT INTO {table} (group_name, member, held, expires_at) VALUES "
                    "(%s, %s, %s, UTC_TIMESTAMP(6) + INTERVAL %s MICROSECOND) "
                    "ON DUPLICATE KEY UPDATE held = VALUES(held), expires_at = VALUES(expires_at)",
                    (g, m, held, int(ttl * 1_000_000)),
                ),
                bind(
                    f"DELETE FROM {table} WHERE group_name = %s AND expires_at < UTC_TIMESTAMP(6)",
                    (g,),
                ),
                bind(f"SELECT member, held FROM {table} WHERE group_name = %s", (g,)),
            ]

        # One round trip, one transaction; safe to repeat (it sets the same values).
        results = await self.db.script(build, idempotent=True)
        rows = results[-1].rows or ()
        return {bytes(name).decode(): int(count) for name, count in sorted(rows)}

    async def _leave(self, group: str, member: str) -> None:
        await self.db.execute(
            f"DELETE FROM {self.db.prefix}members WHERE group_name = %s AND member = %s",
            (encode("group", group), encode("member", member)),
            idempotent=True,
        )

    async def acquire(self, role: str) -> ServerLease:
        encode("role", role)  # a role the column cannot hold is refused at the call
        return await super().acquire(role)
