"""SQLite role scheduler: one lease row per role, renewed by its holder."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid

from ...errors import InvalidInput
from ._db import SqliteDatabase

__all__ = ["SqliteLease", "SqliteRoleScheduler"]


class SqliteLease:
    """A role held through a lease row that the holder renews.

    ``valid_until`` (a ``time.monotonic()`` value) is the moment at which the last successful
    acquire or renewal *started*, plus the ttl, minus the scheduler's :attr:`~SqliteRoleScheduler.
    margin`. The row's expiry is written in the same write, later, as wall-clock time plus the
    ttl, and another process takes the role only once its wall clock is past that expiry: so
    ``valid_until`` passes at least ``margin`` before any other process can hold the role.

    The lease is lost (``lost()`` returns, and it stays lost) when a renewal fails, when the
    row was taken, or when the holder finds its deadline passed: an event loop blocked past it
    (so that it could not renew in time) learns that as soon as it runs again, and the row is
    deleted at once so that the next holder need not wait for it to expire.
    """

    def __init__(
        self, scheduler: SqliteRoleScheduler, role: str, holder: str, valid_until: float
    ) -> None:
        self._scheduler = scheduler
        self._role = role
        self.holder = holder
        #: The local deadline (see :class:`~statestream.Lease`); a plain attribute, not a
        #: property, as the engine reads it before every step and write.
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
                # A renewal that returns after the deadline still loses the lease: the holder
                # may have seen it pass and stopped, and valid_until only ever moves forward.
                if held and time.monotonic() < self.valid_until:
                    self.valid_until = started + s.ttl - s.margin
                    continue
            self._lost.set()
            if not self._released:
                self._released = True
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


class SqliteRoleScheduler:
    """At most one holder per role across every process using the file, through lease rows.

    A holder renews its lease every :attr:`renew_interval` (half of ``ttl - margin``); a
    process that dies loses its roles after at most ``ttl`` seconds, and another process takes
    them over. ``margin`` is ``max(ttl / 5, 1 s)``, capped at ``ttl / 2``: a holder stops
    acting under its lease (:attr:`SqliteLease.valid_until`) that long before another process
    could take the role, which covers the write that was already on its way when the deadline
    passed and the drift between the monotonic and the wall clock.

    Clocks: the expiry stored in the row is wall-clock time (``time.time()``), written and
    compared by the processes that share the file, so that it means the same in all of them
    and across restarts and reboots. They all run on the one host that holds the file, so they
    read the same clock: no skew between them is assumed or allowed for. A step of the host's
    clock forward by more than ``margin`` during a lease (not a slew: NTP slews small offsets)
    would let another process take a role early; a step backward only delays a takeover.
    """

    def __init__(
        self, db: SqliteDatabase, *, ttl: float = 10.0, poll_interval: float = 0.5
    ) -> None:
        if ttl <= 0 or poll_interval <= 0:
            raise InvalidInput("ttl and poll_interval must be > 0")
        self.db = db
        self.ttl = ttl
        self.poll_interval = poll_interval
        #: How long before the row's expiry a lease's ``valid_until`` passes.
        self.margin = min(max(ttl / 5, 1.0), ttl / 2)
        #: How often a holder renews: half of how long a renewal keeps the lease valid, so
        #: that one slow renewal still leaves time for the next.
        self.renew_interval = (ttl - self.margin) / 2
        self._released = asyncio.Event()

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

    async def _release(self, role: str, holder: str) -> None:
        def release(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM statestream_leases WHERE role = ? AND holder = ?", (role, holder)
            )

        # No shield: the queued delete runs even if this caller is cancelled, and awaiting the
        # write directly resumes the releaser before any waiter answered in the same batch.
        try:
            await self.db.write(release)
        finally:
            self._released.set()
            self._released = asyncio.Event()

    async def acquire(self, role: str) -> SqliteLease:
        holder = uuid.uuid4().hex
        while True:
            started = time.monotonic()
            try:
                taken = await self._try(role, holder)
            except BaseException:
                # Cancelled (or failed) while the attempt was queued: it may still commit, so
                # remove any row under our holder ID rather than block the role for a ttl.
                await asyncio.shield(self._release(role, holder))
                raise
            if taken:
                valid_until = started + self.ttl - self.margin
                if time.monotonic() < valid_until:
                    return SqliteLease(self, role, holder, valid_until)
                await self._release(role, holder)  # the write took so long it is born expired
                continue
            released = self._released
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), self.poll_interval)
