"""``RoleSchedulerContract``: the conformance suite for :class:`~statestream.RoleScheduler`.

Mirrors luno/workflow's ``adaptertest.RunRoleSchedulerTest``: several schedulers sharing one
backend stand for several processes, and at most one of them may hold a role at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import pytest

from .._core.protocols import Lease, RoleScheduler
from ._util import unique

__all__ = ["RoleSchedulerContract", "SchedulerFactory"]

#: ``make_schedulers(n)``: ``n`` schedulers that share one backend (``n`` contending processes).
SchedulerFactory = Callable[[int], Awaitable[list[RoleScheduler]]]

#: How long an uncontended acquire, or the hand-over after a release, may take.
_PROMPT = 1.0
#: How long contenders get before exactly one of them must hold the role.
_SETTLE = 0.25


async def _cleanup(tasks: Iterable[asyncio.Task[Lease]], leases: Iterable[Lease] = ()) -> None:
    """Cancel waiting acquires and release every lease, so no role stays held after a test."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for lease in [*leases, *(r for r in results if not isinstance(r, BaseException))]:
        await lease.release()


class RoleSchedulerContract:
    """Conformance tests for a :class:`~statestream.RoleScheduler`.

    Subclass it as ``TestXxxRoleScheduler`` and define a ``make_schedulers`` fixture that gives a
    :data:`SchedulerFactory`: ``await make_schedulers(n)`` returns ``n`` schedulers sharing one
    backend.
    """

    @pytest.mark.asyncio
    async def test_exactly_one_contender_holds_the_role(
        self, make_schedulers: SchedulerFactory
    ) -> None:
        # Given five processes that want the same role
        schedulers = await make_schedulers(5)
        role = unique("role")
        tasks = [asyncio.create_task(s.acquire(role)) for s in schedulers]
        try:
            # Then exactly one holds it
            await asyncio.sleep(_SETTLE)
            holders = [t for t in tasks if t.done()]
            assert len(holders) == 1
            lease = holders[0].result()
            assert lease.role == role

            # And when it lets go, exactly one other takes over
            await lease.release()
            waiting = [t for t in tasks if not t.done()]
            done, _ = await asyncio.wait(
                waiting, timeout=_PROMPT, return_when=asyncio.FIRST_COMPLETED
            )
            assert len(done) == 1
            await asyncio.sleep(_SETTLE)
            assert sum(t.done() for t in waiting) == 1
        finally:
            await _cleanup(tasks)

    @pytest.mark.asyncio
    async def test_cancelled_waiter_never_holds_the_role(
        self, make_schedulers: SchedulerFactory
    ) -> None:
        # Given a held role and a second process waiting for it
        first, second, third = await make_schedulers(3)
        role = unique("role")
        holder = await asyncio.wait_for(first.acquire(role), _PROMPT)
        waiter = asyncio.create_task(second.acquire(role))
        try:
            await asyncio.sleep(_SETTLE / 5)
            assert not waiter.done()

            # When the waiter is cancelled
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter

            # Then, once released, the role goes to someone else
            await holder.release()
            lease = await asyncio.wait_for(third.acquire(role), _PROMPT)
            await lease.release()
        finally:
            await _cleanup([waiter], [holder])

    @pytest.mark.asyncio
    async def test_waiter_cancelled_as_the_role_is_released_passes_it_on(
        self, make_schedulers: SchedulerFactory
    ) -> None:
        # Given a waiter that is cancelled right as the holder releases the role
        first, second, third = await make_schedulers(3)
        role = unique("role")
        holder = await asyncio.wait_for(first.acquire(role), _PROMPT)
        waiter = asyncio.create_task(second.acquire(role))
        try:
            await asyncio.sleep(_SETTLE / 5)
            await holder.release()
            waiter.cancel()
            try:
                # It may have won the role before the cancellation landed
                won = await waiter
            except asyncio.CancelledError:
                pass
            else:
                await won.release()

            # Then the role is not left held by a task that no longer exists
            lease = await asyncio.wait_for(third.acquire(role), _PROMPT)
            await lease.release()
        finally:
            await _cleanup([waiter], [holder])

    @pytest.mark.asyncio
    async def test_different_roles_do_not_block_each_other(
        self, make_schedulers: SchedulerFactory
    ) -> None:
        first, second = await make_schedulers(2)
        one = await asyncio.wait_for(first.acquire(unique("role")), _PROMPT)
        try:
            other = await asyncio.wait_for(second.acquire(unique("role")), _PROMPT)
            await other.release()
            again = await asyncio.wait_for(first.acquire(unique("role")), _PROMPT)
            await again.release()
        finally:
            await one.release()

    @pytest.mark.asyncio
    async def test_release_is_idempotent_and_frees_the_role(
        self, make_schedulers: SchedulerFactory
    ) -> None:
        first, second = await make_schedulers(2)
        role = unique("role")
        lease = await asyncio.wait_for(first.acquire(role), _PROMPT)
        assert lease.role == role

        await lease.release()
        await lease.release()

        for scheduler in (first, second):
            again = await asyncio.wait_for(scheduler.acquire(role), _PROMPT)
            assert again.role == role
            await again.release()
        await lease.release()

    @pytest.mark.asyncio
    async def test_lost_does_not_return_while_the_lease_is_held(
        self, make_schedulers: SchedulerFactory
    ) -> None:
        [scheduler] = await make_schedulers(1)
        lease = await asyncio.wait_for(scheduler.acquire(unique("role")), _PROMPT)
        watcher = asyncio.create_task(lease.lost())
        try:
            await asyncio.sleep(_SETTLE)
            assert not watcher.done()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await lease.release()
