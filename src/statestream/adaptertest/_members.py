"""The conformance tests of :class:`~statestream.RoleMembers`, part of ``RoleSchedulerContract``.

They run for a scheduler that implements the capability with a ``member_ttl`` (skipped
otherwise); the factory's schedulers should have a short one (0.5 to 2 seconds), as one test
waits for a member to expire.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from .._core.protocols import RoleMembers, RoleScheduler
from ._util import unique

__all__ = ["MembersContract"]

SchedulerFactory = Callable[[int], Awaitable[list[RoleScheduler]]]

#: How long past its ttl a silent member may still be listed.
_PROMPT = 1.0


async def _membership(make_schedulers: SchedulerFactory, n: int) -> list[RoleMembers]:
    schedulers = await make_schedulers(n)
    found: list[RoleMembers] = []
    for scheduler in schedulers:
        if not isinstance(scheduler, RoleMembers) or scheduler.member_ttl is None:
            pytest.skip("this scheduler does not divide roles (it does not implement RoleMembers)")
        found.append(scheduler)
    return found


class MembersContract:
    """The ``test_members_*`` tests of :class:`~.role_scheduler.RoleSchedulerContract`."""

    @pytest.mark.asyncio
    async def test_members_lists_every_live_member_with_its_count(
        self, make_schedulers: SchedulerFactory
    ) -> None:
        # Given three processes in one group
        a, b, c = await _membership(make_schedulers, 3)
        group = unique("group")
        names = [unique("member") for _ in range(3)]
        try:
            # When each says it is alive, with how many roles it holds
            first = await a.members(group, names[0], 2)
            assert dict(first) == {names[0]: 2}
            await b.members(group, names[1], 1)
            await c.members(group, names[2], 0)

            # Then each answer lists them all, with the counts they reported last
            expected = {names[0]: 2, names[1]: 1, names[2]: 0}
            assert dict(await a.members(group, names[0], 2)) == expected
            assert dict(await c.members(group, names[2], 0)) == expected

            # And a new count replaces the old one
            await b.members(group, names[1], 4)
            assert dict(await a.members(group, names[0], 2))[names[1]] == 4
        finally:
            for scheduler, name in zip((a, b, c), names, strict=True):
                await scheduler.leave(group, name)

    @pytest.mark.asyncio
    async def test_members_of_other_groups_are_not_listed(
        self, make_schedulers: SchedulerFactory
    ) -> None:
        a, b = await _membership(make_schedulers, 2)
        one, other = unique("group"), unique("group")
        first, second = unique("member"), unique("member")
        try:
            await a.members(one, first, 1)
            assert dict(await b.members(other, second, 1)) == {second: 1}
            assert dict(await a.members(one, first, 1)) == {first: 1}
        finally:
            await a.leave(one, first)
            await b.leave(other, second)

    @pytest.mark.asyncio
    async def test_members_leave_forgets_a_member_at_once(
        self, make_schedulers: SchedulerFactory
    ) -> None:
        a, b = await _membership(make_schedulers, 2)
        group = unique("group")
        first, second = unique("member"), unique("member")
        try:
            await a.members(group, first, 1)
            await b.members(group, second, 1)

            # When the second leaves
            await b.leave(group, second)

            # Then the first no longer sees it, and leaving again is harmless
            assert dict(await a.members(group, first, 1)) == {first: 1}
            await b.leave(group, second)
            await b.leave(unique("group"), unique("member"))
        finally:
            await a.leave(group, first)

    @pytest.mark.asyncio
    async def test_members_a_silent_member_drops_out_after_its_ttl(
        self, make_schedulers: SchedulerFactory
    ) -> None:
        # Given two members, one of which stops beating (a killed process)
        silent, alive = await _membership(make_schedulers, 2)
        ttl = silent.member_ttl
        assert ttl is not None
        group = unique("group")
        gone, staying = unique("member"), unique("member")
        try:
            await silent.members(group, gone, 3)
            beat_at = time.monotonic()

            # Then it is listed right after its beat
            assert set(await alive.members(group, staying, 0)) == {gone, staying}

            # And no longer once its ttl has passed, and not much later than that
            while gone in await alive.members(group, staying, 0):
                assert time.monotonic() - beat_at < ttl + _PROMPT, "the silent member stays"
                await asyncio.sleep(min(0.05, ttl / 10))
            assert time.monotonic() - beat_at >= ttl * 0.9, "it dropped out before its ttl"

            # And a member that beats again is listed again
            await silent.members(group, gone, 1)
            assert dict(await alive.members(group, staying, 0)) == {gone: 1, staying: 0}
        finally:
            await silent.leave(group, gone)
            await alive.leave(group, staying)
