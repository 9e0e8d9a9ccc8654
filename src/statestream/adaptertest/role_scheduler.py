"""``RoleSchedulerContract``: the conformance suite for :class:`~statestream.RoleScheduler`.

Mirrors luno/workflow's ``adaptertest.RunRoleSchedulerTest``: several schedulers sharing one
backend stand for several processes, and at most one of them may hold a role at a time. Adds
``Lease.valid_until``: a holder that stalls finds its deadline passed when it wakes, a holder that
freezes loses the role in bounded time, and no two holders' deadlines overlap. For a scheduler
that implements :class:`~statestream.RoleMembers` (so that workers divide the roles), the
``test_members_*`` tests (in ``_members.py``) check the membership it keeps.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import ClassVar, TypeVar

import pytest

from .._core.protocols import Lease, RoleScheduler
from ._members import MembersContract
from ._util import unique

__all__ = ["RoleSchedulerContract", "SchedulerFactory"]

#: ``make_schedulers(n)``: ``n`` schedulers that share one backend (``n`` contending processes).
SchedulerFactory = Callable[[int], Awaitable[list[RoleScheduler]]]

#: How long an uncontended acquire, or the hand-over after a release, may take.
_PROMPT = 1.0
#: How long contenders get before exactly one of them must hold the role.
_SETTLE = 0.25

T = TypeVar("T")


async def _cleanup(tasks: Iterable[asyncio.Task[Lease]], leases: Iterable[Lease] = ()) -> None:
    """Cancel waiting acquires and release every lease, so no role stays held after a test."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for lease in [*leases, *(r for r in results if not isinstance(r, BaseException))]:
        await lease.release()


class _OtherProcess:
    """An event loop in a thread of its own: another process, whose loop can freeze."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` in the other loop and wait for its result from this one."""

        async def there() -> T:
            return await awaitable

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(there(), self._loop))

    async def freeze(self, thaw: threading.Event, longest: float) -> None:
        """Block the other loop (a stalled process) until ``thaw`` is set or ``longest`` passed."""
        frozen = threading.Event()

        def block() -> None:
            frozen.set()
            thaw.wait(longest)  # blocking on purpose: nothing in that loop runs meanwhile

        self._loop.call_soon_threadsafe(block)
        assert await asyncio.to_thread(frozen.wait, _PROMPT), "the other loop did not freeze"

    async def close(self) -> None:
        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.get_running_loop().shutdown_asyncgens()
            await asyncio.get_running_loop().shutdown_default_executor()

        await self.run(drain())
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join)
        self._loop.close()


async def _wake_to_a_lost_lease(lease: Lease, within: float) -> None:
    """In the thawed holder's loop: its deadline has passed and it learns it lost the role."""
    assert time.monotonic() >= lease.valid_until, "the frozen holder's lease is still valid"
    await asyncio.wait_for(lease.lost(), within)


class RoleSchedulerContract(MembersContract):
    """Conformance tests for a :class:`~statestream.RoleScheduler`.

    Subclass it as ``TestXxxRoleScheduler`` and define a ``make_schedulers`` fixture that gives a
    :data:`SchedulerFactory`: ``await make_schedulers(n)`` returns ``n`` schedulers sharing one
    backend.

    Set the class attribute :attr:`lease_ttl` too: the time to live, in seconds, of the leases
    the factory's schedulers grant, or ``None`` for a scheduler whose leases cannot expire by
    time (an in-process one), whose tests of expiry are then skipped. The tests of expiry block
    the event loop on purpose for up to twice the ttl, so keep it short (0.5 to 2 seconds), and
    one of them awaits ``make_schedulers(1)`` in a second event loop, in another thread, standing
    for a process that freezes: the schedulers must work in the loop that awaited the factory.

    A scheduler that implements :class:`~statestream.RoleMembers` also gets the
    ``test_members_*`` tests (skipped for one that does not, or whose ``member_ttl`` is
    ``None``); give the factory's schedulers a short ``member_ttl`` too (0.5 to 2 seconds).
    """

    #: Time to live of the leases, in seconds; ``None`` if leases never expire by time.
    lease_ttl: ClassVar[float | None]

    def _lease_ttl(self) -> float | None:
        try:
            return type(self).lease_ttl
        except AttributeError:
            pytest.fail(
                f"{type(self).__name__} must set lease_ttl: the ttl its schedulers' leases have, "
                "or None if they never expire by time"
            )

    def _expiring_lease_ttl(self) -> float:
        ttl = self._lease_ttl()
        if ttl is None:
            pytest.skip("this scheduler's leases never expire by time (lease_ttl = None)")
        return ttl

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

            # And when it lets go, exactly one other takes over (the waiters are listed before
            # the release: one may win while release() is still returning)
            waiting = [t for t in tasks if not t.done()]
            await lease.release()
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

    # -- valid_until -----------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_a_new_lease_is_valid_for_at_most_its_ttl(
        self, make_schedulers: SchedulerFactory
    ) -> None:
        ttl = self._lease_ttl()
        [scheduler] = await make_schedulers(1)
        lease = await asyncio.wait_for(scheduler.acquire(unique("role")), _PROMPT)
        acquired = time.monotonic()
        try:
            # Then it is valid now, for no longer than the ttl from when it was acquired
            assert isinstance(lease.valid_until, float)
            assert lease.valid_until > acquired
            if ttl is None:
                assert lease.valid_until == math.inf
            else:
                assert lease.valid_until <= acquired + ttl
        finally:
            await lease.release()

    @pytest.mark.asyncio
    async def test_a_running_holder_keeps_its_lease_valid(
        self, make_schedulers: SchedulerFactory
    ) -> None:
        # Given a held lease and an event loop that keeps running
        ttl = self._expiring_lease_ttl()
        [scheduler] = await make_schedulers(1)
        lease = await asyncio.wait_for(scheduler.acquire(unique("role")), _PROMPT)
        lost = asyncio.create_task(lease.lost())
        try:
            # Then over twice the ttl it renews in time: its deadline stays ahead of the clock
            deadline = time.monotonic() + 2 * ttl
            while time.monotonic() < deadline:
                assert time.monotonic() < lease.valid_until
                await asyncio.sleep(ttl / 20)
            assert not lost.done()
        finally:
            lost.cancel()
            await asyncio.gather(lost, return_exceptions=True)
            await lease.release()

    @pytest.mark.asyncio
    async def test_a_stalled_holder_finds_its_lease_expired_and_no_holders_overlap(
        self, make_schedulers: SchedulerFactory
    ) -> None:
        # Given a held role and another process waiting for it
        ttl = self._expiring_lease_ttl()
        holder, other = await make_schedulers(2)
        role = unique("role")
        lease = await asyncio.wait_for(holder.acquire(role), _PROMPT)

        async def contend() -> tuple[Lease, float, float]:
            taken = await other.acquire(role)
            return taken, time.monotonic(), lease.valid_until

        contender = asyncio.create_task(contend())
        try:
            await asyncio.sleep(_SETTLE / 5)
            assert not contender.done()

            # When the event loop is blocked past the ttl, so that the holder cannot renew
            time.sleep(ttl * 1.5)  # noqa: ASYNC251 -- blocking on purpose

            # Then the holder finds its deadline passed the moment it wakes
            assert time.monotonic() >= lease.valid_until

            # And whoever wins the race that follows (the holder renewing, or the waiter taking
            # the role), the waiter holds the role only once the holder's deadline has passed
            done, _ = await asyncio.wait([contender], timeout=ttl + _PROMPT)
            if done:
                _, taken_at, holder_valid_until = contender.result()
                assert taken_at >= holder_valid_until
        finally:
            contender.cancel()
            [outcome] = await asyncio.gather(contender, return_exceptions=True)
            if not isinstance(outcome, BaseException):
                await outcome[0].release()
            await lease.release()

    @pytest.mark.asyncio
    async def test_a_frozen_holder_loses_the_role_in_bounded_time(
        self, make_schedulers: SchedulerFactory
    ) -> None:
        ttl = self._expiring_lease_ttl()
        role = unique("role")
        takeover = ttl * 1.5 + _PROMPT
        thaw = threading.Event()
        remote = _OtherProcess()
        held: Lease | None = None
        taken: Lease | None = None
        try:
            # Given a role held by another process
            [remote_scheduler] = await remote.run(make_schedulers(1))
            held = await remote.run(asyncio.wait_for(remote_scheduler.acquire(role), _PROMPT))
            [scheduler] = await make_schedulers(1)

            # When that process freezes (its event loop blocked, so that it cannot renew)
            await remote.freeze(thaw, longest=takeover + _PROMPT)

            # Then this process gets the role within a bounded time
            taken = await asyncio.wait_for(scheduler.acquire(role), takeover)
            # And only once the frozen holder's deadline had passed
            assert time.monotonic() >= held.valid_until

            # And the frozen holder, when it thaws, finds its lease expired and lost
            thaw.set()
            await remote.run(_wake_to_a_lost_lease(held, ttl + _PROMPT))
        finally:
            thaw.set()
            if taken is not None:
                await taken.release()
            if held is not None:
                await remote.run(held.release())
            await remote.close()
