"""Safe evolution: a new release adds a step, a hook, a timeout or changes a parallel count
while runs are in flight, and restarts on the same stores.

A consumer name never seen before starts at the newest event and picks up the runs waiting at
its status from the record store: the work is proportional to the runs in flight, never to the
history. Each test restarts on the same adapters: the same memory objects, or the same SQLite
file reopened (what a new process of the new release sees).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from helpers import Order, Status, eventually, settle
from statestream import Builder, Run, RunState, Workflow, after
from statestream.adapters.memory import (
    MemoryRecordStore,
    MemoryRoleScheduler,
    MemoryStreamer,
    MemoryTimeoutStore,
)
from statestream.adapters.sqlite import (
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteStreamer,
    SqliteTimeoutStore,
)
from statestream.testing import FakeClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class CountingStore:
    """A record store that counts lookups per run (what each handled event costs)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lookups: Counter[str] = Counter()

    async def lookup(self, run_id: str) -> Any:
        self.lookups[run_id] += 1
        return await self.inner.lookup(run_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Adapters:
    streamer: Any
    store: CountingStore
    scheduler: Any
    timeouts: Any


class Backend:
    """Opens the same stores again after a stop, as the next release's process would."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self._memory: tuple[Any, ...] | None = None
        self._db: SqliteDatabase | None = None
        self._streamer: Any = None

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Adapters]:
        if self.kind == "memory":
            if self._memory is None:
                self._memory = (
                    MemoryStreamer(),
                    MemoryRecordStore(keep_snapshots=True),
                    MemoryRoleScheduler(),
                    MemoryTimeoutStore(),
                )
            streamer, store, scheduler, timeouts = self._memory
            yield Adapters(streamer, CountingStore(store), scheduler, timeouts)
            return
        db = SqliteDatabase(self.path, synchronous="NORMAL")
        streamer = SqliteStreamer(db)
        try:
            yield Adapters(
                streamer,
                CountingStore(SqliteRecordStore(db)),
                SqliteRoleScheduler(db, ttl=2.0, poll_interval=0.02),
                SqliteTimeoutStore(db),
            )
        finally:
            await streamer.close()
            await db.close()


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return Backend(request.param, tmp_path / "evolution.db")


def fast(b: Builder[Order, Status]) -> Builder[Order, Status]:
    b.defaults(error_backoff=0.01, max_error_backoff=0.02, polling_frequency=0.01)
    b.outbox(polling_frequency=0.01, error_backoff=0.01)
    return b


async def pay(run: Run[Order, Status]) -> Status:
    return Status.PAID


async def ship_by_callback(run: Run[Order, Status], payload: bytes) -> Status:
    return Status.SHIPPED


@dataclass
class Shipper:
    """The PAID step: records who it shipped, and can be held (runs stay in flight at PAID)."""

    calls: Counter[str] = field(default_factory=Counter)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    async def __call__(self, run: Run[Order, Status]) -> Status:
        self.calls[run.run_id] += 1
        await self.gate.wait()
        return Status.SHIPPED


def build(b: Builder[Order, Status], a: Adapters, **kw: Any) -> Workflow[Order, Status]:
    kw.setdefault("pause_retry", None)
    return b.build(a.streamer, a.store, a.scheduler, timeout_store=a.timeouts, **kw)


async def complete(wf: Workflow[Order, Status], prefix: str, n: int) -> list[str]:
    ids = [await wf.trigger(f"{prefix}-{i}") for i in range(n)]
    for i, run_id in enumerate(ids):
        await wf.wait_for(f"{prefix}-{i}", run_id, Status.SHIPPED, timeout=5)
    return ids


async def at_paid(wf: Workflow[Order, Status], prefix: str, n: int) -> list[str]:
    ids = [await wf.trigger(f"{prefix}-{i}") for i in range(n)]
    for i, run_id in enumerate(ids):
        await wf.wait_for(f"{prefix}-{i}", run_id, Status.PAID, timeout=5)
    return ids


# ------------------------------------------------------------------ a new step


async def test_a_step_added_at_a_status_moves_the_runs_waiting_there(backend: Backend) -> None:
    # Given release 1, where runs wait at PAID for a callback: 20 went through, 5 wait
    def release_1() -> Builder[Order, Status]:
        b = fast(Builder("orders", Order, Status))
        b.add_step(Status.CREATED, pay, Status.PAID)
        b.add_callback(Status.PAID, ship_by_callback, Status.SHIPPED)
        return b

    async with backend.open() as a:
        wf = build(release_1(), a)
        async with wf:
            done = [await wf.trigger(f"done-{i}") for i in range(20)]
            for i, run_id in enumerate(done):
                await wf.wait_for(f"done-{i}", run_id, Status.PAID, timeout=5)
                assert (await wf.callback(f"done-{i}", Status.PAID, b"")).applied
            waiting = await at_paid(wf, "waiting", 5)

    # When release 2 adds a step at PAID and starts on the same stores
    ship = Shipper()
    b = release_1()
    b.add_step(Status.PAID, ship, Status.SHIPPED)
    async with backend.open() as a:
        wf = build(b, a)
        async with wf:
            # Then the waiting runs move on
            for i, run_id in enumerate(waiting):
                await wf.wait_for(f"waiting-{i}", run_id, Status.SHIPPED, timeout=5)
            await settle()

        # And the new step never looked at the runs that went through PAID before it existed
        assert set(ship.calls) == set(waiting)
        assert not any(a.store.lookups[r] for r in done)


class Skipper:
    """A PAID step that skips (the run stays at PAID), or holds its runs until released."""

    def __init__(self, *, hold: bool = False) -> None:
        self.calls: Counter[str] = Counter()
        self.gate = asyncio.Event()
        if not hold:
            self.gate.set()

    async def __call__(self, run: Run[Order, Status]) -> Any:
        self.calls[run.run_id] += 1
        await self.gate.wait()
        return run.skip()


def waiting_release() -> Builder[Order, Status]:
    b = fast(Builder("orders", Order, Status))
    b.add_step(Status.CREATED, pay, Status.PAID)
    b.add_callback(Status.PAID, ship_by_callback, Status.SHIPPED)
    return b


async def test_a_catch_up_cut_short_is_done_again_by_the_next_start(backend: Backend) -> None:
    # Given 250 runs waiting at PAID (more than one page of the store)
    async with backend.open() as a:
        wf = build(waiting_release(), a)
        async with wf:
            waiting = await at_paid(wf, "w", 250)

    # When a release adding a step at PAID stops while its catch-up is half-way (the step holds
    # the first runs it got, and the rest were never read from the store)
    first = Skipper(hold=True)
    b = waiting_release()
    b.add_step(Status.PAID, first, Status.SHIPPED, concurrency=8)
    async with backend.open() as a:
        wf = build(b, a)
        async with wf:
            await eventually(lambda: len(first.calls) == 8, what="the first runs held")
            await wf.stop(grace=0.01)
    assert len(first.calls) < len(waiting)

    # Then the next start catches up again and reaches every run
    again = Skipper()
    b = waiting_release()
    b.add_step(Status.PAID, again, Status.SHIPPED, concurrency=8)
    async with backend.open() as a:
        wf = build(b, a)
        async with wf:
            await eventually(lambda: set(again.calls) == set(waiting), what="every run caught up")
            await settle()

    # And once a catch-up has finished, a restart does not do it again
    third = Skipper()
    b = waiting_release()
    b.add_step(Status.PAID, third, Status.SHIPPED, concurrency=8)
    async with backend.open() as a:
        wf = build(b, a)
        async with wf:
            await settle()
    assert not third.calls
    assert max(again.calls.values()) == 1  # no visit was handled twice (store and stream)


# ------------------------------------------------------------------ a new hook


async def test_a_new_on_complete_hook_fires_for_new_completions_only(backend: Backend) -> None:
    # Given 50 runs completed by release 1, which had no hook
    async with backend.open() as a:
        wf = build(release(Shipper()), a)
        async with wf:
            done = await complete(wf, "old", 50)

    # When release 2 adds an on_complete hook
    fired: list[str] = []

    async def on_complete(run: Run[Order, Status]) -> None:
        fired.append(run.run_id)

    b = release(Shipper())
    b.on_complete(on_complete)
    async with backend.open() as a:
        wf = build(b, a)
        async with wf:
            await eventually(
                lambda: wf.states()["completed-run-state-change-hook-consumer"].name == "RUNNING",
                what="hook consumer running",
            )
            await settle()

            # Then it fires for none of the old runs
            assert fired == []

            # And for every run completed from now on
            new = await complete(wf, "new", 3)
            await eventually(lambda: sorted(fired) == sorted(new), what="hook fired for new runs")
        assert not any(a.store.lookups[r] for r in done)


def release(ship: Shipper, **ship_options: Any) -> Builder[Order, Status]:
    b = fast(Builder("orders", Order, Status))
    b.add_step(Status.CREATED, pay, Status.PAID)
    b.add_step(Status.PAID, ship, Status.SHIPPED, **ship_options)
    return b


# ------------------------------------------------------------------ a changed parallel count


async def test_changing_the_parallel_count_hands_over_the_runs_in_flight(backend: Backend) -> None:
    # Given release 1 (ship on one shard) with 50 completed runs and 10 held in the ship step
    ship = Shipper()
    history: list[str] = []
    async with backend.open() as a:
        wf = build(release(ship), a)
        async with wf:
            history += await complete(wf, "old", 50)
            ship.gate.clear()
            in_flight = await at_paid(wf, "a", 10)
            await eventually(lambda: len(set(ship.calls) & set(in_flight)) == 10, what="held")
            await wf.stop(grace=0.01)  # the held steps are cancelled: unacknowledged

    # When release 2 runs ship on 3 shards
    await restart_with_parallel_count(backend, 3, in_flight, "a", history)
    history += in_flight

    # And release 3 on 2 shards, with 10 more runs in flight
    ship = Shipper()
    async with backend.open() as a:
        wf = build(release(ship, parallel_count=3), a)
        async with wf:
            ship.gate.clear()
            in_flight = await at_paid(wf, "b", 10)
            await eventually(lambda: len(set(ship.calls) & set(in_flight)) == 10, what="held")
            await wf.stop(grace=0.01)
    await restart_with_parallel_count(backend, 2, in_flight, "b", history)


async def restart_with_parallel_count(
    backend: Backend, n: int, in_flight: list[str], prefix: str, history: list[str]
) -> None:
    ship = Shipper()
    async with backend.open() as a:
        wf = build(release(ship, parallel_count=n), a)
        async with wf:
            # Then every run in flight completes (watched on the store underneath, so that
            # only the engine's lookups are counted)
            await eventually(lambda: _completed(a, in_flight), what="runs in flight completed")
            await settle()

        # And only they were worked on: no run of the history was even looked up, and each run
        # in flight cost a lookup or two (its catch-up, and a duplicate at most)
        assert set(ship.calls) == set(in_flight)
        assert not any(a.store.lookups[r] for r in history)
        assert sum(a.store.lookups[r] for r in in_flight) <= 2 * len(in_flight)
        if isinstance(a.store.inner, MemoryRecordStore):
            for run_id in in_flight:
                states = [s.run_state for s in a.store.inner.snapshots(run_id)]
                assert states.count(RunState.COMPLETED) == 1


async def _completed(a: Adapters, ids: list[str]) -> bool:
    for run_id in ids:
        record = await a.store.inner.lookup(run_id)
        if record.run_state is not RunState.COMPLETED:
            return False
    return True


# ------------------------------------------------------------------ a new timeout


async def test_a_timeout_added_at_a_status_starts_timers_for_the_runs_waiting_there(
    backend: Backend,
) -> None:
    # Given release 1, where 5 runs wait at PAID for a callback
    clock = FakeClock(T0)

    def release_1() -> Builder[Order, Status]:
        b = fast(Builder("orders", Order, Status))
        b.add_step(Status.CREATED, pay, Status.PAID)
        b.add_callback(Status.PAID, ship_by_callback, Status.SHIPPED)
        return b

    async with backend.open() as a:
        wf = build(release_1(), a, clock=clock)
        async with wf:
            waiting = await at_paid(wf, "waiting", 5)

    # When release 2 adds a one-minute timeout at PAID
    async def give_up(run: Run[Order, Status], now: datetime) -> Status:
        return Status.REFUNDED

    b = release_1()
    b.add_timeout(Status.PAID, after(60), give_up, Status.REFUNDED, polling_frequency=0.01)
    async with backend.open() as a:
        wf = build(b, a, clock=clock)
        async with wf:
            # Then each waiting run gets its timer, and it fires
            await eventually(lambda: _timers(a, 5), what="timers of the waiting runs")
            clock.advance(61)
            for i, run_id in enumerate(waiting):
                await wf.wait_for(f"waiting-{i}", run_id, Status.REFUNDED, timeout=5)


async def _timers(a: Adapters, n: int) -> bool:
    return len(await a.timeouts.list("orders")) == n


# ------------------------------------------------------------------ a new data deleter


async def test_a_new_deleter_picks_up_deletions_requested_before_it_started() -> None:
    # Given completed runs whose deletion was requested while no worker ran, and whose events
    # reached a new streamer before any consumer of it existed
    store = MemoryRecordStore()
    old = fast(Builder("orders", Order, Status))
    old.add_step(Status.CREATED, pay, Status.PAID)
    old.add_step(Status.PAID, Shipper(), Status.SHIPPED)
    first = old.build(MemoryStreamer(), store, MemoryRoleScheduler(), pause_retry=None)
    async with first:
        ids = await complete(first, "gdpr", 3)
    for run_id in ids:
        await first.delete_data(run_id)
    streamer = MemoryStreamer()
    outbox = await store.list_outbox("orders", 100)
    for event in outbox:
        await streamer.publish(event.topic, [event.message])
    await store.delete_outbox([e.id for e in outbox])

    # When the worker starts on that streamer
    wf = old.build(streamer, store, MemoryRoleScheduler(), pause_retry=None)
    async with wf:
        # Then the deleter finds the requests in the record store
        await eventually(lambda: _all_deleted(wf, ids), what="data deleted")


async def _all_deleted(wf: Workflow[Order, Status], ids: list[str]) -> bool:
    states = [(await wf.get(r)).run_state for r in ids]
    return states == [RunState.DATA_DELETED] * len(ids)


# ------------------------------------------------------------------ sharded reads


class RecordingStreamer(MemoryStreamer):
    """Records how each receiver was opened."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: dict[tuple[str, str], dict[str, Any]] = {}

    async def receiver(self, topic: str, name: str, **options: Any) -> Any:
        self.opened[topic, name] = options
        return await super().receiver(topic, name, **options)


async def test_each_shard_opens_its_own_shard_of_the_topic_from_the_newest_event() -> None:
    # Given a step on three shards
    streamer = RecordingStreamer()
    ship = Shipper()
    wf = release(ship, parallel_count=3).build(
        streamer, MemoryRecordStore(), MemoryRoleScheduler(), pause_retry=None
    )
    async with wf:
        ids = [await wf.trigger(f"o-{i}") for i in range(30)]
        for i, run_id in enumerate(ids):
            await wf.wait_for(f"o-{i}", run_id, Status.SHIPPED, timeout=5)

    # Then each shard's receiver asked the streamer for its shard only, from the newest event
    shards = {
        name: (o["shard"], o["shards"], o["from_latest"])
        for (topic, name), o in streamer.opened.items()
        if topic == "orders-2"
    }
    assert shards == {f"orders-2-consumer-{i + 1}-of-3": (i, 3, True) for i in range(3)}
    # And every engine receiver starts at the newest event (the catch-up markers' probes
    # and wait_for's ephemeral receivers excepted: the probes only read whether a position
    # exists, the ephemeral receivers keep none)
    engine = [
        o
        for (topic, _), o in streamer.opened.items()
        if topic != "orders-catch-up" and not o.get("ephemeral")
    ]
    assert engine
    assert all(o["from_latest"] for o in engine)
    assert set(ship.calls) == set(ids)
