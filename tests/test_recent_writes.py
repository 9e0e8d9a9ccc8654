"""The records a process has just written answer its own consumers' lookups (perf, issue 8),
and a store that publishes in the write's transaction does not wake the outbox relay."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from helpers import Adapters, Status, build, eventually, order_builder
from statestream import Event, Message, OutboxEvent, ProcessState, Record, RunState
from statestream._core.records import status_topic
from statestream._engine.recent import RecentWrites
from statestream._engine.runtime import H_VERSION
from statestream.adapters.memory import MemoryRecordStore
from statestream.adapters.sqlite import (
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteStreamer,
)
from statestream.errors import VersionConflict


def _record(version: int, run_id: str = "run-1") -> Record:
    at = datetime.now(UTC)
    return Record("orders", "fid", run_id, RunState.RUNNING, 1, b"{}", at, at, version)


def _event_at(record: Record) -> Event:
    headers = {H_VERSION: str(record.version)}
    return Event(
        1,
        status_topic("orders", record.status),
        record.run_id,
        record.status,
        headers,
        record.updated_at,
    )


class CountingStore:
    """Counts lookups and outbox lists, delegating everything to the wrapped store."""

    local_lookups = False  # counts lookups as a store with I/O would be read

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    async def lookup(self, run_id: str) -> Any:
        self.calls["lookup"] += 1
        return await self.inner.lookup(run_id)

    async def list_outbox(self, workflow_name: str, limit: int) -> Any:
        self.calls["list_outbox"] += 1
        return await self.inner.list_outbox(workflow_name, limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


# ------------------------------------------------------------------ the cache on its own


def test_a_cached_record_answers_only_for_its_own_version_or_older_events() -> None:
    recent = RecentWrites()
    v2 = _record(2)
    recent.put(v2)
    assert recent.get("run-1", 2) is v2
    assert recent.get("run-1", 1) is v2  # newer than the event: it proves the event superseded
    assert recent.get("run-1", 3) is None  # another process wrote further: read the store
    assert recent.get("run-2", 1) is None


def test_an_entry_older_than_max_age_is_not_used_for_its_own_version() -> None:
    recent = RecentWrites(max_age=0.0)
    v2 = _record(2)
    recent.put(v2)
    assert recent.get("run-1", 2) is None
    assert recent.get("run-1", 1) is v2  # superseded stays provable at any age


def test_an_entry_written_before_the_holding_began_is_not_used_for_its_own_version() -> None:
    # A consumer that took its role at ``since`` may read again events its predecessor handled
    # (after a handover): what this process wrote before then proves nothing about them.
    recent = RecentWrites()
    v2 = _record(2)
    recent.put(v2)
    since = time.monotonic() + 1e-3
    assert recent.get("run-1", 2, since) is None
    assert recent.get("run-1", 1, since) is v2  # superseded stays provable
    assert recent.get("run-1", 2, since - 1.0) is v2


def test_the_cache_is_bounded_dropping_the_first_inserted() -> None:
    recent = RecentWrites(limit=4)
    for i in range(5):
        recent.put(_record(1, f"run-{i}"))
    assert len(recent) == 2  # past the limit, the older half went
    assert recent.get("run-0", 1) is None
    assert recent.get("run-1", 1) is None
    assert recent.get("run-4", 1) is not None


# ------------------------------------------------------------------ in the engine


async def test_consumers_of_this_process_need_no_lookup_for_its_own_writes() -> None:
    counting = CountingStore(MemoryRecordStore())
    wf, _ = build(order_builder(), Adapters(store=counting))  # type: ignore[arg-type]
    async with wf:
        # (Once the consumers hold their roles: a write from before a holding began is read
        # back from the store, as the role's previous holder may have acted on it since.)
        await eventually(
            lambda: all(p.state is ProcessState.RUNNING for p in wf.process_info().values()),
            what="every process running",
        )
        run_ids = [await wf.trigger(f"order-{i}") for i in range(5)]

        async def shipped() -> bool:
            records = [await counting.inner.lookup(run_id) for run_id in run_ids]
            return all(r.status == Status.SHIPPED for r in records)

        await eventually(shipped, what="every run shipped")
    assert counting.calls["lookup"] == 0


async def test_the_cache_falls_back_to_the_store_on_a_version_mismatch() -> None:
    wf, adapters = build(order_builder(), Adapters(store=CountingStore(MemoryRecordStore())))  # type: ignore[arg-type]
    rt = wf._rt
    run_id = await wf.trigger("order-1")  # not started: nothing consumes it
    v1 = await adapters.store.lookup(run_id)
    # Another process moves the run on: this process's cache still holds version 1.
    v2 = dataclasses.replace(v1, version=2, status=int(Status.PAID), updated_at=datetime.now(UTC))
    await adapters.store.update(
        v2, OutboxEvent("x", "orders", "t", Message(run_id, 2, {}, v2.updated_at))
    )

    # The event of version 2 is not answered by the cached version 1: the store is read.
    fresh = await rt.fresh_record(_event_at(v2))
    assert fresh is not None
    assert fresh.version == 2
    # The event of version 1 may be accepted from the cache (stale), but the compare-and-set
    # refuses any write made from it: stored state cannot go wrong.
    stale = await rt.fresh_record(_event_at(v1))
    assert stale is not None
    assert stale.version == 1
    with pytest.raises(VersionConflict):
        await rt.update(stale, status=int(Status.PAID))
    assert (await adapters.store.lookup(run_id)).version == 2


async def test_an_event_this_process_has_superseded_is_skipped_without_a_lookup() -> None:
    counting = CountingStore(MemoryRecordStore())
    wf, _ = build(order_builder(), Adapters(store=counting))  # type: ignore[arg-type]
    rt = wf._rt
    run_id = await wf.trigger("order-1")
    v1 = await counting.inner.lookup(run_id)
    await rt.update(v1, status=int(Status.PAID), run_state=RunState.RUNNING)
    assert await rt.fresh_record(_event_at(v1)) is None
    assert counting.calls["lookup"] == 0


# ------------------------------------------------------------------ the outbox relay


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase(tmp_path / "relay.db", synchronous="NORMAL")
    yield database
    await database.close()


@pytest.mark.parametrize("direct", [True, False])
async def test_only_a_store_that_uses_the_outbox_wakes_the_relay(
    db: SqliteDatabase, direct: bool
) -> None:
    streamer = SqliteStreamer(db)
    store = SqliteRecordStore(db, publish_to=streamer if direct else None)
    wf = order_builder().build(streamer, store, SqliteRoleScheduler(db))
    assert wf._rt.publishes_in_transaction is direct
    await wf.trigger("order-1")  # not started: only the write path runs
    assert wf._rt.outbox_wake.is_set() is not direct
    await streamer.close()


async def test_a_store_publishing_in_transaction_still_gets_leftover_outbox_rows_relayed(
    db: SqliteDatabase,
) -> None:
    streamer = SqliteStreamer(db)
    direct = CountingStore(SqliteRecordStore(db, publish_to=streamer))
    wf = order_builder().build(streamer, direct, SqliteRoleScheduler(db, poll_interval=0.02))
    # A run written before, by a process whose store used the outbox: its event waits there.
    wf_outbox = order_builder().build(streamer, SqliteRecordStore(db), SqliteRoleScheduler(db))
    left_id = await wf_outbox.trigger("left-behind")
    assert await direct.list_outbox("orders", 10)
    async with wf:
        await wf.wait_for("left-behind", left_id, Status.SHIPPED, timeout=5)
        run_id = await wf.trigger("order-1")
        await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)
    assert not await direct.inner.list_outbox("orders", 10)
    await streamer.close()


def test_no_cache_is_kept_for_a_store_whose_lookups_are_local() -> None:
    wf, _ = build(order_builder())  # MemoryRecordStore: local_lookups
    assert wf._rt.recent is None
