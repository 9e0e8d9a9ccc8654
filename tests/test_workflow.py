"""End-to-end behaviour of a Workflow on the memory adapters (issue "Core engine")."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from datetime import timedelta
from enum import IntEnum
from typing import Any, TypedDict

import pytest

from helpers import (
    Adapters,
    Order,
    Status,
    build,
    eventually,
    fast,
    order_builder,
    outbox_drained,
    pay,
    settle,
    ship,
)
from statestream import (
    Builder,
    InvalidTransition,
    ProcessState,
    RecordNotFound,
    Run,
    RunState,
    RunStopped,
    WaitTimeout,
    WorkflowInProgress,
    errors,
    run_state_change_topic,
    status_topic,
)
from statestream._engine.dispatch import shard_of
from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer
from statestream.testing import FakeClock, wait_until


def history(store: MemoryRecordStore, run_id: str) -> list[tuple[int, RunState, int]]:
    """(version, run state, status) of every stored version of a run."""
    return [(r.version, r.run_state, r.status) for r in store.snapshots(run_id)]


# ------------------------------------------------------------------------------- happy path


async def test_happy_path_stores_the_mutated_object_and_completes() -> None:
    # Given the orders workflow on a fake clock that each step moves on by one second
    clock = FakeClock()
    t0 = clock.now()

    async def pay_step(run: Run[Order, Status]) -> Status:
        clock.advance(1)
        run.object.paid = True
        run.object.amount += 1
        return Status.PAID

    async def ship_step(run: Run[Order, Status]) -> Status:
        clock.advance(1)
        return Status.SHIPPED

    wf, a = build(order_builder(pay_step, ship_step, parallel_count=2), clock=clock)

    # When an order is triggered and driven to the end
    async with wf:
        run_id = await wf.trigger("order-1", initial=Order("order-1", 100))
        run = await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)

    # Then the object the steps changed is stored with the terminal status
    assert run.object == Order("order-1", 101, paid=True)
    assert run.status is Status.SHIPPED
    assert run.run_state is RunState.COMPLETED
    assert run.version == 3
    assert (run.workflow_name, run.foreign_id, run.run_id) == ("orders", "order-1", run_id)
    assert run.created_at == t0
    assert run.updated_at == t0 + timedelta(seconds=2)
    stored = await wf.get(run_id)
    assert stored.object == run.object
    assert stored.version == 3
    assert (await wf.latest("order-1")).run_id == run_id
    # and created_at is kept by every write while updated_at moves with the clock
    snaps = a.store.snapshots(run_id)
    assert [s.created_at for s in snaps] == [t0, t0, t0]
    assert [s.updated_at for s in snaps] == [
        t0,
        t0 + timedelta(seconds=1),
        t0 + timedelta(seconds=2),
    ]
    assert [s.status_description for s in snaps] == ["CREATED", "PAID", "SHIPPED"]


async def test_every_write_stores_a_version_and_its_outbox_event() -> None:
    # Given a run that went all the way through
    wf, a = build(order_builder())
    async with wf:
        run_id = await wf.trigger("order-1")
        await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)
        await outbox_drained(a.store, "orders")

    # Then its versions are 1, 2, 3 going Initiated -> Running -> Completed
    assert history(a.store, run_id) == [
        (1, RunState.INITIATED, Status.CREATED),
        (2, RunState.RUNNING, Status.PAID),
        (3, RunState.COMPLETED, Status.SHIPPED),
    ]
    # and each version's event was relayed to the topic of that version, then the outbox emptied
    expected_topics = {
        1: status_topic("orders", Status.CREATED),
        2: status_topic("orders", Status.PAID),
        3: run_state_change_topic("orders"),
    }
    for version, topic in expected_topics.items():
        receiver = await a.streamer.receiver(topic, f"inspect-{version}")
        events = await asyncio.wait_for(receiver.recv(100), 1)
        await receiver.close()
        ours = [e for e in events if e.key == run_id]
        assert [e.headers["record_version"] for e in ours] == [str(version)]
    assert await a.store.list_outbox("orders", 10) == []


async def test_trigger_writes_the_record_and_its_event_together() -> None:
    # Given a workflow that is not started (so nothing relays the outbox)
    wf, a = build(order_builder())

    # When a run is triggered and then paused
    run_id = await wf.trigger("order-1")
    after_trigger = await a.store.list_outbox("orders", 10)
    await wf.pause(run_id, "hold")
    after_pause = await a.store.list_outbox("orders", 10)

    # Then each write added exactly one outbox event describing that version
    assert [e.message.headers["record_version"] for e in after_trigger] == ["1"]
    assert after_trigger[0].topic == status_topic("orders", Status.CREATED)
    assert [e.message.headers["record_version"] for e in after_pause] == ["1", "2"]
    assert after_pause[1].topic == run_state_change_topic("orders")
    assert after_pause[1].message.headers["run_state"] == str(int(RunState.PAUSED))
    assert history(a.store, run_id) == [
        (1, RunState.INITIATED, Status.CREATED),
        (2, RunState.PAUSED, Status.CREATED),
    ]


async def test_sync_step_runs_in_a_worker_thread() -> None:
    threads: list[int] = []

    def pay_sync(run: Run[Order, Status]) -> Status:
        threads.append(threading.get_ident())
        run.object.paid = True
        return Status.PAID

    wf, _ = build(order_builder(pay_sync))
    async with wf:
        run_id = await wf.trigger("order-1")
        run = await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)

    assert run.object.paid
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()


async def test_callable_object_with_async_call_is_a_step() -> None:
    class Payer:
        def __init__(self) -> None:
            self.threads: list[int] = []

        async def __call__(self, run: Run[Order, Status]) -> Status:
            # an async __call__ is awaited on the loop, not sent to a worker thread
            self.threads.append(threading.get_ident())
            return Status.PAID

    payer = Payer()
    wf, _ = build(order_builder(payer))
    async with wf:
        run_id = await wf.trigger("order-1")
        await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)

    assert payer.threads == [threading.get_ident()]


# ------------------------------------------------------------------------------- failures


async def test_failing_step_is_retried_with_backoff_until_it_succeeds() -> None:
    calls = 0

    async def flaky(run: Run[Order, Status]) -> Status:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError("gateway timed out")
        return Status.PAID

    wf, a = build(order_builder(flaky))
    async with wf:
        run_id = await wf.trigger("order-1")
        run = await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)

    assert calls == 3
    assert run.run_state is RunState.COMPLETED
    # failed attempts write nothing
    assert [v for v, _, _ in history(a.store, run_id)] == [1, 2, 3]


async def test_step_that_always_fails_is_paused_after_n_errors_and_on_pause_runs() -> None:
    # Given a step that always raises, and an on_pause hook
    calls = 0
    paused: list[Run[Order, Status]] = []
    hook_ran = asyncio.Event()

    async def broken(run: Run[Order, Status]) -> Status:
        nonlocal calls
        calls += 1
        raise RuntimeError("card declined")

    async def on_pause(run: Run[Order, Status]) -> None:
        paused.append(run)
        hook_ran.set()

    b = order_builder(broken, pause_after_errors=3)
    b.on_pause(on_pause)
    wf, a = build(b)

    # When a run reaches it
    async with wf:
        run_id = await wf.trigger("order-1")
        await asyncio.wait_for(hook_ran.wait(), 5)
        run = await wf.get(run_id)

    # Then it was paused after the third error, with the error as the reason
    assert calls == 3
    assert run.run_state is RunState.PAUSED
    assert run.status is Status.CREATED
    assert "3 consecutive errors" in run.run_state_reason
    assert "RuntimeError: card declined" in run.run_state_reason
    assert history(a.store, run_id) == [
        (1, RunState.INITIATED, Status.CREATED),
        (2, RunState.PAUSED, Status.CREATED),
    ]
    # and the hook saw the paused run, once
    assert [(r.run_id, r.run_state) for r in paused] == [(run_id, RunState.PAUSED)]


async def test_undeclared_status_writes_nothing_and_counts_as_an_error() -> None:
    calls = 0

    async def wrong(run: Run[Order, Status]) -> Status:
        nonlocal calls
        calls += 1
        return Status.SHIPPED  # only PAID is declared

    wf, a = build(order_builder(wrong, pause_after_errors=2))
    async with wf:
        run_id = await wf.trigger("order-1")
        run = await wait_until(wf, "order-1", lambda r: r.run_state is RunState.PAUSED)

    assert calls == 2
    assert "InvalidTransition" in run.run_state_reason
    assert history(a.store, run_id) == [
        (1, RunState.INITIATED, Status.CREATED),
        (2, RunState.PAUSED, Status.CREATED),
    ]


async def test_result_of_a_step_is_discarded_when_the_run_changed_meanwhile() -> None:
    # Given a step that blocks until released (one event at a time, so a witness run can tell
    # when the blocked event is finished)
    started = asyncio.Event()
    release = asyncio.Event()
    calls: Counter[str] = Counter()

    async def slow_pay(run: Run[Order, Status]) -> Status:
        calls[run.foreign_id] += 1
        if run.foreign_id == "order-1":
            started.set()
            await release.wait()
        run.object.paid = True
        return Status.PAID

    wf, a = build(order_builder(slow_pay, concurrency=1))
    async with wf:
        run_id = await wf.trigger("order-1")
        await asyncio.wait_for(started.wait(), 5)

        # When the run is paused from outside while its step runs, and the step then finishes
        paused = await wf.pause(run_id, "operator")
        release.set()
        await wf.trigger("witness")
        await wait_until(wf, "witness", lambda r: r.status is Status.PAID)

        # Then the step's result was not written: the run is paused where it was
        assert paused.version == 2
        run = await wf.get(run_id)
        assert (run.run_state, run.status, run.version) == (RunState.PAUSED, Status.CREATED, 2)
        assert not run.object.paid
        assert history(a.store, run_id) == [
            (1, RunState.INITIATED, Status.CREATED),
            (2, RunState.PAUSED, Status.CREATED),
        ]

        # And resuming runs the step again
        await wf.resume(run_id)
        done = await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)

    assert done.object.paid
    assert calls["order-1"] == 2


async def test_run_paused_before_start_is_not_stepped_until_resumed() -> None:
    # Given a run that is paused before any process started
    calls: Counter[str] = Counter()

    async def counting_pay(run: Run[Order, Status]) -> Status:
        calls[run.foreign_id] += 1
        return Status.PAID

    wf, a = build(order_builder(counting_pay, concurrency=1))
    run_id = await wf.trigger("order-1")
    await wf.pause(run_id)

    async with wf:
        # When the workflow starts and handles its events (the witness is queued behind them)
        await wf.trigger("witness")
        await wait_until(wf, "witness", lambda r: r.status is Status.SHIPPED)

        # Then the paused run's step never ran
        assert calls["order-1"] == 0
        assert (await wf.get(run_id)).run_state is RunState.PAUSED

        # When it is resumed, Then the step runs and the run completes
        await wf.resume(run_id)
        run = await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)

    assert calls["order-1"] == 1
    assert run.run_state is RunState.COMPLETED
    assert [s for _, s, _ in history(a.store, run_id)] == [
        RunState.INITIATED,
        RunState.PAUSED,
        RunState.RUNNING,
        RunState.RUNNING,
        RunState.COMPLETED,
    ]


# ------------------------------------------------------------------------------- run controls


async def test_initiated_run_cannot_be_cancelled_before_it_is_paused() -> None:
    wf, _ = build(order_builder())
    run_id = await wf.trigger("order-1")

    with pytest.raises(InvalidTransition):
        await wf.cancel(run_id)
    assert (await wf.get(run_id)).version == 1

    await wf.pause(run_id)
    cancelled = await wf.cancel(run_id, "customer left")
    assert cancelled.run_state is RunState.CANCELLED
    assert cancelled.run_state_reason == "customer left"


async def test_finished_runs_cannot_be_paused_resumed_or_cancelled() -> None:
    wf, _ = build(order_builder())
    async with wf:
        run_id = await wf.trigger("order-1")
        await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)

    for control in (wf.pause, wf.resume, wf.cancel):
        with pytest.raises(InvalidTransition):
            await control(run_id)
    assert (await wf.get(run_id)).version == 3


async def test_invalid_controls_on_paused_and_cancelled_runs() -> None:
    wf, _ = build(order_builder())
    run_id = await wf.trigger("order-1")
    await wf.pause(run_id)
    with pytest.raises(InvalidTransition):
        await wf.pause(run_id)
    await wf.cancel(run_id)
    for control in (wf.pause, wf.resume, wf.cancel):
        with pytest.raises(InvalidTransition):
            await control(run_id)
    assert (await wf.get(run_id)).version == 3


async def test_controls_on_unknown_runs_raise_record_not_found() -> None:
    wf, _ = build(order_builder())
    for control in (wf.pause, wf.resume, wf.cancel, wf.get):
        with pytest.raises(RecordNotFound):
            await control("no-such-run")


async def test_runs_of_another_workflow_are_not_found() -> None:
    # Given two workflows sharing one store
    shared = Adapters()
    orders, _ = build(order_builder(name="orders"), shared)
    refunds, _ = build(order_builder(name="refunds"), shared)
    run_id = await orders.trigger("order-1")

    # Then the other workflow does not see or control the run
    for call in (refunds.get, refunds.pause, refunds.resume, refunds.cancel):
        with pytest.raises(RecordNotFound):
            await call(run_id)
    with pytest.raises(RecordNotFound):
        await refunds.wait_for("order-1", run_id, Status.CREATED, timeout=1)
    with pytest.raises(RecordNotFound):
        await refunds.latest("order-1")
    # and the same foreign ID may have an unfinished run in each workflow
    other = await refunds.trigger("order-1")
    assert (await refunds.latest("order-1")).run_id == other
    assert (await orders.get(run_id)).version == 1


async def test_cancel_hook_runs_for_a_cancelled_run() -> None:
    # Given a paused-then-cancelled run and an on_cancel hook
    seen: list[Run[Order, Status]] = []
    ran = asyncio.Event()

    def on_cancel(run: Run[Order, Status]) -> None:  # a plain def hook
        seen.append(run)
        ran.set()

    b = order_builder()
    b.on_cancel(on_cancel)
    wf, _ = build(b)
    # (A hook fires for what happens after its consumer first started, so run it once first.)
    async with wf:
        await settle()
    run_id = await wf.trigger("order-1")
    await wf.pause(run_id)
    await wf.cancel(run_id, "fraud")

    # When the workflow runs, Then the hook sees the cancelled run
    async with wf:
        await asyncio.wait_for(ran.wait(), 5)

    assert [(r.run_id, r.run_state, r.run_state_reason) for r in seen] == [
        (run_id, RunState.CANCELLED, "fraud")
    ]


async def test_on_complete_hook_runs_once_per_completed_run() -> None:
    completed: Counter[str] = Counter()

    async def on_complete(run: Run[Order, Status]) -> None:
        assert run.run_state is RunState.COMPLETED
        completed[run.run_id] += 1

    b = order_builder()
    b.on_complete(on_complete)
    wf, _ = build(b)
    async with wf:
        run_ids = [await wf.trigger(f"order-{i}") for i in range(5)]
        await eventually(lambda: len(completed) == 5, what="five on_complete calls")
        # a later run going through flushes any duplicate delivery of the earlier ones
        last = await wf.trigger("order-last")
        await eventually(lambda: last in completed, what="last on_complete call")

    assert set(completed) == {*run_ids, last}
    assert set(completed.values()) == {1}


async def test_step_can_pause_and_cancel_the_run() -> None:
    async def decide(run: Run[Order, Status]) -> Any:
        if run.object.amount > 1000:
            return run.cancel("too expensive")
        return run.pause("needs review")

    wf, _ = build(order_builder(decide))
    async with wf:
        small = await wf.trigger("small", initial=Order("small", 10))
        big = await wf.trigger("big", initial=Order("big", 5000))
        await wait_until(wf, "small", lambda r: r.run_state is RunState.PAUSED)
        await wait_until(wf, "big", lambda r: r.run_state is RunState.CANCELLED)

    assert (await wf.get(small)).run_state_reason == "needs review"
    assert (await wf.get(big)).run_state_reason == "too expensive"


async def test_save_and_repeat_stores_the_object_and_runs_the_step_again() -> None:
    seen: list[int] = []

    async def count_up(run: Run[Order, Status]) -> Any:
        seen.append(run.object.attempts)
        run.object.attempts += 1
        if run.object.attempts < 3:
            return run.save_and_repeat()
        return Status.PAID

    wf, a = build(order_builder(count_up))
    async with wf:
        run_id = await wf.trigger("order-1")
        run = await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)

    assert seen == [0, 1, 2]
    assert run.object.attempts == 3
    assert history(a.store, run_id) == [
        (1, RunState.INITIATED, Status.CREATED),
        (2, RunState.RUNNING, Status.CREATED),
        (3, RunState.RUNNING, Status.CREATED),
        (4, RunState.RUNNING, Status.PAID),
        (5, RunState.COMPLETED, Status.SHIPPED),
    ]
    assert [wf.to_run(r).object.attempts for r in a.store.snapshots(run_id)] == [0, 1, 2, 3, 3]


async def test_skip_leaves_the_run_untouched() -> None:
    calls: Counter[str] = Counter()

    async def maybe_skip(run: Run[Order, Status]) -> Any:
        calls[run.foreign_id] += 1
        if run.foreign_id == "skip-me":
            return run.skip()
        return Status.PAID

    wf, a = build(order_builder(maybe_skip, concurrency=1))
    async with wf:
        run_id = await wf.trigger("skip-me")
        await wf.trigger("witness")
        await wait_until(wf, "witness", lambda r: r.status is Status.SHIPPED)

    assert calls == {"skip-me": 1, "witness": 1}
    run = await wf.get(run_id)
    assert (run.run_state, run.status, run.version) == (RunState.INITIATED, Status.CREATED, 1)
    assert len(a.store.snapshots(run_id)) == 1


# ------------------------------------------------------------------------------- trigger


async def test_second_trigger_for_an_unfinished_foreign_id_is_refused() -> None:
    wf, a = build(order_builder())
    await wf.trigger("order-1")
    with pytest.raises(WorkflowInProgress):
        await wf.trigger("order-1")
    assert len(await a.store.list("orders")) == 1


async def test_concurrent_triggers_for_one_foreign_id_create_exactly_one_run() -> None:
    wf, a = build(order_builder())

    results = await asyncio.gather(
        *(wf.trigger("order-1") for _ in range(20)), return_exceptions=True
    )

    run_ids = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, WorkflowInProgress)]
    assert len(run_ids) == 1
    assert len(refused) == 19
    assert [r.run_id for r in await a.store.list("orders")] == run_ids


async def test_trigger_again_after_the_run_completed() -> None:
    wf, _ = build(order_builder())
    async with wf:
        first = await wf.trigger("order-1")
        await wf.wait_for("order-1", first, Status.SHIPPED, timeout=5)
        second = await wf.trigger("order-1", initial=Order("order-1", 7))
        run = await wf.wait_for("order-1", second, Status.SHIPPED, timeout=5)

    assert second != first
    assert run.object.amount == 7
    assert (await wf.latest("order-1")).run_id == second


async def test_trigger_without_start_then_start_processes_the_run() -> None:
    # Given a run triggered while no process runs
    wf, _ = build(order_builder())
    run_id = await wf.trigger("order-1")
    run = await wf.get(run_id)
    assert (run.run_state, run.status, run.version) == (RunState.INITIATED, Status.CREATED, 1)

    # When the workflow starts, Then it picks the run up
    async with wf:
        done = await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)
    assert done.run_state is RunState.COMPLETED


async def test_trigger_start_at_skips_the_earlier_steps() -> None:
    calls: Counter[str] = Counter()

    async def counting_pay(run: Run[Order, Status]) -> Status:
        calls["pay"] += 1
        return Status.PAID

    wf, a = build(order_builder(counting_pay))
    async with wf:
        run_id = await wf.trigger("order-1", start_at=Status.PAID)
        await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)

    assert calls["pay"] == 0
    assert history(a.store, run_id) == [
        (1, RunState.INITIATED, Status.PAID),
        (2, RunState.COMPLETED, Status.SHIPPED),
    ]


async def test_build_start_at_sets_the_default_starting_status() -> None:
    wf, _ = build(order_builder(), start_at=Status.PAID)
    run_id = await wf.trigger("order-1")
    assert (await wf.get(run_id)).status is Status.PAID


async def test_trigger_defaults_the_object_to_the_types_default() -> None:
    wf, _ = build(order_builder())
    run_id = await wf.trigger("order-1")
    assert (await wf.get(run_id)).object == Order()


# ------------------------------------------------------------------------------- bad input


async def test_trigger_with_an_object_of_another_type_writes_nothing() -> None:
    wf, a = build(order_builder())
    with pytest.raises(errors.InvalidObject):
        await wf.trigger("order-1", initial={"id": "order-1"})  # type: ignore[arg-type]
    assert await a.store.list() == []
    assert await a.store.list_outbox("orders", 10) == []


@pytest.mark.parametrize("foreign_id", ["", None, 123])
async def test_trigger_with_an_invalid_foreign_id(foreign_id: Any) -> None:
    wf, a = build(order_builder())
    with pytest.raises(errors.InvalidInput):
        await wf.trigger(foreign_id)
    assert await a.store.list() == []


class Other(IntEnum):
    CREATED = 1


@pytest.mark.parametrize(
    "start_at",
    [Status.REFUNDED, Status.SHIPPED, Other.CREATED, 1],
    ids=["not-in-graph", "terminal", "other-enum", "plain-int"],
)
async def test_trigger_with_an_unusable_start_at(start_at: Any) -> None:
    wf, a = build(order_builder())
    with pytest.raises(errors.UnknownStatus):
        await wf.trigger("order-1", start_at=start_at)
    assert await a.store.list() == []


class TD(TypedDict):
    x: int


class Two(IntEnum):
    A = 1
    B = 2


async def test_trigger_with_a_typeddict_object() -> None:
    async def step(run: Run[TD, Two]) -> Two:
        return Two.B

    b = Builder("td", TD, Two)
    b.add_step(Two.A, step, Two.B)
    wf = b.build(MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler())
    run_id = await wf.trigger("a", initial={"x": 1})
    assert (await wf.get(run_id)).object == {"x": 1}


# ------------------------------------------------------------------------------- wait_for


async def test_wait_for_returns_at_once_when_the_run_is_already_there() -> None:
    wf, _ = build(order_builder())  # never started
    run_id = await wf.trigger("order-1")
    run = await wf.wait_for("order-1", run_id, Status.CREATED, timeout=0)
    assert (run.run_id, run.status, run.version) == (run_id, Status.CREATED, 1)


@pytest.mark.parametrize(
    "status",
    [Status.REFUNDED, Other.CREATED, 2, "PAID"],
    ids=["not-in-graph", "other-enum", "plain-int", "str"],
)
async def test_wait_for_an_unknown_status(status: Any) -> None:
    wf, _ = build(order_builder())
    run_id = await wf.trigger("order-1")
    with pytest.raises(errors.UnknownStatus):
        await wf.wait_for("order-1", run_id, status, timeout=1)


async def test_wait_for_times_out() -> None:
    wf, _ = build(order_builder())  # never started: the run stays at CREATED
    run_id = await wf.trigger("order-1")
    with pytest.raises(WaitTimeout) as info:
        await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=0.05, poll_interval=0.01)
    assert isinstance(info.value, TimeoutError)


async def test_wait_for_raises_run_stopped_when_the_run_is_cancelled() -> None:
    # Given someone waiting for a run to ship
    wf, _ = build(order_builder())
    run_id = await wf.trigger("order-1")
    waiter = asyncio.create_task(wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5))
    await asyncio.sleep(0.01)
    assert not waiter.done()

    # When the run is paused (still waiting) and then cancelled
    await wf.pause(run_id)
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await wf.cancel(run_id)

    # Then the waiter gives up
    with pytest.raises(RunStopped):
        await asyncio.wait_for(waiter, 1)


async def test_wait_for_a_run_that_does_not_exist() -> None:
    wf, _ = build(order_builder())
    run_id = await wf.trigger("order-1")
    with pytest.raises(RecordNotFound):
        await wf.wait_for("order-2", run_id, Status.CREATED, timeout=1)
    with pytest.raises(RecordNotFound):
        await wf.wait_for("order-1", "no-such-run", Status.CREATED, timeout=1)


# ------------------------------------------------------------------------------- sharding


async def test_parallel_consumers_handle_each_run_exactly_once() -> None:
    calls: Counter[str] = Counter()

    async def counting_pay(run: Run[Order, Status]) -> Status:
        calls[run.run_id] += 1
        await asyncio.sleep(0)
        return Status.PAID

    wf, _ = build(order_builder(counting_pay, parallel_count=3))
    assert [n for n in wf.states() if n.startswith("created-")] == [
        "created-consumer-1-of-3",
        "created-consumer-2-of-3",
        "created-consumer-3-of-3",
    ]
    async with wf:
        run_ids = [await wf.trigger(f"order-{i}") for i in range(60)]
        for i, run_id in enumerate(run_ids):
            await wf.wait_for(f"order-{i}", run_id, Status.SHIPPED, timeout=5)

    assert calls == dict.fromkeys(run_ids, 1)
    # the run IDs really were spread over the three shards
    assert {shard_of(r, 3) for r in run_ids} == {0, 1, 2}


@pytest.mark.parametrize(
    ("key", "shards", "expected"),
    [
        ("order-1", 3, 1),
        ("order-2", 3, 0),
        ("run-a", 3, 2),
        ("order-1", 4, 3),
        ("order-2", 4, 1),
        ("0123456789abcdef0123456789abcdef", 4, 2),
        ("anything", 1, 0),
    ],
)
def test_shard_of_is_stable(key: str, shards: int, expected: int) -> None:
    assert shard_of(key, shards) == expected


def test_shard_of_spreads_keys_evenly() -> None:
    import hashlib

    keys = [hashlib.sha1(str(i).encode()).hexdigest()[:32] for i in range(3000)]
    counts = Counter(shard_of(k, 4) for k in keys)
    assert set(counts) == {0, 1, 2, 3}
    for shard, n in counts.items():
        assert 0.15 <= n / 3000 <= 0.35, (shard, n)


async def test_two_instances_sharing_adapters_run_each_step_once() -> None:
    # Given two instances of one workflow (two "processes") on shared adapters
    calls: Counter[tuple[str, str]] = Counter()

    async def counting_pay(run: Run[Order, Status]) -> Status:
        calls["pay", run.run_id] += 1
        await asyncio.sleep(0)
        return Status.PAID

    async def counting_ship(run: Run[Order, Status]) -> Status:
        calls["ship", run.run_id] += 1
        return Status.SHIPPED

    b = order_builder(counting_pay, counting_ship, parallel_count=2)
    shared = Adapters()
    wf1, _ = build(b, shared)
    wf2, _ = build(b, shared)
    await wf1.start()
    await wf2.start()
    try:
        # When both trigger runs, and halfway through the first one stops
        run_ids: dict[str, str] = {}
        for i in range(25):
            fid = f"order-{i}"
            run_ids[fid] = await (wf1 if i % 2 else wf2).trigger(fid)
        await eventually(lambda: len(calls) == 50, what="first 25 runs paid and shipped")
        await wf1.stop(grace=2)
        for i in range(25, 50):
            fid = f"order-{i}"
            run_ids[fid] = await (wf1 if i % 2 else wf2).trigger(fid)
        for fid, run_id in run_ids.items():
            await wf2.wait_for(fid, run_id, Status.SHIPPED, timeout=5, poll_interval=0.01)
    finally:
        await wf1.stop()
        await wf2.stop()

    # Then every step ran exactly once per run
    assert len(calls) == 100
    assert set(calls.values()) == {1}


# ------------------------------------------------------------------------------- processes


async def test_states_report_each_process() -> None:
    b = order_builder()
    b.on_complete(lambda run: None)
    wf, _ = build(b)
    names = {
        "created-consumer-1-of-1",
        "paid-consumer-1-of-1",
        "completed-run-state-change-hook-consumer",
        "outbox-consumer",
    }
    assert names <= set(wf.states())
    assert set(wf.states().values()) == {ProcessState.UNKNOWN}
    assert not wf.running

    await wf.start()
    try:
        assert wf.running
        await eventually(
            lambda: set(wf.states().values()) == {ProcessState.RUNNING}, what="all running"
        )
        assert names <= set(wf.states())
    finally:
        await wf.stop()

    assert not wf.running
    assert set(wf.states().values()) == {ProcessState.SHUTDOWN}


async def test_second_instance_waits_idle_then_takes_its_share_of_the_roles() -> None:
    shared = Adapters()
    wf1, _ = build(order_builder(), shared)
    wf2, _ = build(order_builder(), shared)
    async with wf1, wf2:
        await eventually(lambda: set(wf1.states().values()) == {ProcessState.RUNNING})
        await asyncio.sleep(0.01)
        assert set(wf2.states().values()) == {ProcessState.IDLE}

        # The first hands half of the roles over (the memory scheduler divides them)
        def running(wf: Any) -> int:
            return sum(state is ProcessState.RUNNING for state in wf.states().values())

        total = len(wf1.states())
        await eventually(
            lambda: running(wf1) + running(wf2) == total and abs(running(wf1) - running(wf2)) <= 1,
            what="an even division",
        )


async def test_stop_lets_an_in_flight_step_finish_and_stores_its_result() -> None:
    # Given a step that takes 0.1 s and is in flight
    started = asyncio.Event()

    async def slow_pay(run: Run[Order, Status]) -> Status:
        started.set()
        await asyncio.sleep(0.1)
        run.object.paid = True
        return Status.PAID

    wf, _ = build(order_builder(slow_pay))
    await wf.start()
    run_id = await wf.trigger("order-1")
    await asyncio.wait_for(started.wait(), 5)

    # When the workflow stops with enough grace
    await wf.stop(grace=2)

    # Then the step's result is stored
    run = await wf.get(run_id)
    assert (run.status, run.run_state, run.version) == (Status.PAID, RunState.RUNNING, 2)
    assert run.object.paid


async def test_stop_cancels_a_step_past_the_grace_and_restart_redelivers() -> None:
    # Given a step that waits for a gate that is not opened yet
    started = asyncio.Event()
    gate = asyncio.Event()
    calls = 0

    async def gated_pay(run: Run[Order, Status]) -> Status:
        nonlocal calls
        calls += 1
        started.set()
        await gate.wait()
        return Status.PAID

    wf, a = build(order_builder(gated_pay))
    await wf.start()
    run_id = await wf.trigger("order-1")
    await asyncio.wait_for(started.wait(), 5)

    # When the workflow stops with a tiny grace
    await wf.stop(grace=0.01)

    # Then the step was cancelled and nothing was written
    assert wf.states()["created-consumer-1-of-1"] is ProcessState.SHUTDOWN
    assert len(a.store.snapshots(run_id)) == 1

    # When it starts again and the step may finish
    gate.set()
    async with wf:
        run = await wf.wait_for("order-1", run_id, Status.SHIPPED, timeout=5)

    # Then the event was delivered again and the run completed
    assert calls == 2
    assert run.run_state is RunState.COMPLETED


# ------------------------------------------------------------------------------- graph


def test_mermaid_diagram() -> None:
    b = fast(Builder("orders", Order, Status))
    b.add_step(Status.CREATED, pay, Status.PAID, Status.REFUNDED)
    b.add_step(Status.PAID, ship, Status.SHIPPED)
    wf, _ = build(b)

    diagram = wf.mermaid()

    assert diagram.startswith("```mermaid\n")
    assert "stateDiagram-v2" in diagram
    assert "\tdirection LR" in diagram
    for line in [
        "s1: Created",
        "[*] --> s1",
        "state s1_branching <<choice>>",
        "s1 --> s1_branching",
        "s1_branching --> s2",
        "s1_branching --> s4",
        "s2 --> s3",
        "s3 --> [*]",
        "s4 --> [*]",
    ]:
        assert f"\t{line}\n" in diagram
    assert "s2_branching" not in diagram
    assert "\tdirection TB" in wf.mermaid("TB")
    assert wf.graph == {
        Status.CREATED: [Status.PAID, Status.REFUNDED],
        Status.PAID: [Status.SHIPPED],
        Status.SHIPPED: [],
        Status.REFUNDED: [],
    }


def test_mermaid_rejects_an_unknown_direction_with_invalid_input() -> None:
    wf, _ = build(order_builder())
    with pytest.raises(errors.InvalidInput):
        wf.mermaid("UP")
