"""Role leases in a database: one row per role, renewed by its holder (every dialect).

The row's expiry is on the *database's* clock: a server dialect (PostgreSQL, MySQL) has the
server write and compare ``now()`` plus the ttl, so that processes on hosts whose clocks
disagree still agree on when a lease has expired; SQLite, whose processes all run on the host
that holds the file, uses that host's wall clock (``time.time()``). A dialect subclass supplies
the statements (:meth:`ServerRoleScheduler._try`, ``_extend``, ``_delete``); the timing, the
renewals, the hand-over and the clean-up on cancellation are here, once.

It implements :class:`~statestream.RoleMembers` too (the workers sharing the database divide
the roles): one row per running workflow instance in ``{prefix}members``, its expiry on the
same clock as the lease rows'; a dialect supplies the beat (one transaction: upsert the
member's row, delete the group's expired rows, select the rest) and the delete of ``leave``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping

from ..._core.aio import wait_event
from ...errors import InvalidInput

__all__ = ["ServerLease", "ServerRoleScheduler"]


class ServerLease:
    """A role held through a lease row that the holder renews.

    ``valid_until`` (a ``time.monotonic()`` value) is the moment at which the last successful
    acquire or renewal was *sent*, plus the ttl, minus the scheduler's margin. The database
    sets the row's expiry to its clock plus the ttl when it runs the statement, which is after
    it was sent; another process takes the role only once that clock is past that expiry. So
    ``valid_until`` passes at least ``margin`` before anyone else can hold the role, whatever
    the clocks of the hosts say (the monotonic clock of one host and the database's clock must
    only run at the same rate, to within the margin over a ttl).

    The lease is lost (``lost()`` returns, and it stays lost) when a renewal fails, when the
    row was taken, or when the holder finds its deadline passed: an event loop blocked past it
    learns that as soon as it runs again. The row is then deleted so that the next holder need
    not wait for it to expire.
    """

    def __init__(
        self, scheduler: ServerRoleScheduler, role: str, holder: str, valid_until: float
    ) -> None:
        self._scheduler = scheduler
        self._role = role
        self.holder = holder
        #: The local deadline (see :class:`~statestream.Lease`); a plain attribute, as the
        #: engine reads it before every step and write.
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


class ServerRoleScheduler:
    """At most one holder per role across every process on the database, through lease rows.

    A holder renews every :attr:`renew_interval` (half of ``ttl - margin``); a process that
    dies or is cut off loses its roles within ``ttl`` seconds (its ``valid_until`` passes
    ``margin`` before that), and another process takes them. ``margin`` is
    ``max(ttl / 5, 1 s)``, capped at ``ttl / 2``: it covers the write already on its way when
    the deadline passed and the drift between the clocks. Waiters try again every
    ``poll_interval``, and at once when a lease of this scheduler is released.

    Division of the roles (:class:`~statestream.RoleMembers`): each running instance of a
    workflow keeps a row in ``{prefix}members``, written every ``member_ttl / 3`` seconds with
    the expiry ``now() + member_ttl`` on the database's clock; the instances divide the
    workflow's roles among the rows that have not expired. A killed worker's row expires
    ``member_ttl`` after its last write and its leases ``ttl`` after their last renewal: the
    others hold its roles about ``max(ttl, member_ttl)`` plus a ``poll_interval`` after it died.
    ``member_ttl=None`` turns the division off (the first worker takes every role).
    """

    def __init__(
        self,
        *,
        ttl: float = 10.0,
        poll_interval: float = 0.5,
        member_ttl: float | None = 10.0,
    ) -> None:
        if ttl <= 0 or poll_interval <= 0:
            raise InvalidInput("ttl and poll_interval must be > 0")
        if member_ttl is not None and not (isinstance(member_ttl, int | float) and member_ttl > 0):
            raise InvalidInput(f"member_ttl must be > 0 or None, got {member_ttl!r}")
        self._member_ttl = None if member_ttl is None else float(member_ttl)
        self.ttl = ttl
        self.poll_interval = poll_interval
        self.margin = min(max(ttl / 5, 1.0), ttl / 2)
        self.renew_interval = (ttl - self.margin) / 2
        self._released = asyncio.Event()

    async def _try(self, role: str, holder: str) -> bool:
        """Take the role's row if it is free or expired (database clock); whether taken."""
        raise NotImplementedError

    async def _extend(self, role: str, holder: str) -> bool:
        """Move the expiry of our row to the database's now + ttl; whether it was still ours."""
        raise NotImplementedError

    async def _delete(self, role: str, holder: str) -> None:
        raise NotImplementedError

    async def _beat(self, group: str, member: str, held: int, ttl: float) -> dict[str, int]:
        """One transaction: upsert the member's row (expiry: the database's now + ``ttl``),
        delete the group's expired rows, return ``{member: held}`` of the rest."""
        raise NotImplementedError

    async def _leave(self, group: str, member: str) -> None:
        raise NotImplementedError

    @property
    def member_ttl(self) -> float | None:
        """See :class:`~statestream.RoleMembers`."""
        return self._member_ttl

    async def members(self, group: str, member: str, held: int) -> Mapping[str, int]:
        """See :meth:`statestream.RoleMembers.members`: one transaction, one round trip."""
        if isinstance(held, bool) or not isinstance(held, int) or held < 0:
            raise InvalidInput(f"held must be an int >= 0, got {held!r}")
        ttl = self._member_ttl if self._member_ttl is not None else 10.0
        return await self._beat(group, member, held, ttl)

    async def leave(self, group: str, member: str) -> None:
        """See :meth:`statestream.RoleMembers.leave`; idempotent."""
        await self._leave(group, member)

    async def _release(self, role: str, holder: str) -> None:
        # No shield: a delete already on its way runs even if this caller is cancelled, and
        # awaiting it directly resumes the releaser before any waiter answered with it.
        try:
            await self._delete(role, holder)
        finally:
            self._released.set()
            self._released = asyncio.Event()

    async def acquire(self, role: str) -> ServerLease:
        holder = uuid.uuid4().hex
        while True:
            started = time.monotonic()
            try:
                taken = await self._try(role, holder)
            except BaseException:
                # Cancelled (or failed) while the statement was on its way: it may still have
                # taken the row, so delete any row under our holder ID.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._release(role, holder))
                raise
            if taken:
                valid_until = started + self.ttl - self.margin
                if time.monotonic() < valid_until:
                    return ServerLease(self, role, holder, valid_until)
                await self._release(role, holder)  # so slow that it is born expired
                continue
            await wait_event(self._released, self.poll_interval)
