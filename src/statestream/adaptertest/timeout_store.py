"""``TimeoutStoreContract``: the conformance suite for :class:`~statestream.TimeoutStore`.

Mirrors luno/workflow's ``adaptertest.RunTimeoutStoreTest`` and adds the exactly-once
``complete`` that lets several pollers race safely.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest

from .. import errors
from .._core.protocols import TimeoutStore
from .._core.records import TimeoutRecord
from ._util import TOLERANCE, assert_close, now, unique

__all__ = ["TimeoutStoreContract"]

#: How far ``created_at`` may be from the test's clock: a database may use its own.
_CLOCK_SKEW = timedelta(seconds=30)


def _ids(timeouts: Sequence[TimeoutRecord]) -> list[int]:
    return [t.id for t in timeouts]


class TimeoutStoreContract:
    """Conformance tests for a :class:`~statestream.TimeoutStore`.

    Subclass it as ``TestXxxTimeoutStore`` and define a ``timeout_store`` fixture that gives the
    store under test. The store must stamp ``created_at`` with the real time (within 30
    seconds).
    """

    async def _seed(
        self,
        store: TimeoutStore,
        workflow_name: str,
        expire_at: datetime,
        *,
        status: int = 1,
        run_version: int = 1,
    ) -> TimeoutRecord:
        return await store.create(
            workflow_name, unique("fid"), unique("run"), status, run_version, expire_at
        )

    @pytest.mark.asyncio
    async def test_completed_and_cancelled_timeouts_are_not_due(
        self, timeout_store: TimeoutStore
    ) -> None:
        # Given three timeouts that expired an hour ago, one completed and one cancelled
        wf = unique("wf")
        expired = now() - timedelta(hours=1)
        first, second, third = [
            await timeout_store.create(wf, "andreww", run_id, 1, 1, expired)
            for run_id in ("1", "2", "3")
        ]
        assert first.id < second.id < third.id
        assert await timeout_store.complete(second.id) is True
        await timeout_store.cancel(third.id)

        # Then only the first is due, and it is the only pending one
        due = await timeout_store.list_due(wf, 1, now())
        assert _ids(due) == [first.id]
        assert due[0].completed is False
        assert due[0].run_id == "1"
        assert abs(due[0].created_at - now()) <= _CLOCK_SKEW
        assert _ids(await timeout_store.list(wf)) == [first.id]

    @pytest.mark.asyncio
    async def test_create_returns_every_field_and_they_round_trip(
        self, timeout_store: TimeoutStore
    ) -> None:
        wf = unique("wf")
        expire_at = now() + timedelta(minutes=5)

        created = await timeout_store.create(wf, "foreign", "run-id", 4, 7, expire_at)

        assert isinstance(created.id, int)
        assert created.workflow_name == wf
        assert created.foreign_id == "foreign"
        assert created.run_id == "run-id"
        assert created.status == 4
        assert created.run_version == 7
        assert_close(created.expire_at, expire_at, "expire_at")
        assert abs(created.created_at - now()) <= _CLOCK_SKEW
        assert created.created_at.tzinfo is not None
        assert created.completed is False
        [listed] = await timeout_store.list(wf)
        assert listed.id == created.id
        assert (listed.workflow_name, listed.foreign_id, listed.run_id) == (wf, "foreign", "run-id")
        assert (listed.status, listed.run_version, listed.completed) == (4, 7, False)
        assert_close(listed.expire_at, expire_at, "expire_at")
        assert_close(listed.created_at, created.created_at, "created_at")

    @pytest.mark.asyncio
    async def test_list_returns_pending_timeouts_by_id(self, timeout_store: TimeoutStore) -> None:
        wf = unique("wf")
        at = now()
        created = [
            await self._seed(timeout_store, wf, at + timedelta(minutes=m)) for m in (3, 1, 2, 0)
        ]
        await self._seed(timeout_store, unique("wf"), at)
        await timeout_store.complete(created[1].id)

        assert _ids(await timeout_store.list(wf)) == [created[0].id, created[2].id, created[3].id]
        assert await timeout_store.list(unique("wf")) == []

    @pytest.mark.asyncio
    async def test_complete_returns_true_only_once(self, timeout_store: TimeoutStore) -> None:
        wf = unique("wf")
        completed = await self._seed(timeout_store, wf, now())
        cancelled = await self._seed(timeout_store, wf, now())
        await timeout_store.cancel(cancelled.id)

        assert await timeout_store.complete(completed.id) is True
        assert await timeout_store.complete(completed.id) is False
        assert await timeout_store.complete(cancelled.id) is False
        assert await timeout_store.list(wf) == []

    @pytest.mark.asyncio
    async def test_concurrent_completes_admit_exactly_one(
        self, timeout_store: TimeoutStore
    ) -> None:
        timeout = await self._seed(timeout_store, unique("wf"), now())

        results = await asyncio.gather(*(timeout_store.complete(timeout.id) for _ in range(10)))

        assert sorted(results) == [False] * 9 + [True]

    @pytest.mark.asyncio
    async def test_cancel_is_idempotent(self, timeout_store: TimeoutStore) -> None:
        wf = unique("wf")
        timeout = await self._seed(timeout_store, wf, now())
        completed = await self._seed(timeout_store, wf, now())
        await timeout_store.complete(completed.id)

        await timeout_store.cancel(timeout.id)
        await timeout_store.cancel(timeout.id)
        await timeout_store.cancel(completed.id)

        assert await timeout_store.list(wf) == []
        assert await timeout_store.list_due(wf, 1, now()) == []

    @pytest.mark.asyncio
    async def test_list_due_includes_expire_at_equal_to_now_and_excludes_later(
        self, timeout_store: TimeoutStore
    ) -> None:
        wf = unique("wf")
        at = now()
        on_time = await self._seed(timeout_store, wf, at)
        earlier = await self._seed(timeout_store, wf, at - TOLERANCE)
        await self._seed(timeout_store, wf, at + TOLERANCE)

        assert _ids(await timeout_store.list_due(wf, 1, at)) == [earlier.id, on_time.id]
        assert _ids(await timeout_store.list_due(wf, 1, at - 2 * TOLERANCE)) == []

    @pytest.mark.asyncio
    async def test_list_due_filters_by_workflow_and_status(
        self, timeout_store: TimeoutStore
    ) -> None:
        wf = unique("wf")
        at = now() - timedelta(minutes=1)
        mine = await self._seed(timeout_store, wf, at, status=2)
        await self._seed(timeout_store, wf, at, status=3)
        await self._seed(timeout_store, unique("wf"), at, status=2)

        assert _ids(await timeout_store.list_due(wf, 2, now())) == [mine.id]
        assert await timeout_store.list_due(wf, 9, now()) == []

    @pytest.mark.asyncio
    async def test_list_due_orders_by_expiry_then_id_and_respects_limit(
        self, timeout_store: TimeoutStore
    ) -> None:
        # Given timeouts created in an order that differs from their expiry, two expiring together
        wf = unique("wf")
        base = now() - timedelta(hours=1)
        late = await self._seed(timeout_store, wf, base + timedelta(minutes=3))
        tie_first = await self._seed(timeout_store, wf, base + timedelta(minutes=2))
        early = await self._seed(timeout_store, wf, base + timedelta(minutes=1))
        tie_second = await self._seed(timeout_store, wf, base + timedelta(minutes=2))

        # Then they are due earliest first, ties by ID
        expected = [early.id, tie_first.id, tie_second.id, late.id]
        assert _ids(await timeout_store.list_due(wf, 1, now())) == expected
        assert _ids(await timeout_store.list_due(wf, 1, now(), limit=2)) == expected[:2]

    @pytest.mark.asyncio
    async def test_naive_datetimes_are_rejected(self, timeout_store: TimeoutStore) -> None:
        wf = unique("wf")
        naive = now().replace(tzinfo=None)

        with pytest.raises(errors.InvalidInput):
            await timeout_store.create(wf, "fid", "run", 1, 1, naive)
        with pytest.raises(errors.InvalidInput):
            await timeout_store.list_due(wf, 1, naive)
        assert await timeout_store.list(wf) == []
