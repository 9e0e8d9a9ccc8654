"""The in-process role scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from ...errors import InvalidInput

__all__ = ["MemoryLease", "MemoryRoleScheduler"]


class MemoryLease:
    """A role held through :class:`MemoryRoleScheduler`; see :class:`~statestream.Lease`.

    A memory lease is never lost: :meth:`lost` returns only once the lease is released.
    """

    #: ``math.inf``: a memory lease cannot expire by time. A plain attribute, not a property:
    #: the engine reads it before every step and write.
    valid_until: float = math.inf

    def __init__(self, scheduler: MemoryRoleScheduler, role: str) -> None:
        self._scheduler = scheduler
        self._role = role
        self._released = False
        self._lost_waiters: list[asyncio.Future[None]] = []

    @property
    def role(self) -> str:
        """The role this lease holds."""
        return self._role

    @property
    def released(self) -> bool:
        """Whether :meth:`release` has been called."""
        return self._released

    async def lost(self) -> None:
        """Wait until the lease is released; a held memory lease is never lost."""
        if self._released:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._lost_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._lost_waiters:
                self._lost_waiters.remove(waiter)

    async def release(self) -> None:
        """Give the role up and hand it to the longest waiter; idempotent."""
        self._release()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        for waiter in self._lost_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._lost_waiters.clear()
        self._scheduler._hand_over(self)


@dataclass(slots=True, eq=False)
class _Role:
    holder: MemoryLease | None = None
    waiters: deque[asyncio.Future[MemoryLease]] = field(default_factory=deque)


class MemoryRoleScheduler:
    """A :class:`~statestream.RoleScheduler` for the tasks of one process.

    Waiters are served first come, first served. Roles are arbitrary strings and cost nothing
    while nobody holds or waits for them.

    It implements :class:`~statestream.RoleMembers` too: several instances of one workflow
    sharing it (in tests, or ``statestream worker`` given a workflow twice) divide its roles as
    separate worker processes would.

    Args:
        member_ttl: seconds a member stays alive after its last beat (it beats three times as
            often); ``None`` turns the division off, so that the first instance to start takes
            every role.

    >>> scheduler = MemoryRoleScheduler()
    """

    def __init__(self, *, member_ttl: float | None = 1.0) -> None:
        if member_ttl is not None and not member_ttl > 0:
            raise InvalidInput(f"member_ttl must be > 0 or None, got {member_ttl!r}")
        self._roles: dict[str, _Role] = {}
        self._member_ttl = member_ttl
        #: group -> member -> (held, expires at, on time.monotonic())
        self._members: dict[str, dict[str, tuple[int, float]]] = {}

    @property
    def member_ttl(self) -> float | None:
        """See :class:`~statestream.RoleMembers`."""
        return self._member_ttl

    async def members(self, group: str, member: str, held: int) -> Mapping[str, int]:
        """See :meth:`statestream.RoleMembers.members`."""
        now = time.monotonic()
        ttl = self._member_ttl if self._member_ttl is not None else math.inf
        live = self._members.setdefault(group, {})
        live[member] = (held, now + ttl)
        for name in [n for n, (_, until) in live.items() if until < now]:
            del live[name]
        return {name: count for name, (count, _) in sorted(live.items())}

    async def leave(self, group: str, member: str) -> None:
        """See :meth:`statestream.RoleMembers.leave`."""
        live = self._members.get(group)
        if live is not None:
            live.pop(member, None)
            if not live:
                del self._members[group]

    async def acquire(self, role: str) -> MemoryLease:
        """Wait until ``role`` is free and hold it.

        Cancelling the waiting task leaves the role to the others: a waiter that is granted the
        role and cancelled in the same loop iteration passes it on before re-raising.
        """
        state = self._roles.get(role)
        if state is None:
            state = self._roles[role] = _Role()
        if state.holder is None and not state.waiters:
            lease = state.holder = MemoryLease(self, role)
            return lease
        waiter: asyncio.Future[MemoryLease] = asyncio.get_running_loop().create_future()
        state.waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Granted while being cancelled: the caller will never see the lease.
                waiter.result()._release()
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    state.waiters.remove(waiter)
                self._forget_if_idle(role, state)
            raise

    def _hand_over(self, lease: MemoryLease) -> None:
        role = lease.role
        state = self._roles.get(role)
        if state is None or state.holder is not lease:
            return
        state.holder = None
        while state.waiters:
            waiter = state.waiters.popleft()
            if not waiter.done():
                successor = state.holder = MemoryLease(self, role)
                waiter.set_result(successor)
                return
        self._forget_if_idle(role, state)

    def _forget_if_idle(self, role: str, state: _Role) -> None:
        if state.holder is None and not state.waiters and self._roles.get(role) is state:
            del self._roles[role]
