"""MySQL role scheduler: one lease row per role, its expiry on the server's clock.

Why lease rows and not ``GET_LOCK``: a named lock belongs to a connection and is released only
when the server notices that the connection is gone, which after a network cut can take as long
as ``wait_timeout`` (8 hours by default) or TCP keepalive; and the holder cannot tell how long
its lock will outlive it. A lease row expires at a known moment on one clock, the server's, so
that a holder cut off from the server knows when it must have stopped (its ``valid_until``) and
another process takes the role once that moment is past, however the first one died.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from ...errors import InvalidInput
from ._db import MysqlDatabase
from ._rows import encode

__all__ = ["MysqlLease", "MysqlRoleScheduler"]


class MysqlLease:
    """A role held through a lease row that the holder renews.

    ``valid_until`` (a ``time.monotonic()`` value) is the moment at which the last successful
    acquire or renewal was *sent*, plus the ttl, minus the scheduler's margin. The row's expiry
    is set by the server when it runs the statement, later, to its clock plus the ttl, and
    another process takes the role only once the server's clock is past it: so ``valid_until``
    passes at least ``margin`` before any other process can hold the role, whatever the clocks
    of the hosts say.

    The lease is lost (``lost()`` returns, and it stays lost) when a renewal fails, when the row
    was taken, or when the holder finds its deadline passed; the row is then deleted at once
    (if the server can be reached) so that the next holder need not wait for it to expire.
    """

    def __init__(
        self, scheduler: MysqlRoleScheduler, role: str, holder: str, valid_until: float
    ) -> None:
        self._scheduler = scheduler
        self._role = role
        self.holder = holder
        #: The local deadline (see :class:`~statestream.Lease`).
        self.valid_until = valid_until
        self._lost = asyncio.Event()
        self._released = False
        self._renewer = asyncio.ensure_future(self._renew())

    @property
    def role(self) -> str:
        return self._role

    async def _renew(self) -> None:
        s = self._scheduler
        while True:
            await asyncio.sleep(s.renew_interval)
            if self._released:
                return
            started = time.monotonic()
            if started < self.valid_until:
                try:
                    held = await s._extend(self._role, self.holder)
                except Exception:
                    held = False
                if held and time.monotonic() < self.valid_until:
                    self.valid_until = started + s.ttl - s.margin
                    continue
            self._lost.set()
            if not self._released:
                self._released = True
                with contextlib.suppress(Exception):
                    await s._release(self._role, self.holder)
            return

    async def lost(self) -> None:
        await self._lost.wait()

    async def release(self) -> None:
        if self._released:
            self._lost.set()
            return
        self._released = True
        self._renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._renewer
        self._lost.set()
        await self._scheduler._release(self._role, self.holder)


class MysqlRoleScheduler:
    """At most one holder per role across every process using the database, through lease
    rows whose expiry is the server's clock (``UTC_TIMESTAMP(6)``).

    A holder renews its lease every :attr:`renew_interval`; a process that dies or is cut off
    loses its roles after at most ``ttl`` seconds, and another process takes them over. It
    stops acting under the lease ``margin`` (``max(ttl / 5, 1 s)``, at most ``ttl / 2``)
    before the row expires. Waiting processes try again every ``poll_interval`` (at once when a
    holder in this process releases).
    """

    def __init__(self, db: MysqlDatabase, *, ttl: float = 10.0, poll_interval: float = 0.5) -> None:
        if ttl <= 0 or poll_interval <= 0:
            raise InvalidInput("ttl and poll_interval must be > 0")
        self.db = db
        self.ttl = ttl
        self.poll_interval = poll_interval
        self.margin = min(max(ttl / 5, 1.0), ttl / 2)
        self.renew_interval = (ttl - self.margin) / 2
        self._released = asyncio.Event()

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

    async def _release(self, role: str, holder: str) -> None:
        try:
            await self.db.execute(
                f"DELETE FROM {self.db.prefix}leases WHERE role = %s AND holder = %s",
                (role.encode(), holder.encode()),
                idempotent=True,
            )
        finally:
            self._released.set()
            self._released = asyncio.Event()

    async def acquire(self, role: str) -> MysqlLease:
        encode("role", role)
        holder = uuid.uuid4().hex
        while True:
            started = time.monotonic()
            try:
                taken = await self._try(role, holder)
            except asyncio.CancelledError:
                # Cancelled while the attempt was on its way: it may have committed, so
                # remove any row under our holder ID rather than block the role for a ttl.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._release(role, holder))
                raise
            if taken:
                valid_until = started + self.ttl - self.margin
                if time.monotonic() < valid_until:
                    return MysqlLease(self, role, holder, valid_until)
                await self._release(role, holder)
                continue
            released = self._released
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), self.poll_interval)
