"""wait_for at scale: waiters woken by events (their own process's writes, other processes'
events through one receiver per topic), with polling of the store only as a slow fallback.

"Process A" and "process B" are two Workflow instances of one definition on shared adapters: the
same memory adapters, or two SqliteDatabase handles on one file (as two processes would have).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers import Order, Status, fast, order_builder, ship
from statestream import (
    Builder,
    Event,
    EventReceiver,
    EventStreamer,
    RecordStore,
    RoleScheduler,
    Run,
    RunState,
    RunStopped,
    Workflow,
)
from statestream._core.records import Record
from statestream._engine import waiters as waiters_module
from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer
from statestream.adapters.sqlite import (
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteStreamer,
)


class CountingStore:
    """A record store that counts ``lookup`` calls (every other method passes through)."""

    def __init__(self, inner: RecordStore) -> None:
        self._inner = inner
        self.lookups = 0

    async def lookup(self, run_id: str) -> Record:
        self.lookups += 1
        return await self._inner.lookup(run_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclass
class Process:
    """One process's adapters; ``store`` counts this process's lookups."""

    streamer: EventStreamer
    store: CountingStore
    scheduler: RoleScheduler

    def build(self, b: Builder[Order, Status]) -> Workflow[Order, Status]:
        return b.build(self.streamer, self.store, self.scheduler)  # type: ignore[arg-type]


Processes = Callable[[], Awaitable[Process]]


@pytest.fixture(params=["memory", "sqlite"])
async def processes(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Processes]:
    """Makes "processes" that share one backend."""
    closers: list[Callable[[], Awaitable[None]]] = []
    shared = (MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler())

    async def make() -> Process:
        if request.param == "memory":
            streamer, store, scheduler = shared
            return Process(streamer, CountingStore(store), scheduler)
        db = SqliteDatabase(tmp_path / "wf.db", synchronous="NORMAL")
        # Opened one after the other: two handles setting up a new file at the same moment may
        # fail on its journal mode ("database is locked"), which is not what these tests test.
        await db.write(lambda conn: None)
        sqlite_streamer = SqliteStreamer(db)

        async def close() -> None:
            await sqlite_streamer.close()
            await db.close()

        closers.append(close)
        return Process(
            sqlite_streamer,
            CountingStore(SqliteRecordStore(db, publish_to=sqlite_streamer)),
            SqliteRoleScheduler(db, ttl=2.0, poll_interval=0.02),
        )

    yield make
    for close in reversed(closers):
        await close()


@pytest.fixture
def no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiters never re-read the store on their own: only wakes can end their wait."""
    monkeypatch.setattr(waiters_module, "FALLBACK_POLL", 3600.0)


def gated() -> tuple[asyncio.Event, Callable[[Run[Order, Status]], Awaitable[Status]]]:
    """A pay step that waits until the returned event is set."""
    gate = asyncio.Event()

    async def pay(run: Run[Order, Status]) -> Status:
        await gate.wait()
        return Status.PAID

    return gate, pay


def wait_receivers(streamer: EventStreamer) -> list[Any]:
    """The receivers wait_for has open on a memory streamer."""
    assert isinstance(streamer, MemoryStreamer)
    return [r for r in streamer._receivers if "-wait-for-" in r.name]


# ------------------------------------------------------------------ other processes' writes


@pytest.mark.parametrize("b_started", [False, True], ids=["b-not-started", "b-started-idle"])
async def test_a_waiter_in_another_process_is_woken_by_the_event_not_by_polling(
    processes: Processes, no_fallback: None, b_started: bool
) -> None:
    # Given process A running the steps, with its pay step held, and process B (not started,
    # or started after A so that A holds every role) waiting for the run to ship
    gate, pay = gated()
    pa, pb = await processes(), await processes()
    a = pa.build(order_builder(pay))
    b = pb.build(order_builder(pay))
    await a.start()
    if b_started:
        await b.start()
    try:
        run_id = await a.trigger("order-1")
        waiter = asyncio.create_task(
            b.wait_for("order-1", run_id, Status.SHIPPED, timeout=10, poll_interval=0.02)
        )
        await asyncio.sleep(0.3)
        assert not waiter.done()

        # When A moves the run on
        gate.set()

        # Then B returns the completed run, woken by A's event (its fallback read is an hour
        # away), having read the store once to start and once when woken
        run = await waiter
        assert (run.status, run.run_state) == (Status.SHIPPED, RunState.COMPLETED)
        assert pb.store.lookups <= 3, pb.store.lookups
    finally:
        await b.stop()
        await a.stop()


async def test_a_waiter_gets_run_stopped_when_the_run_completes_elsewhere_at_another_status(
    processes: Processes, no_fallback: None
) -> None:
    # Given a workflow that may refund instead of paying, a run held before its first step,
    # and process B waiting for it to ship
    gate = asyncio.Event()

    async def refund(run: Run[Order, Status]) -> Status:
        await gate.wait()
        return Status.REFUNDED

    def refunds() -> Builder[Order, Status]:
        b = fast(Builder("orders", Order, Status))
        b.add_step(Status.CREATED, refund, Status.PAID, Status.REFUNDED)
        b.add_step(Status.PAID, ship, Status.SHIPPED)
        return b

    pa, pb = await processes(), await processes()
    a, b = pa.build(refunds()), pb.build(refunds())
    async with a:
        run_id = await a.trigger("order-1")
        waiter = asyncio.create_task(
            b.wait_for("order-1", run_id, Status.SHIPPED, timeout=10, poll_interval=0.02)
        )
        await asyncio.sleep(0.05)

        # When A completes the run at REFUNDED
        gate.set()

        # Then B's waiter gives up with RunStopped
        with pytest.raises(RunStopped, match="Completed at Refunded"):
            await waiter


async def test_a_waiter_gets_run_stopped_when_the_run_is_cancelled_elsewhere(
    processes: Processes, no_fallback: None
) -> None:
    # Given a run that process A paused while its first step was held, and process B waiting
    # for it to ship
    gate, pay = gated()
    pa, pb = await processes(), await processes()
    a, b = pa.build(order_builder(pay)), pb.build(order_builder(pay))
    async with a:
        run_id = await a.trigger("order-1")
        await asyncio.sleep(0.05)
        await a.pause(run_id)
        waiter = asyncio.create_task(
            b.wait_for("order-1", run_id, Status.SHIPPED, timeout=10, poll_interval=0.02)
        )
        await asyncio.sleep(0.05)
        assert not waiter.done()

        # When A cancels it
        await a.cancel(run_id)

        # Then B's waiter gives up with RunStopped
        with pytest.raises(RunStopped, match="Cancelled"):
            await waiter
        gate.set()  # the held step's result is discarded: the run changed meanwhile


async def test_a_run_that_reaches_the_status_elsewhere_and_moves_on_is_returned(
    processes: Processes, no_fallback: None
) -> None:
    # Given B waiting for PAID while A pays the run and ships it straight after
    gate, pay = gated()
    pa, pb = await processes(), await processes()
    a, b = pa.build(order_builder(pay)), pb.build(order_builder(pay))
    async with a:
        run_id = await a.trigger("order-1")
        waiter = asyncio.create_task(
            b.wait_for("order-1", run_id, Status.PAID, timeout=10, poll_interval=0.02)
        )
        await asyncio.sleep(0.05)
        gate.set()

        # Then B returns the run as it read it: at PAID or already past it, never a timeout
        run = await waiter
        assert run.status in (Status.PAID, Status.SHIPPED)
        assert run.version >= 2


# ------------------------------------------------------------------ many waiters


@pytest.mark.parametrize("where", ["same-process", "other-process"])
async def test_a_thousand_concurrent_waiters_all_return(
    processes: Processes, no_fallback: None, where: str
) -> None:
    # Given a running workflow with its pay step held, and 1,000 runs, each awaited in the
    # process that runs the steps or in another one
    gate, pay = gated()
    pa = await processes()
    a = pa.build(order_builder(pay))
    pb = pa if where == "same-process" else await processes()
    b = a if where == "same-process" else pb.build(order_builder(pay))
    async with a:
        ids = await asyncio.gather(*(a.trigger(f"order-{i}") for i in range(1000)))
        waiters = [
            asyncio.create_task(
                b.wait_for(f"order-{i}", run_id, Status.SHIPPED, timeout=30, poll_interval=0.02)
            )
            for i, run_id in enumerate(ids)
        ]
        await asyncio.sleep(0.2)
        assert not any(w.done() for w in waiters)

        # When every run goes through its two steps
        gate.set()
        runs = await asyncio.gather(*waiters)

    # Then every waiter returns its own completed run, having read the store once to start
    # and at most once more when woken (this process's own writes hand the record over, but
    # the event may be received first); the steps' freshness checks read it twice per run
    assert [r.run_id for r in runs] == ids
    assert {(r.status, r.run_state) for r in runs} == {(Status.SHIPPED, RunState.COMPLETED)}
    if where == "same-process":
        assert pa.store.lookups <= 2 * 1000 + 2 * 1000 + 10, pa.store.lookups
    else:
        assert pb.store.lookups <= 2 * 1000 + 10, pb.store.lookups


async def test_writes_that_do_not_reach_the_status_wake_no_one() -> None:
    # Given a waiter for SHIPPED on a run that this process pauses and resumes
    store = CountingStore(MemoryRecordStore())
    wf = order_builder().build(MemoryStreamer(), store, MemoryRoleScheduler())  # type: ignore[arg-type]
    run_id = await wf.trigger("order-1")
    waiter = asyncio.create_task(
        wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=10, poll_interval=0.01)
    )
    await asyncio.sleep(0.05)
    reads = store.lookups

    for _ in range(5):
        await wf.pause(run_id)
        await wf.resume(run_id)
    await asyncio.sleep(0.05)

    # Then the waiter has not read the store again (each control call reads it once itself)
    assert store.lookups - reads == 10
    assert not waiter.done()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


# ------------------------------------------------------------------ subscriptions


async def test_receivers_close_with_the_last_waiter_of_a_workflow_that_is_not_started() -> None:
    streamer = MemoryStreamer()
    wf = order_builder().build(streamer, MemoryRecordStore(), MemoryRoleScheduler())
    run_id = await wf.trigger("order-1")
    waiters = [
        asyncio.create_task(wf.wait_for("order-1", run_id, status, timeout=10))
        for status in (Status.PAID, Status.PAID, Status.SHIPPED)
    ]
    await asyncio.sleep(0.02)
    # One receiver per topic: PAID's status topic and the run-state-change topic
    assert sorted(r.topic for r in wait_receivers(streamer)) == [
        "orders-2",
        "orders-run-state-change",
    ]

    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    await asyncio.sleep(0)
    assert wait_receivers(streamer) == []
    assert wf._rt.waiters.by_run == {}


async def test_receivers_stay_open_between_waiters_while_started_and_close_at_stop() -> None:
    streamer = MemoryStreamer()
    wf = order_builder().build(streamer, MemoryRecordStore(), MemoryRoleScheduler())
    async with wf:
        for i in range(3):
            run_id = await wf.trigger(f"order-{i}")
            await wf.wait_for(f"order-{i}", run_id, Status.SHIPPED, timeout=10)
        assert [r.topic for r in wait_receivers(streamer)] == ["orders-run-state-change"]
    assert wait_receivers(streamer) == []


class BrokenWaitStream:
    """A streamer whose ephemeral receivers cannot be opened (others work)."""

    def __init__(self, inner: MemoryStreamer) -> None:
        self._inner = inner
        self.refused = 0

    async def receiver(self, topic: str, name: str, **kwargs: Any) -> EventReceiver:
        if kwargs.get("ephemeral"):
            self.refused += 1
            raise OSError("no ephemeral receivers here")
        return await self._inner.receiver(topic, name, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_waiters_poll_the_store_when_the_stream_cannot_be_received(
    no_fallback: None, caplog: pytest.LogCaptureFixture
) -> None:
    # Given process B whose stream refuses wait_for's receivers
    store, scheduler, inner = MemoryRecordStore(), MemoryRoleScheduler(), MemoryStreamer()
    a = order_builder().build(inner, store, scheduler)
    broken = BrokenWaitStream(inner)
    b = order_builder().build(broken, store, scheduler)  # type: ignore[arg-type]
    async with a:
        run_id = await a.trigger("order-1")
        # Then B's waiters still see the run finish, by polling every poll_interval
        run = await b.wait_for("order-1", run_id, Status.SHIPPED, timeout=10, poll_interval=0.01)
        assert run.status is Status.SHIPPED
        assert broken.refused >= 1
    assert "wait_for cannot receive" in caplog.text


async def test_cancelling_a_waiter_while_its_receiver_opens_leaves_nothing_behind() -> None:
    opened = asyncio.Event()
    release = asyncio.Event()
    inner = MemoryStreamer()

    class SlowStream(BrokenWaitStream):
        async def receiver(self, topic: str, name: str, **kwargs: Any) -> EventReceiver:
            opened.set()
            await release.wait()
            return await self._inner.receiver(topic, name, **kwargs)

    wf = order_builder().build(SlowStream(inner), MemoryRecordStore(), MemoryRoleScheduler())  # type: ignore[arg-type]
    run_id = await wf.trigger("order-1")
    waiter = asyncio.create_task(wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=10))
    await asyncio.wait_for(opened.wait(), 5)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await asyncio.sleep(0.01)
    assert wf._rt.waiters.by_run == {}
    assert wait_receivers(inner) == []


# ------------------------------------------------------------------ ephemeral receivers


async def test_sqlite_ephemeral_receiver_keeps_no_cursor_and_starts_after_the_latest(
    tmp_path: Path,
) -> None:
    db = SqliteDatabase(tmp_path / "e.db", synchronous="NORMAL")
    streamer = SqliteStreamer(db)
    try:
        old = [_message("old")]
        await streamer.publish("t", old)
        receiver = await streamer.receiver("t", "waits", ephemeral=True, poll_interval=0.01)
        await streamer.publish("t", [_message("new")])
        events = await asyncio.wait_for(receiver.recv(), 5)
        assert [e.key for e in events] == ["new"]
        await receiver.ack(events[-1])
        await receiver.close()

        def cursors(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM statestream_cursors").fetchone()[0])

        assert await db.read(cursors) == 0
    finally:
        await streamer.close()
        await db.close()


async def test_memory_ephemeral_receiver_ignores_and_keeps_no_position() -> None:
    streamer = MemoryStreamer()
    await streamer.publish("t", [_message("old")])
    durable = await streamer.receiver("t", "name", from_latest=True)
    await streamer.publish("t", [_message("mid")])
    ephemeral = await streamer.receiver("t", "name", ephemeral=True)
    await streamer.publish("t", [_message("new")])
    got: list[Event] = await ephemeral.recv()
    assert [e.key for e in got] == ["new"]
    await ephemeral.ack(got[-1])
    await durable.close()
    # The durable consumer's position is untouched by the ephemeral one's ack
    again = await streamer.receiver("t", "name")
    assert [e.key for e in await again.recv()] == ["mid", "new"]


def _message(key: str) -> Any:
    from datetime import UTC, datetime

    from statestream import Message

    return Message(key, 1, {}, datetime.now(UTC))


async def test_a_write_whose_event_is_never_published_is_seen_on_the_slow_fallback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given two processes, neither started, so that no relay publishes the outbox: B's waiter
    # can only learn of A's writes by reading the store
    monkeypatch.setattr(waiters_module, "FALLBACK_POLL", 0.2)
    streamer, store, scheduler = MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler()
    a = order_builder().build(streamer, store, scheduler)
    counting = CountingStore(store)
    b = order_builder().build(streamer, counting, scheduler)  # type: ignore[arg-type]
    run_id = await a.trigger("order-1")
    waiter = asyncio.create_task(
        b.wait_for("order-1", run_id, Status.SHIPPED, timeout=10, poll_interval=0.01)
    )
    await asyncio.sleep(0.05)
    # (no polling at poll_interval meanwhile: a subscribed waiter waits for the sweep)
    assert counting.lookups == 1

    # When A cancels the run (paused first, as an Initiated run must be)
    await a.pause(run_id)
    await a.cancel(run_id)

    # Then a sweep makes B read the store, and its waiter gives up
    with pytest.raises(RunStopped):
        await waiter
