"""Fair division of a workflow's roles among the instances that run it.

With a scheduler that implements :class:`~statestream.RoleMembers`, each running instance of a
workflow (one :class:`~.supervisor.Supervisor`) is a member of the group named after the
workflow. Every ``member_ttl / 3`` seconds it tells the scheduler it is alive and how many roles
it holds, and hears who else is alive and how many they hold. From that it computes its share
(:func:`fair_share`): the roles divided as evenly as they go, the odd ones left with the members
that hold the most already, so that a steady membership moves nothing.

Below its share, a member's idle processes try for their roles; at its share, they stop trying;
above it (seen on two beats in a row, so that a transient view moves nothing) it hands the
surplus over: the processes whose roles it likes least (a rendezvous hash of role and member)
finish the event in hand and release their leases, and the members below their share take
them. A member that stops beating (killed, or cut off) drops out of the others' view after
``member_ttl``: their shares grow, and they take its roles as its leases expire.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping

from .._core.protocols import RoleMembers
from .logfields import fields

__all__ = ["Share", "fair_share", "preference"]

log = logging.getLogger("statestream")

#: Beats in a row a member must find itself above its share before it hands roles over.
SURPLUS_BEATS = 2


def fair_share(view: Mapping[str, int], me: str, roles: int) -> int:
    """How many of ``roles`` roles member ``me`` should hold, given every live member's count.

    Each member gets ``roles // len(view)``; the ``roles % len(view)`` left over go one each to
    the members that hold the most (ties broken by member name), so that an even division that
    is already in place is the one computed. Every member computes the same division from the
    same view, and the shares add up to ``roles``.
    """
    if me not in view:
        view = {**view, me: 0}
    base, extra = divmod(roles, len(view))
    if not extra:
        return base
    order = sorted(view, key=lambda member: (-view[member], member))
    return base + (1 if order.index(me) < extra else 0)


def preference(role: str, member: str) -> int:
    """How much ``member`` wants to keep ``role`` (a rendezvous hash): it hands over its least
    wanted roles first, so that which roles move does not depend on timing."""
    digest = hashlib.blake2b(f"{role}\x00{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def member_name() -> str:
    """A new member's name: host, process ID and a random suffix (readable in the table)."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class Share:
    """One member's side of the division of one workflow's roles.

    Args:
        members: the scheduler's membership.
        ttl: its ``member_ttl``.
        group: the workflow's name.
        roles: how many distinct roles this instance runs (it can grow, with schedules).
    """

    def __init__(
        self, members: RoleMembers, ttl: float, group: str, roles: Callable[[], int]
    ) -> None:
        self._members = members
        self.ttl = ttl
        self.interval = ttl / 3
        self.group = group
        self.member = member_name()
        self._roles = roles
        #: role -> how to ask its process to hand it over
        self.held: dict[str, Callable[[], None]] = {}
        self.yielding: set[str] = set()
        #: None until the first beat answered (or failed)
        self.quota: int | None = None
        self.view: dict[str, int] = {}
        self._over = 0
        self._last_ok = time.monotonic()
        self._failing = False
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the supervisor's side

    def start(self, stopping: asyncio.Event) -> None:
        self._task = asyncio.ensure_future(self._run(stopping))

    async def close(self) -> None:
        """Stop beating and leave the group (after the roles were released)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        try:
            await self._members.leave(self.group, self.member)
        except Exception:
            log.warning(
                "statestream: %s: leaving the workers' group failed (the others see this "
                "worker gone within %g s)",
                self.group,
                self.ttl,
                exc_info=True,
            )

    def room(self) -> bool:
        """Whether this member is below its share (an idle process may try for its role)."""
        return self.quota is not None and len(self.held) < self.quota

    async def wait_room(self, stopping: asyncio.Event) -> bool:
        """Wait until this member is below its share; False if ``stopping`` came first."""
        while not stopping.is_set():
            if self.room():
                return True
            await _first(self._changed, stopping)
        return False

    async def wait_full(self) -> None:
        """Return once this member holds its share (an acquire in flight is then dropped)."""
        while self.room():
            await self._changed.wait()

    def took(self, role: str, handover: Callable[[], None]) -> None:
        self.held[role] = handover
        self._notify()

    def gave_up(self, role: str) -> None:
        self.held.pop(role, None)
        self.yielding.discard(role)
        self._notify()

    # ------------------------------------------------------------------ beating

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.beat()
            await _first(stopping, timeout=self.interval)

    async def beat(self) -> None:
        """Tell the others we are alive, recompute the share, hand the surplus over."""
        roles = self._roles()
        try:
            view = dict(await self._members.members(self.group, self.member, len(self.held)))
        except Exception:
            if not self._failing:
                log.warning(
                    "statestream: %s: telling the other workers this one is alive failed; "
                    "retrying every %g s",
                    self.group,
                    self.interval,
                    exc_info=True,
                )
            self._failing = True
            if self.quota is None or time.monotonic() - self._last_ok >= self.ttl:
                # The others no longer count us: take whatever roles are free, as a worker
                # without division would, rather than leave roles nobody runs.
                self._set_quota(roles, 1)
            return
        if self._failing:
            log.info("statestream: %s: the workers' group answers again", self.group)
        self._failing = False
        self._last_ok = time.monotonic()
        view[self.member] = len(self.held)
        self.view = view
        self._set_quota(fair_share(view, self.member, roles), len(view))
        assert self.quota is not None
        surplus = len(self.held) - len(self.yielding) - self.quota
        if surplus <= 0:
            self._over = 0
            return
        self._over += 1
        if self._over < SURPLUS_BEATS:
            return
        self._over = 0
        keep = sorted(
            (r for r in self.held if r not in self.yielding),
            key=lambda r: preference(r, self.member),
        )
        for role in keep[:surplus]:
            log.info(
                "statestream: %s: handing role %s over (this worker holds %d roles, its share "
                "is %d)",
                self.group,
                role,
                len(self.held) - len(self.yielding),
                self.quota,
                extra=fields(role=role),
            )
            self.yielding.add(role)
            self.held[role]()

    def _set_quota(self, quota: int, workers: int) -> None:
        if quota != self.quota:
            log.info(
                "statestream: %s: %d worker(s) share its %d roles; this one's share is %d",
                self.group,
                workers,
                self._roles(),
                quota,
            )
            self.quota = quota
            self._notify()


async def _first(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Wait until one of ``events`` is set (or ``timeout`` passed)."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
