"""User code cannot take the worker down.

A step, hook, callback, timeout function or connector handler that raises
``asyncio.CancelledError`` (not the engine's own cancellation), ``GeneratorExit``,
``KeyboardInterrupt`` or ``SystemExit`` used to stall its consumer (the task died with the slot
unfinished) or end the event loop, and again on every restart. Each is now an error of that run
(a :class:`~statestream.errors.UserCodeError`): counted, backed off, paused or parked; the worker
keeps running and other runs proceed.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from helpers import Order, Status, advance_until, build, eventually, fast, order_builder
from statestream import (
    Builder,
    CallbackOutcome,
    Event,
    Message,
    ProcessState,
    Run,
    RunState,
    StreamSource,
    Workflow,
    after,
    errors,
)
from statestream._engine.usercode import call_user
from statestream.adapters.memory import MemoryStreamer, MemoryTimeoutStore
from statestream.testing import FakeClock

KINDS: dict[str, type[BaseException]] = {
    "CancelledError": asyncio.CancelledError,
    "GeneratorExit": GeneratorExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
}
kinds = pytest.mark.parametrize("kind", list(KINDS))
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def boom(kind: str) -> None:
    raise KINDS[kind]("raised by user code")


def all_running(wf: Workflow[Any, Any]) -> bool:
    return all(state is ProcessState.RUNNING for state in wf.states().values())


async def paused(wf: Workflow[Order, Status], run_id: str) -> Run[Order, Status]:
    async def is_paused() -> bool:
        return (await wf.get(run_id)).run_state is RunState.PAUSED

    await eventually(is_paused, what="the failing run to be paused")
    return await wf.get(run_id)


# ------------------------------------------------------------------ steps


@kinds
@pytest.mark.parametrize("sync", [False, True], ids=["async", "def"])
async def test_a_step_raising_it_is_an_error_of_that_run(kind: str, sync: bool) -> None:
    def pay_sync(run: Run[Order, Status]) -> Status:
        if run.foreign_id == "bad":
            boom(kind)
        return Status.PAID

    async def pay_async(run: Run[Order, Status]) -> Status:
        return pay_sync(run)

    # Given a step that raises it for one run
    wf, _ = build(order_builder(pay_sync if sync else pay_async, pause_after_errors=2))
    async with wf:
        bad = await wf.trigger("bad")
        good = await wf.trigger("good")

        # Then the other run completes, and the failing one is paused after its errors
        await wf.wait_for("good", good, Status.SHIPPED, timeout=5)
        run = await paused(wf, bad)
        assert kind in run.run_state_reason
        assert "UserCodeError" in run.run_state_reason

        # And the worker keeps running: its processes are up and a later run completes
        assert all_running(wf), wf.states()
        later = await wf.trigger("later")
        await wf.wait_for("later", later, Status.SHIPPED, timeout=5)


async def test_a_step_awaiting_a_task_it_cancelled_is_an_error_of_that_run() -> None:
    # The common way user code leaks a CancelledError: awaiting a task that was cancelled
    async def pay(run: Run[Order, Status]) -> Status:
        if run.foreign_id == "bad":
            task = asyncio.ensure_future(asyncio.sleep(10))
            task.cancel()
            await task
        return Status.PAID

    wf, _ = build(order_builder(pay, pause_after_errors=2))
    async with wf:
        bad = await wf.trigger("bad")
        good = await wf.trigger("good")
        await wf.wait_for("good", good, Status.SHIPPED, timeout=5)
        assert "CancelledError" in (await paused(wf, bad)).run_state_reason


async def test_the_engines_own_cancellation_still_cancels_user_code() -> None:
    # Given user code running under call_user in a task
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.ensure_future(call_user(slow, True))
    await started.wait()

    # When the task itself is cancelled (a stop, a lost role), Then that is a cancellation
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# ------------------------------------------------------------------ hooks


@kinds
async def test_a_hook_raising_it_is_parked_and_the_hooks_of_other_runs_run(kind: str) -> None:
    seen: list[str] = []

    async def on_complete(run: Run[Order, Status]) -> None:
        if run.foreign_id == "bad":
            boom(kind)
        seen.append(run.foreign_id)

    b = order_builder().on_complete(on_complete)
    b.defaults(park_after_errors=2)
    wf, _ = build(b)
    async with wf:
        await wf.trigger("bad")
        await wf.trigger("good")
        await eventually(lambda: seen == ["good"], what="the good run's hook")

        async def parked() -> bool:
            return len(await wf.parked()) == 1

        await eventually(parked, what="the failing hook's event to be parked")
        (entry,) = await wf.parked()
        assert kind in entry.error
        assert entry.attempts == 2
        assert all_running(wf), wf.states()


# ------------------------------------------------------------------ callbacks


def callback_workflow(fn: Any) -> Workflow[Order, Status]:
    b = fast(Builder("orders", Order, Status))
    b.add_step(Status.CREATED, lambda run: Status.PAID, Status.PAID)
    b.add_callback(Status.PAID, fn, Status.SHIPPED)
    wf, _ = build(b)
    return wf


@kinds
@pytest.mark.parametrize("sync", [False, True], ids=["async", "def"])
async def test_a_callback_raising_it_raises_user_code_error_and_writes_nothing(
    kind: str, sync: bool
) -> None:
    def decide_sync(run: Run[Order, Status], payload: bytes) -> Status:
        if run.foreign_id == "bad":
            boom(kind)
        return Status.SHIPPED

    async def decide_async(run: Run[Order, Status], payload: bytes) -> Status:
        return decide_sync(run, payload)

    wf = callback_workflow(decide_sync if sync else decide_async)
    async with wf:
        bad = await wf.trigger("bad")
        good = await wf.trigger("good")
        await wf.wait_for("bad", bad, Status.PAID, timeout=5)
        await wf.wait_for("good", good, Status.PAID, timeout=5)

        # When the callback raises it, Then the caller gets a UserCodeError and nothing moves
        with pytest.raises(errors.UserCodeError) as raised:
            await wf.callback("bad", Status.PAID, b"")
        assert isinstance(raised.value.original, KINDS[kind])
        assert (await wf.get(bad)).version == 2

        # And the workflow keeps working for the other run
        result = await wf.callback("good", Status.PAID, b"")
        assert result.outcome is CallbackOutcome.APPLIED
        assert all_running(wf), wf.states()


# ------------------------------------------------------------------ timeouts


@kinds
async def test_a_timeout_raising_it_is_an_error_of_that_run(kind: str) -> None:
    async def on_timeout(run: Run[Order, Status], now: datetime) -> Status:
        if run.foreign_id == "bad":
            boom(kind)
        return Status.SHIPPED

    clock = FakeClock(T0)
    b = fast(Builder("orders", Order, Status))
    b.add_step(Status.CREATED, lambda run: Status.PAID, Status.PAID)
    b.add_timeout(
        Status.PAID,
        after(60),
        on_timeout,
        Status.SHIPPED,
        pause_after_errors=2,
        polling_frequency=0.01,
    )
    wf, _ = build(b, timeout_store=MemoryTimeoutStore(), clock=clock)
    async with wf:
        bad = await wf.trigger("bad")
        good = await wf.trigger("good")
        for foreign_id, run_id in (("bad", bad), ("good", good)):
            await wf.wait_for(foreign_id, run_id, Status.PAID, timeout=5)

        async def moved() -> bool:
            states = [(await wf.get(r)).run_state for r in (bad, good)]
            return states == [RunState.PAUSED, RunState.COMPLETED]

        await advance_until(clock, moved, step=30, what="the timeouts to fire")
        assert kind in (await wf.get(bad)).run_state_reason
        assert all_running(wf), wf.states()


# ------------------------------------------------------------------ connectors


@kinds
async def test_a_connector_handler_raising_it_is_parked_and_other_events_go_on(
    kind: str,
) -> None:
    outside = MemoryStreamer()
    handled: list[str] = []

    async def handler(wf: Workflow[Order, Status], event: Event) -> None:
        if event.key == "bad":
            boom(kind)
        handled.append(event.key)
        await wf.trigger(event.key)

    b = order_builder()
    b.add_connector(
        "psp",
        StreamSource(outside, "psp-events", poll_interval=0.01),
        handler,
        park_after_errors=2,
    )
    wf, _ = build(b)
    async with wf:
        await outside.publish("psp-events", [Message(k, 1, {}, T0) for k in ("bad", "good")])
        await eventually(lambda: handled == ["good"], what="the good event to be handled")

        async def parked() -> bool:
            return len(await wf.parked()) == 1

        await eventually(parked, what="the failing event to be parked")
        assert kind in (await wf.parked())[0].error
        assert all_running(wf), wf.states()
