"""Parking: one run whose hook, data deleter, pause retry or connector handler fails for ever no
longer blocks every later event of that consumer.

The dispatcher backs off per run; after ``park_after_errors`` failed attempts the event is
stored as parked (``Workflow.parked()``, ``statestream runs parked``) and the consumer moves past
it. ``Workflow.retry_parked(id)`` flags it; the consumer handles it again, deletes it on success
and parks it again on failure. A step keeps its own policy (auto-pause after
``pause_after_errors``); when that pause itself fails, the event is parked too.

The consumers here handle one event at a time (``concurrency=1``), so a blocked event would block
every later one: on the old code these tests time out waiting for the later runs.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from helpers import Adapters, Order, Status, advance_until, build, eventually, order_builder
from statestream import ProcessState, Record, Run, RunState, Workflow, errors
from statestream._core.records import OutboxEvent, ParkedEvent
from statestream.adapters.memory import MemoryRecordStore
from statestream.testing import FakeClock

HOOK = "completed-run-state-change-hook-consumer"


class FlakyStore(MemoryRecordStore):
    """A memory store whose ``update`` fails while ``failing(record)`` says so."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: Any = None

    async def update(self, record: Record, event: OutboxEvent) -> None:
        if self.failing is not None and self.failing(record):
            raise errors.AdapterError(f"disk full writing {record.run_id}")
        await super().update(record, event)


async def sqlite_adapters() -> AsyncIterator[Adapters]:
    from statestream.adapters.sqlite import (
        SqliteDatabase,
        SqliteRecordStore,
        SqliteRoleScheduler,
        SqliteStreamer,
    )

    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteDatabase(Path(tmp) / "parking.db", synchronous="NORMAL")
        streamer = SqliteStreamer(db)
        yield Adapters(
            streamer,  # type: ignore[arg-type]
            SqliteRecordStore(db),  # type: ignore[arg-type]
            SqliteRoleScheduler(db, ttl=2.0, poll_interval=0.02),  # type: ignore[arg-type]
        )
        await streamer.close()
        await db.close()


@pytest.fixture(params=["memory", "sqlite"])
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[Adapters]:
    if request.param == "memory":
        yield Adapters()
    else:
        async for adapters in sqlite_adapters():
            yield adapters


def hooked(fail: set[str], seen: list[str], **defaults: Any) -> Any:
    """The orders workflow with an on_complete hook that fails for the foreign IDs in ``fail``."""

    async def on_complete(run: Run[Order, Status]) -> None:
        if run.foreign_id in fail:
            raise RuntimeError(f"mailer down for {run.foreign_id}")
        seen.append(run.foreign_id)

    b = order_builder().on_complete(on_complete)
    b.defaults(**{"park_after_errors": 3, "concurrency": 1, **defaults})
    return b


async def parked_count(wf: Workflow[Any, Any], n: int) -> None:
    async def check() -> bool:
        return len(await wf.parked()) == n

    await eventually(check, what=f"{n} parked events")


async def test_a_hook_failing_for_ever_is_parked_and_later_events_go_on(shared: Adapters) -> None:
    # Given a completion hook that always fails for one run
    seen: list[str] = []
    fail = {"bad"}
    wf, _ = build(hooked(fail, seen), shared)
    async with wf:
        await wf.trigger("bad")
        await wf.wait_for("bad", (await wf.latest("bad")).run_id, Status.SHIPPED, timeout=5)
        good = await wf.trigger("good")
        await wf.wait_for("good", good, Status.SHIPPED, timeout=5)

        # Then after three attempts its event is parked, and the hook of the later run runs
        await eventually(lambda: seen == ["good"], what="the later run's hook")
        await parked_count(wf, 1)
        (entry,) = await wf.parked()
        assert entry.consumer == "orders-completed-run-state-change-hook-consumer"
        assert entry.event.key == (await wf.latest("bad")).run_id
        assert entry.attempts == 3
        assert entry.error == "RuntimeError: mailer down for bad"
        assert not entry.retry_requested
        assert wf.states()[HOOK] is ProcessState.RUNNING
        await eventually(lambda: wf.process_info()[HOOK].parked == 1)

    # And its position moved past it: a restart does not call the hook for it again
    fail.clear()
    async with wf:
        later = await wf.trigger("later")
        await wf.wait_for("later", later, Status.SHIPPED, timeout=5)
        await eventually(lambda: seen == ["good", "later"])
    assert len(await wf.parked()) == 1


async def test_retry_parked_handles_the_event_again(shared: Adapters) -> None:
    seen: list[str] = []
    fail = {"bad"}
    wf, _ = build(hooked(fail, seen), shared)
    async with wf:
        bad = await wf.trigger("bad")
        await wf.wait_for("bad", bad, Status.SHIPPED, timeout=5)
        await parked_count(wf, 1)
        (entry,) = await wf.parked()

        # When a retry is asked for while it still fails, Then it is parked again
        await wf.retry_parked(entry.id)

        async def parked_again() -> bool:
            (now,) = await wf.parked()
            return now.attempts == entry.attempts + 1 and not now.retry_requested

        await eventually(parked_again, what="the retried event to be parked again")
        assert seen == []

        # When it is retried once the hook works, Then it runs and the entry is gone
        fail.clear()
        await wf.retry_parked(entry.id)
        await parked_count(wf, 0)
        assert seen == ["bad"]


async def test_a_retry_asked_by_another_process_is_picked_up(shared: Adapters) -> None:
    # Given a worker with a parked event, and another instance that is never started (the CLI)
    seen: list[str] = []
    fail = {"bad"}
    worker, _ = build(hooked(fail, seen), shared)
    operator, _ = build(hooked(set(), []), shared)
    async with worker:
        bad = await worker.trigger("bad")
        await worker.wait_for("bad", bad, Status.SHIPPED, timeout=5)
        await parked_count(worker, 1)
        fail.clear()

        # When the other instance asks for a retry, Then the worker handles it at its next check
        (entry,) = await operator.parked()
        await operator.retry_parked(entry.id)
        await parked_count(worker, 0)
        assert seen == ["bad"]


async def test_retry_parked_of_an_unknown_id_is_not_found() -> None:
    wf, _ = build(order_builder())
    with pytest.raises(errors.RecordNotFound):
        await wf.retry_parked("no-such-consumer:topic:1")
    with pytest.raises(errors.InvalidInput):
        await wf.retry_parked("")
    with pytest.raises(errors.InvalidInput):
        await wf.parked(limit=0)


async def test_park_after_errors_zero_retries_for_ever() -> None:
    seen: list[str] = []
    wf, _ = build(hooked({"bad"}, seen, park_after_errors=0))
    async with wf:
        bad = await wf.trigger("bad")
        await wf.wait_for("bad", bad, Status.SHIPPED, timeout=5)
        await asyncio.sleep(0.3)  # many attempts at 10-20 ms backoff
        assert await wf.parked() == []


async def test_a_failing_data_deleter_is_parked() -> None:
    def scrub(order: Order) -> Order:
        if order.id == "bad":
            raise ValueError("cannot scrub")
        return Order()

    b = order_builder().on_delete_data(scrub)
    b.defaults(park_after_errors=2, concurrency=1)
    wf, _ = build(b)
    async with wf:
        ids = {}
        for name in ("bad", "good"):
            ids[name] = await wf.trigger(name, initial=Order(id=name))
            await wf.wait_for(name, ids[name], Status.SHIPPED, timeout=5)
            await wf.delete_data(ids[name])

        async def good_deleted() -> bool:
            return (await wf.get(ids["good"])).run_state is RunState.DATA_DELETED

        await eventually(good_deleted, what="the later run's data to be deleted")
        await parked_count(wf, 1)
        assert "ValueError: cannot scrub" in (await wf.parked())[0].error
        assert (await wf.get(ids["bad"])).run_state is RunState.REQUESTED_DATA_DELETED


async def test_a_step_whose_auto_pause_fails_is_parked_and_the_shard_moves_on() -> None:
    # Given a step that fails for one run, and a store that cannot write that run's pause
    store = FlakyStore()
    declined = {"bad"}

    async def pay(run: Run[Order, Status]) -> Status:
        if run.foreign_id in declined:
            raise RuntimeError("card declined")
        return Status.PAID

    store.failing = lambda record: record.run_state is RunState.PAUSED
    wf, _ = build(order_builder(pay, pause_after_errors=2, concurrency=1), Adapters(store=store))
    async with wf:
        bad = await wf.trigger("bad")
        good = await wf.trigger("good")

        # Then the failing run's event is parked and the one behind it is handled
        await wf.wait_for("good", good, Status.SHIPPED, timeout=5)
        await parked_count(wf, 1)
        (entry,) = await wf.parked()
        assert entry.consumer == "orders-1-consumer-1-of-1"
        assert "card declined" in entry.error
        assert "disk full" in entry.error
        assert (await wf.get(bad)).run_state is RunState.INITIATED

        # And once the step works again, a retry moves the run on and clears the entry
        declined.clear()
        store.failing = None
        await wf.retry_parked(entry.id)
        await wf.wait_for("bad", bad, Status.SHIPPED, timeout=5)
        await parked_count(wf, 0)


async def test_parked_events_keep_the_event_as_received() -> None:
    seen: list[str] = []
    wf, _ = build(hooked({"bad"}, seen))
    async with wf:
        bad = await wf.trigger("bad")
        await wf.wait_for("bad", bad, Status.SHIPPED, timeout=5)
        await parked_count(wf, 1)
    (entry,) = await wf.parked(consumer="orders-completed-run-state-change-hook-consumer")
    assert isinstance(entry, ParkedEvent)
    assert entry.workflow_name == "orders"
    assert entry.id == f"{entry.consumer}:{entry.event.topic}:{entry.event.id}"
    assert entry.event.headers["run_id"] == bad
    assert await wf.parked(consumer="someone-else") == []


async def test_a_pause_retry_that_keeps_failing_is_parked_and_other_runs_resume() -> None:
    # Given two runs that pause on their first visit, and a store that cannot resume one of them
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    store = FlakyStore()
    store.failing = lambda r: r.foreign_id == "bad" and r.auto_resumes > 0

    async def pay(run: Run[Order, Status]) -> Any:
        if run.object.attempts == 0:
            run.object.attempts += 1
            return run.pause("try again later")
        return Status.PAID

    b = order_builder(pay)
    b.defaults(park_after_errors=2, concurrency=1)
    wf, _ = build(b, Adapters(store=store), clock=clock, pause_retry=60)
    async with wf:
        bad = await wf.trigger("bad")
        good = await wf.trigger("good")

        async def good_done() -> bool:
            return (await wf.get(good)).run_state is RunState.COMPLETED

        # When the pause retry is due, Then the failing resume is parked and the other run goes on
        await advance_until(clock, good_done, step=30, what="the good run to be resumed")
        await parked_count(wf, 1)
        (entry,) = await wf.parked()
        assert entry.consumer == "orders-paused-records-retry-consumer"
        assert entry.event.key == bad
        assert (await wf.get(bad)).run_state is RunState.PAUSED
