"""SQLite timeout store: one timer per visit, claims across processes, pruning, the due index.

Two ``SqliteDatabase`` objects on one file stand for two processes.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from statestream.adapters.sqlite import SqliteDatabase, SqliteTimeoutStore
from statestream.adapters.sqlite._timeouts import _LIST_DUE
from statestream.errors import InvalidInput, TimeoutNotFound


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
async def path(tmp_path: Path) -> Path:
    return tmp_path / "timeouts.db"


@pytest.fixture
async def dbs(path: Path) -> AsyncIterator[list[SqliteDatabase]]:
    opened = [SqliteDatabase(path, synchronous="NORMAL") for _ in range(2)]
    yield opened
    for db in opened:
        await db.close()


@pytest.fixture
async def store(dbs: list[SqliteDatabase]) -> SqliteTimeoutStore:
    return SqliteTimeoutStore(dbs[0])


async def test_create_for_a_visit_with_a_timer_returns_it_whatever_its_state(
    store: SqliteTimeoutStore,
) -> None:
    at = now() + timedelta(minutes=1)
    first = await store.create("wf", "fid", "run", 3, 2, at)

    again = await store.create("wf", "other-fid", "run", 3, 2, at + timedelta(hours=1))
    assert again == first
    assert await store.complete(first.id) is True
    done = await store.create("wf", "fid", "run", 3, 2, at)
    assert (done.id, done.completed) == (first.id, True)

    other_visit = await store.create("wf", "fid", "run", 3, 3, at)
    assert other_visit.id != first.id
    assert [t.id for t in await store.list("wf")] == [other_visit.id]


async def test_concurrent_creates_of_one_visit_store_one_timer(
    dbs: list[SqliteDatabase],
) -> None:
    stores = [SqliteTimeoutStore(db) for db in dbs]
    at = now()
    created = await asyncio.gather(
        *(stores[i % 2].create("wf", "fid", "run", 1, 1, at) for i in range(20))
    )
    assert len({t.id for t in created}) == 1
    assert len(await stores[0].list("wf")) == 1


async def test_one_claim_wins_across_processes_and_hides_the_timer(
    dbs: list[SqliteDatabase],
) -> None:
    stores = [SqliteTimeoutStore(db) for db in dbs]
    t = await stores[0].create("wf", "fid", "run", 1, 1, now() - timedelta(seconds=1))
    at = now()
    until = at + timedelta(minutes=5)

    results = await asyncio.gather(*(stores[i % 2].claim(t.id, at, until) for i in range(10)))

    assert sorted(results) == [False] * 9 + [True]
    assert await stores[1].list_due("wf", 1, at) == []
    [listed] = await stores[1].list("wf")  # still pending
    assert listed.claimed_until is not None
    assert abs(listed.claimed_until - until) < timedelta(milliseconds=1)


async def test_a_lapsed_claim_makes_the_timer_due_and_claimable_again(
    store: SqliteTimeoutStore,
) -> None:
    t = await store.create("wf", "fid", "run", 1, 1, now() - timedelta(seconds=1))
    at = now()
    assert await store.claim(t.id, at, at + timedelta(seconds=30)) is True

    later = at + timedelta(seconds=30)  # claimed_until <= now: the claim has lapsed
    assert [d.id for d in await store.list_due("wf", 1, later)] == [t.id]
    assert await store.claim(t.id, later, later + timedelta(seconds=30)) is True
    assert await store.claim(t.id, later, later + timedelta(seconds=30)) is False


async def test_defer_hides_a_timer_until_then_and_completed_ones_cannot_be_claimed(
    store: SqliteTimeoutStore,
) -> None:
    t = await store.create("wf", "fid", "run", 1, 1, now() - timedelta(seconds=1))
    at = now()
    await store.defer(t.id, at + timedelta(seconds=10))
    assert await store.list_due("wf", 1, at) == []
    assert [d.id for d in await store.list_due("wf", 1, at + timedelta(seconds=10))] == [t.id]
    assert await store.claim(t.id, at, at + timedelta(seconds=1)) is False  # deferred

    assert await store.complete(t.id) is True
    assert await store.claim(t.id, at + timedelta(hours=1), at + timedelta(hours=2)) is False
    await store.defer(t.id, at)  # a completed timer: nothing to do
    assert await store.list_due("wf", 1, at + timedelta(hours=1)) == []


async def test_unknown_ids_and_naive_times(store: SqliteTimeoutStore) -> None:
    at = now()
    with pytest.raises(TimeoutNotFound):
        await store.claim(12345, at, at)
    with pytest.raises(TimeoutNotFound):
        await store.defer(12345, at)
    t = await store.create("wf", "fid", "run", 1, 1, at)
    naive = at.replace(tzinfo=None)
    with pytest.raises(InvalidInput):
        await store.claim(t.id, naive, at)
    with pytest.raises(InvalidInput):
        await store.claim(t.id, at, naive)
    with pytest.raises(InvalidInput):
        await store.defer(t.id, naive)
    with pytest.raises(InvalidInput):
        await store.prune("wf", naive)


async def test_cancel_for_cancels_the_runs_pending_timers_at_that_status_only(
    store: SqliteTimeoutStore,
) -> None:
    at = now()
    mine = await store.create("wf", "fid", "run", 1, 1, at)
    mine_again = await store.create("wf", "fid", "run", 1, 5, at)  # a later visit
    other_status = await store.create("wf", "fid", "run", 2, 1, at)
    other_run = await store.create("wf", "fid", "run-2", 1, 1, at)
    other_wf = await store.create("wf-2", "fid", "run", 1, 1, at)

    await store.cancel_for("wf", "run", 1, 100)
    await store.cancel_for("wf", "run", 1, 100)  # idempotent

    assert {t.id for t in await store.list("wf")} == {other_status.id, other_run.id}
    assert [t.id for t in await store.list("wf-2")] == [other_wf.id]
    assert await store.complete(mine.id) is False
    assert await store.complete(mine_again.id) is False


async def test_prune_deletes_finished_timers_created_before_and_counts_them(
    store: SqliteTimeoutStore, dbs: list[SqliteDatabase]
) -> None:
    at = now()
    finished = [await store.create("wf", "fid", f"run-{i}", 1, 1, at) for i in range(5_000)]
    pending = await store.create("wf", "fid", "pending", 1, 1, at)
    other = await store.create("wf-2", "fid", "run", 1, 1, at)
    for t in finished[:4_500]:
        await store.complete(t.id)
    for t in finished[4_500:]:
        await store.cancel(t.id)
    await store.complete(other.id)
    commits = dbs[0].commits

    assert await store.prune("wf", at - timedelta(seconds=1)) == 0  # all created after
    assert await store.prune("wf", now() + timedelta(seconds=1)) == 5_000
    assert dbs[0].commits - commits >= 3  # a few thousand per transaction

    assert [t.id for t in await store.list("wf")] == [pending.id]
    assert await store.prune("wf", now() + timedelta(seconds=1)) == 0
    again = await store.create("wf", "fid", "run-1", 1, 1, at)  # a new timer for that visit
    assert again.id not in {t.id for t in finished}
    assert await store.prune("wf-2", now() + timedelta(seconds=1)) == 1


async def test_list_due_reads_one_range_of_the_due_index(
    store: SqliteTimeoutStore, path: Path
) -> None:
    await store.create("wf", "fid", "run", 1, 1, now())
    conn = sqlite3.connect(path)
    try:
        plan = conn.execute(f"EXPLAIN QUERY PLAN {_LIST_DUE}", ("wf", 1, 0, 0, 10)).fetchall()
    finally:
        conn.close()
    details = " ".join(row[-1] for row in plan)
    assert "USING INDEX statestream_timeouts_due" in details, details
    assert "TEMP B-TREE" not in details, details
