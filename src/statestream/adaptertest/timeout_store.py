"""``TimeoutStoreContract``: the conformance suite for :class:`~statestream.TimeoutStore`.

Mirrors luno/workflow's ``adaptertest.RunTimeoutStoreTest`` and adds what lets several pollers
race safely: one timer per visit of a status, an exactly-once ``claim`` with a lapsing deadline,
``defer`` for retries, an exactly-once ``complete``, ``cancel_for`` and ``prune``.
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
    async def test_list_for_run_returns_that_runs_pending_timeouts_by_id(
        self, timeout_store: TimeoutStore
    ) -> None:
        # Given one run with timers at two statuses and two visits, one completed, one
        # cancelled, one claimed; another run of the workflow; the same run ID in another one
        wf, other = unique("wf"), unique("wf")
        run, neighbour = unique("run"), unique("run")
        at = now() + timedelta(minutes=5)
        later = await timeout_store.create(wf, "fid", run, 3, 5, at)
        first = await timeout_store.create(wf, "fid", run, 1, 1, at)
        claimed = await timeout_store.create(wf, "fid", run, 2, 2, now() - timedelta(seconds=1))
        done = await timeout_store.create(wf, "fid", run, 1, 3, at)
        gone = await timeout_store.create(wf, "fid", run, 2, 4, at)
        await timeout_store.create(wf, "fid-2", neighbour, 1, 1, at)
        await timeout_store.create(other, "fid", run, 1, 1, at)
        assert await timeout_store.complete(done.id) is True
        await timeout_store.cancel(gone.id)
        assert await timeout_store.claim(claimed.id, now(), now() + timedelta(minutes=1))

        # Then the run's pending timers (claimed ones too) are listed, by ID, with every field
        listed = await timeout_store.list_for_run(wf, run)
        assert _ids(listed) == sorted([later.id, first.id, claimed.id])
        assert _ids(listed) == [t.id for t in await timeout_store.list(wf) if t.run_id == run]
        by_id = {t.id: t for t in listed}
        assert (by_id[later.id].status, by_id[later.id].run_version) == (3, 5)
        assert by_id[later.id].foreign_id == "fid"
        assert_close(by_id[later.id].expire_at, at, "expire_at")
        assert by_id[claimed.id].claimed_until is not None
        assert _ids(await timeout_store.list_for_run(wf, neighbour)) != []
        assert await timeout_store.list_for_run(wf, unique("run")) == []
        assert await timeout_store.list_for_run(unique("wf"), run) == []

        # And a timer cancelled for the run's leaving its status drops out
        await timeout_store.cancel_for(wf, run, 3, 6)
        assert _ids(await timeout_store.list_for_run(wf, run)) == sorted([first.id, claimed.id])

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

    # -- one timer per visit ---------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_create_for_a_visit_that_has_a_timer_returns_it_and_stores_nothing(
        self, timeout_store: TimeoutStore
    ) -> None:
        # Given a timer for one visit (run, status, version) of a run
        wf, run_id = unique("wf"), unique("run")
        expire_at = now() + timedelta(minutes=5)
        first = await timeout_store.create(wf, "fid", run_id, 2, 3, expire_at)

        # When the same visit asks for a timer again, with another expiry
        again = await timeout_store.create(wf, "fid", run_id, 2, 3, expire_at + timedelta(hours=1))

        # Then it gets the first timer, unchanged, and only one is stored
        assert again.id == first.id
        assert_close(again.expire_at, expire_at, "expire_at")
        assert _ids(await timeout_store.list(wf)) == [first.id]

        # And another version or another status of the same run is another visit
        later_visit = await timeout_store.create(wf, "fid", run_id, 2, 4, expire_at)
        other_status = await timeout_store.create(wf, "fid", run_id, 5, 3, expire_at)
        assert len({first.id, later_visit.id, other_status.id}) == 3
        assert _ids(await timeout_store.list(wf)) == [first.id, later_visit.id, other_status.id]

    @pytest.mark.asyncio
    async def test_create_does_not_revive_a_completed_or_cancelled_visit(
        self, timeout_store: TimeoutStore
    ) -> None:
        # Given a visit whose timer completed and another whose timer was cancelled
        wf = unique("wf")
        completed = await self._seed(timeout_store, wf, now())
        cancelled = await self._seed(timeout_store, wf, now())
        assert await timeout_store.complete(completed.id) is True
        await timeout_store.cancel(cancelled.id)

        # When either visit asks for a timer again (a redelivered event)
        again = [
            await timeout_store.create(
                wf, t.foreign_id, t.run_id, t.status, t.run_version, t.expire_at
            )
            for t in (completed, cancelled)
        ]

        # Then each gets its finished timer back and nothing is pending or due
        assert _ids(again) == [completed.id, cancelled.id]
        assert again[0].completed is True
        assert await timeout_store.list(wf) == []
        assert await timeout_store.list_due(wf, 1, now() + timedelta(hours=1)) == []

    @pytest.mark.asyncio
    async def test_concurrent_creates_of_one_visit_store_one_timer(
        self, timeout_store: TimeoutStore
    ) -> None:
        # Given ten writers that create the timer of the same visit at once
        wf, run_id = unique("wf"), unique("run")
        expire_at = now() + timedelta(minutes=1)

        created = await asyncio.gather(
            *(timeout_store.create(wf, "fid", run_id, 1, 1, expire_at) for _ in range(10))
        )

        # Then they all get the same timer, and only it is stored
        assert len(set(_ids(created))) == 1
        assert _ids(await timeout_store.list(wf)) == [created[0].id]

    # -- claims --------------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_claim_hides_a_due_timer_until_the_claim_lapses(
        self, timeout_store: TimeoutStore
    ) -> None:
        # Given a due timer
        wf = unique("wf")
        at = now()
        timeout = await self._seed(timeout_store, wf, at - timedelta(minutes=1))
        assert timeout.claimed_until is None

        # When a poller claims it for a minute
        assert await timeout_store.claim(timeout.id, at, at + timedelta(minutes=1)) is True

        # Then it is still pending, carries the claim, and is not due while the claim holds
        [listed] = await timeout_store.list(wf)
        assert listed.claimed_until is not None
        assert_close(listed.claimed_until, at + timedelta(minutes=1), "claimed_until")
        assert await timeout_store.list_due(wf, 1, at) == []
        assert await timeout_store.list_due(wf, 1, at + timedelta(seconds=59)) == []
        in_force = at + timedelta(seconds=30)
        assert await timeout_store.claim(timeout.id, in_force, in_force + TOLERANCE) is False

        # And once it lapses (the claimant died) the timer is due again and can be claimed again
        lapsed = at + timedelta(minutes=1)
        assert _ids(await timeout_store.list_due(wf, 1, lapsed)) == [timeout.id]
        assert await timeout_store.claim(timeout.id, lapsed, lapsed + timedelta(minutes=1)) is True
        assert await timeout_store.list_due(wf, 1, lapsed) == []

    @pytest.mark.asyncio
    async def test_concurrent_claims_admit_exactly_one(self, timeout_store: TimeoutStore) -> None:
        # Given a due timer and twenty pollers that claim it at once
        timeout = await self._seed(timeout_store, unique("wf"), now() - timedelta(minutes=1))
        at = now()

        results = await asyncio.gather(
            *(timeout_store.claim(timeout.id, at, at + timedelta(minutes=1)) for _ in range(20))
        )

        # Then exactly one wins
        assert sorted(results) == [False] * 19 + [True]

    @pytest.mark.asyncio
    async def test_completed_or_cancelled_timers_cannot_be_claimed(
        self, timeout_store: TimeoutStore
    ) -> None:
        wf = unique("wf")
        at = now()
        completed = await self._seed(timeout_store, wf, at)
        cancelled = await self._seed(timeout_store, wf, at)
        await timeout_store.complete(completed.id)
        await timeout_store.cancel(cancelled.id)

        for timeout in (completed, cancelled):
            assert await timeout_store.claim(timeout.id, at, at + timedelta(minutes=1)) is False

    @pytest.mark.asyncio
    async def test_claimant_completes_the_timer_once(self, timeout_store: TimeoutStore) -> None:
        # Given a claimed timer
        wf = unique("wf")
        at = now()
        timeout = await self._seed(timeout_store, wf, at)
        assert await timeout_store.claim(timeout.id, at, at + timedelta(minutes=1)) is True

        # When the claimant completes it, then it is done for good, even after the claim lapses
        assert await timeout_store.complete(timeout.id) is True
        assert await timeout_store.complete(timeout.id) is False
        assert await timeout_store.list(wf) == []
        assert await timeout_store.list_due(wf, 1, at + timedelta(hours=1)) == []

    @pytest.mark.asyncio
    async def test_defer_makes_a_timer_due_again_later(self, timeout_store: TimeoutStore) -> None:
        # Given a claimed timer whose function failed
        wf = unique("wf")
        at = now()
        timeout = await self._seed(timeout_store, wf, at - timedelta(minutes=1))
        assert await timeout_store.claim(timeout.id, at, at + timedelta(minutes=1)) is True

        # When the claimant defers it by a backoff of ten minutes
        retry_at = at + timedelta(minutes=10)
        await timeout_store.defer(timeout.id, retry_at)

        # Then no poller sees it due before then, and every poller does from then on
        [listed] = await timeout_store.list(wf)
        assert listed.claimed_until is not None
        assert_close(listed.claimed_until, retry_at, "claimed_until")
        assert await timeout_store.list_due(wf, 1, at + timedelta(minutes=5)) == []
        assert await timeout_store.claim(timeout.id, at + timedelta(minutes=5), retry_at) is False
        assert _ids(await timeout_store.list_due(wf, 1, retry_at)) == [timeout.id]
        assert await timeout_store.claim(timeout.id, retry_at, retry_at + TOLERANCE) is True

    @pytest.mark.asyncio
    async def test_defer_of_a_finished_timer_changes_nothing(
        self, timeout_store: TimeoutStore
    ) -> None:
        # Given a timer that was completed (the run moved on while its function ran)
        wf = unique("wf")
        timeout = await self._seed(timeout_store, wf, now())
        await timeout_store.complete(timeout.id)

        # When it is deferred, then it stays finished
        await timeout_store.defer(timeout.id, now() + timedelta(minutes=1))
        assert await timeout_store.list(wf) == []
        assert await timeout_store.list_due(wf, 1, now() + timedelta(hours=1)) == []

    # -- cancel_for / prune --------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_cancel_for_cancels_only_that_runs_timers_at_that_status(
        self, timeout_store: TimeoutStore
    ) -> None:
        # Given a run with timers at status 2 from two visits, and others that must stay
        wf, run_id = unique("wf"), unique("run")
        at = now()
        await timeout_store.create(wf, "fid", run_id, 2, 1, at)
        await timeout_store.create(wf, "fid", run_id, 2, 5, at)
        claimed = await timeout_store.create(wf, "fid", run_id, 2, 7, at)
        assert await timeout_store.claim(claimed.id, at, at + timedelta(minutes=1)) is True
        kept = [
            await timeout_store.create(wf, "fid", run_id, 3, 1, at),
            await timeout_store.create(wf, "fid", unique("run"), 2, 1, at),
        ]
        elsewhere = await timeout_store.create(unique("wf"), "fid", run_id, 2, 1, at)
        # (a later visit's timer, made while the leaving write's cancel was on its way)
        later = await timeout_store.create(wf, "fid", run_id, 2, 9, at)

        # When the run leaves status 2 at version 8
        await timeout_store.cancel_for(wf, run_id, 2, 8)

        # Then its timers at status 2 of earlier visits are cancelled, claimed or not, and
        # nothing else is
        assert sorted(_ids(await timeout_store.list(wf))) == sorted(_ids([*kept, later]))
        assert _ids(await timeout_store.list(elsewhere.workflow_name)) == [elsewhere.id]
        due = _ids(await timeout_store.list_due(wf, 2, at + timedelta(hours=1)))
        assert sorted(due) == sorted([kept[1].id, later.id])
        await timeout_store.cancel_for(wf, run_id, 2, 8)
        await timeout_store.cancel_for(wf, unique("run"), 2, 8)

    @pytest.mark.asyncio
    async def test_prune_deletes_finished_timers_created_before(
        self, timeout_store: TimeoutStore
    ) -> None:
        # Given finished and pending timers of a workflow, and a finished one of another
        wf, other = unique("wf"), unique("wf")
        at = now()
        completed = await self._seed(timeout_store, wf, at)
        cancelled = await self._seed(timeout_store, wf, at)
        pending = await self._seed(timeout_store, wf, at)
        claimed = await self._seed(timeout_store, wf, at)
        theirs = await self._seed(timeout_store, other, at)
        await timeout_store.complete(completed.id)
        await timeout_store.cancel(cancelled.id)
        await timeout_store.complete(theirs.id)
        assert await timeout_store.claim(claimed.id, at, at + timedelta(minutes=1)) is True

        # When pruning timers created before long ago, then none go
        assert await timeout_store.prune(wf, at - timedelta(hours=1)) == 0

        # When pruning timers created before a time after they all were, the finished ones go
        later = now() + _CLOCK_SKEW
        assert await timeout_store.prune(wf, later) == 2
        assert await timeout_store.prune(wf, later) == 0

        # Then the pending ones stay, and a pruned visit may have a timer again
        assert _ids(await timeout_store.list(wf)) == [pending.id, claimed.id]
        fresh = await timeout_store.create(
            wf, completed.foreign_id, completed.run_id, 1, completed.run_version, at
        )
        assert fresh.completed is False
        assert fresh.id in _ids(await timeout_store.list(wf))
        # And other workflows are left alone
        assert await timeout_store.prune(other, later) == 1
