"""The in-process role scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from dataclasses import dataclass, field

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

    >>> scheduler = MemoryRoleScheduler()
    """

    def __init__(self) -> None:
        self._roles: dict[str, _Role] = {}

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
