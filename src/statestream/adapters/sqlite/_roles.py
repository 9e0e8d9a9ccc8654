"""SQLite role scheduler: one lease row per role, renewed by its holder, and one member row per
running workflow instance, so that the workers sharing the file divide the roles."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Mapping

from ..._core.aio import wait_event
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

    Division of the roles (:class:`~statestream.RoleMembers`): each running instance of a
    workflow keeps a row in ``statestream_members``, written every ``member_ttl / 3`` seconds;
    the instances divide the workflow's roles evenly among the rows that have not expired. A
    killed worker's row expires ``member_ttl`` after its last write and its leases ``ttl`` after
    their last renewal: the others hold its roles about ``max(ttl, member_ttl)`` plus a
    ``poll_interval`` after it died.

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
        if ttl <= 0 or poll_interval <= 0:
            raise InvalidInput("ttl and poll_interval must be > 0")
        if member_ttl is not None and not member_ttl > 0:
            raise InvalidInput(f"member_ttl must be > 0 or None, got {member_ttl!r}")
        self._member_ttl = member_ttl
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

    @property
    def member_ttl(self) -> float | None:
        """See :class:`~statestream.RoleMembers`."""
        return self._member_ttl

    async def members(self, group: str, member: str, held: int) -> Mapping[str, int]:
        """See :meth:`statestream.RoleMembers.members`: one write transaction."""
        ttl = self._member_ttl if self._member_ttl is not None else 10.0

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

    async def leave(self, group: str, member: str) -> None:
        """See :meth:`statestream.RoleMembers.leave`."""

        def leave(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM statestream_members WHERE group_name = ? AND member = ?",
                (group, member),
            )

        await self.db.write(leave, rerunnable=True)

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
            await wait_event(self._released, self.poll_interval)
