"""statestream.testing: helpers for users' own test suites."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from helpers import Order, Status, build, order_builder
from statestream import Pause, Run, RunState, Skip, WaitTimeout
from statestream.testing import FakeClock, call_step, drive_to, fake_run, require, wait_until

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_drive_to_triggers_and_returns_the_run_at_the_status() -> None:
    wf, _ = build(order_builder())
    async with wf:
        run = await drive_to(wf, "order-1", Status.PAID, initial=Order("order-1", 5))
        assert run.status is Status.PAID
        assert run.object == Order("order-1", 5, paid=True)
        # once that run is completed, drive_to starts a new one
        await wait_until(wf, "order-1", lambda r: r.run_state is RunState.COMPLETED)
        again = await drive_to(wf, "order-1", Status.SHIPPED)
    assert again.run_id != run.run_id
    assert again.run_state is RunState.COMPLETED
    assert again.object == Order(paid=True)


async def test_drive_to_reuses_an_unfinished_run() -> None:
    wf, _ = build(order_builder())  # not started: the run stays at CREATED
    first = await drive_to(wf, "order-1", Status.CREATED)
    second = await drive_to(wf, "order-1", Status.CREATED)
    assert second.run_id == first.run_id
    assert len(await wf.store.list("orders")) == 1


async def test_require_compares_the_object_at_the_status() -> None:
    wf, _ = build(order_builder())
    async with wf:
        await wf.trigger("order-1", initial=Order("order-1", 5))
        at_created = await require(wf, "order-1", Status.CREATED, Order("order-1", 5))
        at_paid = await require(wf, "order-1", Status.PAID, Order("order-1", 5, paid=True))
        with pytest.raises(AssertionError, match="PAID"):
            await require(wf, "order-1", Status.PAID, Order("order-1", 6, paid=True))
    assert at_created.version == 1
    assert at_paid.version == 2


async def test_require_times_out_when_the_status_is_never_reached() -> None:
    wf, _ = build(order_builder())  # not started
    await wf.trigger("order-1")
    with pytest.raises(WaitTimeout):
        await require(wf, "order-1", Status.SHIPPED, timeout=0.05)
    with pytest.raises(WaitTimeout, match="no run exists"):
        await require(wf, "nobody", Status.CREATED, timeout=0.02)


async def test_wait_until_a_predicate_holds() -> None:
    wf, _ = build(order_builder())
    async with wf:
        await wf.trigger("order-1", initial=Order("order-1", 5))
        run = await wait_until(wf, "order-1", lambda r: r.object.paid)
        assert run.status is Status.PAID
        done = await wait_until(wf, "order-1", lambda r: r.run_state is RunState.COMPLETED)
    assert done.version == 3


async def test_fake_run_and_call_step_with_an_async_step() -> None:
    async def pay(run: Run[Order, Status]) -> Any:
        if run.object.amount <= 0:
            return run.pause("nothing to pay")
        run.object.paid = True
        return Status.PAID

    run = fake_run(Order("o", 10), Status.CREATED)
    assert await call_step(pay, run) is Status.PAID
    assert run.object.paid

    empty = fake_run(Order("o", 0), Status.CREATED, foreign_id="o", run_id="r1", now=T0)
    assert await call_step(pay, empty) == Pause("nothing to pay")
    assert (empty.foreign_id, empty.run_id, empty.created_at) == ("o", "r1", T0)
    assert (empty.run_state, empty.version, empty.workflow_name) == (RunState.RUNNING, 1, "test")


async def test_call_step_with_a_sync_step() -> None:
    def check(run: Run[Order, Status]) -> Any:
        return run.skip() if run.object.paid else Status.PAID

    assert await call_step(check, fake_run(Order(), Status.CREATED)) is Status.PAID
    assert isinstance(await call_step(check, fake_run(Order(paid=True), Status.CREATED)), Skip)


async def test_fake_clock_advance_wakes_the_sleepers_that_are_due() -> None:
    # Given two tasks sleeping 10 s and 20 s on a fake clock
    clock = FakeClock(T0)
    short = asyncio.create_task(clock.sleep(10))
    long = asyncio.create_task(clock.sleep(20))
    await asyncio.sleep(0)
    assert clock.sleepers == 2

    # When time moves 5 s, Then nobody wakes
    clock.advance(5)
    await asyncio.sleep(0)
    assert not short.done()
    assert clock.now() == T0 + timedelta(seconds=5)

    # When it moves to 10 s, Then only the short sleeper wakes
    clock.advance(timedelta(seconds=5))
    await asyncio.wait_for(short, 1)
    assert not long.done()
    assert clock.sleepers == 1

    # When it is set past 20 s, Then the other one wakes too
    clock.set(T0 + timedelta(seconds=30))
    await asyncio.wait_for(long, 1)
    assert clock.sleepers == 0


async def test_fake_clock_zero_sleep_returns_at_once() -> None:
    clock = FakeClock(T0)
    await asyncio.wait_for(clock.sleep(0), 1)
    await asyncio.wait_for(clock.sleep(-1), 1)
    assert clock.now() == T0


def test_fake_clock_rejects_going_backwards() -> None:
    clock = FakeClock(T0)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(timedelta(seconds=-1))
    with pytest.raises(ValueError, match="backwards"):
        clock.set(T0 - timedelta(microseconds=1))
    assert clock.now() == T0


def test_fake_clock_needs_an_aware_start() -> None:
    with pytest.raises(ValueError, match="timezone"):
        FakeClock(datetime(2026, 1, 1))
    assert FakeClock().now().tzinfo is not None


async def test_helpers_see_passing_statuses_without_a_snapshot_store() -> None:
    # Given the default memory store, which keeps only the latest version of a run
    from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer

    wf = order_builder().build(MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler())
    async with wf:
        # When a run passes through PAID on its way to SHIPPED
        run = await drive_to(wf, "order-1", Status.PAID, initial=Order("order-1", 5))
        # Then drive_to saw it at PAID, and require sees the later statuses too
        assert run.status is Status.PAID
        await require(wf, "order-1", Status.SHIPPED)
        await wf.trigger("order-2")
        paid = await require(wf, "order-2", Status.PAID)
        assert paid.object.paid
