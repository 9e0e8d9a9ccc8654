"""Pause retry: paused runs resume by themselves after a delay, a bounded number of times
(issue "Time and the outside world").

The delay runs on the workflow's clock, so a fake clock moves runs through it at once; the step
retries after errors run on real time (a few milliseconds here).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any

import pytest

from helpers import advance_until, eventually, settle
from statestream import Builder, Run, RunState, Workflow, after, errors
from statestream.adapters.memory import (
    MemoryRecordStore,
    MemoryRoleScheduler,
    MemoryStreamer,
    MemoryTimeoutStore,
)
from statestream.testing import FakeClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class S(IntEnum):
    START = 1
    DONE = 2


@dataclass
class Task:
    attempts: int = 0


def builder(step: Any, **options: Any) -> Builder[Task, S]:
    b = Builder("tasks", Task, S)
    b.defaults(error_backoff=0.01, max_error_backoff=0.02, polling_frequency=0.01)
    b.outbox(polling_frequency=0.01, error_backoff=0.01)
    b.add_step(S.START, step, S.DONE, **options)
    return b


def build(b: Builder[Task, S], **kwargs: Any) -> tuple[Workflow[Task, S], MemoryRecordStore]:
    store = MemoryRecordStore(keep_snapshots=True)
    clock = kwargs.pop("clock")
    wf = b.build(MemoryStreamer(), store, MemoryRoleScheduler(), clock=clock, **kwargs)
    return wf, store


class PausesThenWorks:
    """A step that pauses the run ``times`` times, then moves it on (a pause stores nothing of
    the object, so the attempts are counted here)."""

    def __init__(self, times: int = 1) -> None:
        self.times = times
        self.calls = 0

    async def __call__(self, run: Run[Task, S]) -> Any:
        self.calls += 1
        if self.calls <= self.times:
            return run.pause(f"waiting for stock ({self.calls})")
        run.object.attempts = self.calls
        return S.DONE


def pauses_then_works(times: int = 1) -> PausesThenWorks:
    return PausesThenWorks(times)


class AlwaysFails:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, run: Run[Task, S]) -> S:
        self.calls += 1
        raise RuntimeError("ledger unavailable")


def state_of(wf: Workflow[Task, S], run_id: str, state: RunState) -> Callable[[], Any]:
    async def check() -> bool:
        return (await wf.get(run_id)).run_state is state

    return check


def auto_resumes(store: MemoryRecordStore, run_id: str) -> list[str]:
    """Reasons of the automatic resumes of a run, in order."""
    return [
        r.run_state_reason
        for r in store.snapshots(run_id)
        if r.run_state is RunState.RUNNING and r.run_state_reason.startswith("resumed auto")
    ]


# ------------------------------------------------------------------------------ resuming


async def test_paused_run_resumes_after_the_delay_and_completes() -> None:
    # Given a step that pauses the run once, and pause retry after 5 minutes
    clock = FakeClock(T0)
    wf, store = build(builder(pauses_then_works()), clock=clock, pause_retry=timedelta(minutes=5))
    async with wf:
        run_id = await wf.trigger("task-1")
        await eventually(state_of(wf, run_id, RunState.PAUSED), what="paused by the step")

        # When 4 minutes 59 seconds pass, then it is still paused
        await settle()
        clock.advance(timedelta(minutes=4, seconds=59))
        await settle()
        assert (await wf.get(run_id)).run_state is RunState.PAUSED

        # When the delay is over
        await advance_until(
            clock, state_of(wf, run_id, RunState.COMPLETED), step=1, what="resumed and done"
        )

    # Then it was resumed once, ran the step again and completed
    run = await wf.get(run_id)
    assert (run.status, run.object.attempts) == (S.DONE, 2)
    assert auto_resumes(store, run_id) == ["resumed automatically (1 of 5)"]
    resumed = next(r for r in store.snapshots(run_id) if r.run_state_reason.startswith("resumed"))
    assert resumed.updated_at >= T0 + timedelta(minutes=5)
    assert resumed.auto_resumes == 1


async def test_pause_retry_is_on_by_default_after_an_hour() -> None:
    # Given a workflow built without pause retry options
    clock = FakeClock(T0)
    wf, _ = build(builder(pauses_then_works()), clock=clock)
    assert "paused-records-retry-consumer" in wf.states()
    async with wf:
        run_id = await wf.trigger("task-1")
        await eventually(state_of(wf, run_id, RunState.PAUSED), what="paused by the step")

        # When 59 minutes pass, then it stays paused
        await settle()
        clock.advance(timedelta(minutes=59))
        await settle()
        assert (await wf.get(run_id)).run_state is RunState.PAUSED

        # When the hour is over, then it resumes and completes
        await advance_until(
            clock, state_of(wf, run_id, RunState.COMPLETED), step=30, what="resumed and done"
        )


async def test_pause_retry_can_be_disabled() -> None:
    # Given pause retry disabled
    clock = FakeClock(T0)
    wf, store = build(builder(pauses_then_works()), clock=clock, pause_retry=None)
    assert "paused-records-retry-consumer" not in wf.states()
    async with wf:
        run_id = await wf.trigger("task-1")
        await eventually(state_of(wf, run_id, RunState.PAUSED), what="paused by the step")

        # When a long time passes
        for _ in range(10):
            clock.advance(timedelta(days=1))
            await asyncio.sleep(0.005)
        await settle()

    # Then it is still paused, with the step's reason
    run = await wf.get(run_id)
    assert (run.run_state, run.run_state_reason) == (RunState.PAUSED, "waiting for stock (1)")
    assert auto_resumes(store, run_id) == []


async def test_run_cancelled_while_paused_is_not_resumed() -> None:
    clock = FakeClock(T0)
    wf, _ = build(builder(pauses_then_works()), clock=clock, pause_retry=60)
    async with wf:
        run_id = await wf.trigger("task-1")
        await eventually(state_of(wf, run_id, RunState.PAUSED), what="paused by the step")
        await wf.cancel(run_id, "no longer needed")
        for _ in range(5):
            clock.advance(60)
            await asyncio.sleep(0.005)
        await settle()
    assert (await wf.get(run_id)).run_state is RunState.CANCELLED


async def test_paused_again_by_hand_waits_a_full_delay_from_the_new_pause() -> None:
    # Given a run paused by its step at T0, resumed by hand and paused again at T0+50
    clock = FakeClock(T0)
    step = pauses_then_works(times=2)
    wf, _ = build(builder(step), clock=clock, pause_retry=60)
    async with wf:
        run_id = await wf.trigger("task-1")
        await eventually(state_of(wf, run_id, RunState.PAUSED), what="first pause")
        await settle()
        clock.advance(50)
        await wf.resume(run_id)
        await eventually(
            lambda: _reason_is(wf, run_id, "waiting for stock (2)"), what="second pause"
        )

        # When the first pause's delay is over, then the run stays paused
        await settle()
        clock.advance(15)  # T0+65
        await settle()
        assert (await wf.get(run_id)).run_state is RunState.PAUSED

        # And it resumes once a full delay has passed since the second pause
        await advance_until(
            clock, state_of(wf, run_id, RunState.COMPLETED), step=5, what="resumed and done"
        )
        assert clock.now() >= T0 + timedelta(seconds=110)


async def _reason_is(wf: Workflow[Task, S], run_id: str, reason: str) -> bool:
    run = await wf.get(run_id)
    return run.run_state is RunState.PAUSED and run.run_state_reason == reason


# ------------------------------------------------------------------------------ bounded cycles


async def test_auto_pause_and_pause_retry_cycle_a_bounded_number_of_times() -> None:
    # Given a step that always fails, auto-pause after 2 errors, and at most 2 automatic resumes
    clock = FakeClock(T0)
    step = AlwaysFails()
    wf, store = build(
        builder(step, pause_after_errors=2), clock=clock, pause_retry=60, pause_retry_limit=2
    )
    async with wf:
        run_id = await wf.trigger("task-1")

        # When it keeps failing while time goes by
        await advance_until(
            clock,
            lambda: _stays_paused(wf, run_id),
            step=10,
            what="the run stays paused",
        )
        for _ in range(20):  # much longer than the delay: nothing resumes it again
            clock.advance(60)
            await asyncio.sleep(0.005)
        await settle()

    # Then it cycled (fail, fail, pause, resume) exactly twice, then stayed paused
    assert step.calls == 6
    assert auto_resumes(store, run_id) == [
        "resumed automatically (1 of 2)",
        "resumed automatically (2 of 2)",
    ]
    assert [r.run_state for r in store.snapshots(run_id)].count(RunState.PAUSED) == 3

    # And it says why it was paused and why it stays paused
    run = await wf.get(run_id)
    assert run.run_state is RunState.PAUSED
    assert "2 consecutive errors in step START" in run.run_state_reason
    assert "RuntimeError: ledger unavailable" in run.run_state_reason
    assert "stays paused" in run.run_state_reason
    assert "resumed automatically 2 times" in run.run_state_reason
    assert "by hand" in run.run_state_reason


async def _stays_paused(wf: Workflow[Task, S], run_id: str) -> bool:
    run = await wf.get(run_id)
    return run.run_state is RunState.PAUSED and "stays paused" in run.run_state_reason


async def test_manual_resume_resets_the_count_of_automatic_resumes() -> None:
    # Given a run that stays paused after its automatic resumes were used up (limit 1)
    clock = FakeClock(T0)
    step = AlwaysFails()
    wf, store = build(
        builder(step, pause_after_errors=2), clock=clock, pause_retry=60, pause_retry_limit=1
    )
    async with wf:
        run_id = await wf.trigger("task-1")
        await advance_until(clock, lambda: _stays_paused(wf, run_id), step=10, what="stays paused")
        assert step.calls == 4

        # When it is resumed by hand
        resumed = await wf.resume(run_id)
        assert resumed.run_state is RunState.RUNNING
        assert store.snapshots(run_id)[-1].auto_resumes == 0

        # Then it gets its automatic resumes again: fail twice, pause, resume, fail twice, stay
        await eventually(
            lambda: step.calls == 6 and _paused_now(store, run_id), what="paused again"
        )
        assert "stays paused" not in (await wf.get(run_id)).run_state_reason
        await advance_until(
            clock, lambda: _stays_paused(wf, run_id), step=10, what="stays paused again"
        )

    assert step.calls == 8
    assert auto_resumes(store, run_id) == ["resumed automatically (1 of 1)"] * 2


def _paused_now(store: MemoryRecordStore, run_id: str) -> bool:
    return store.snapshots(run_id)[-1].run_state is RunState.PAUSED


async def test_step_pausing_itself_also_counts_towards_the_limit() -> None:
    # Given a step that always pauses the run, and at most 3 automatic resumes
    clock = FakeClock(T0)
    step = pauses_then_works(times=100)
    wf, store = build(builder(step), clock=clock, pause_retry=60, pause_retry_limit=3)
    async with wf:
        run_id = await wf.trigger("task-1")

        # When time goes by
        await advance_until(clock, lambda: _stays_paused(wf, run_id), step=20, what="stays")

    # Then the step ran four times (first try and three resumes), and the run stays paused
    run = await wf.get(run_id)
    assert step.calls == 4
    assert run.run_state_reason.startswith("waiting for stock (4) (stays paused")
    assert len(auto_resumes(store, run_id)) == 3


async def test_timeout_failing_forever_is_also_bounded_by_the_pause_retry_limit() -> None:
    # Given a status with a 30 s timeout whose function always fails, auto-pause at the first
    # error, pause retry after 60 s and at most 2 automatic resumes
    clock = FakeClock(T0)
    calls = 0

    async def broken(run: Run[Task, S], now: datetime) -> S:
        nonlocal calls
        calls += 1
        raise RuntimeError("ledger unavailable")

    b = Builder("tasks", Task, S)
    b.defaults(error_backoff=0.01, max_error_backoff=0.02, polling_frequency=0.01)
    b.outbox(polling_frequency=0.01, error_backoff=0.01)
    b.add_timeout(S.START, after(30), broken, S.DONE, polling_frequency=5, pause_after_errors=1)
    timeouts = MemoryTimeoutStore(clock)
    wf, store = build(b, clock=clock, timeout_store=timeouts, pause_retry=60, pause_retry_limit=2)
    async with wf:
        run_id = await wf.trigger("task-1")

        # When time goes by
        await advance_until(clock, lambda: _stays_paused(wf, run_id), step=5, what="stays")
        for _ in range(20):
            clock.advance(60)
            await asyncio.sleep(0.005)
        await settle()

    # Then the timeout ran once per cycle: the first time and after each of the 2 resumes
    assert calls == 3
    assert len(auto_resumes(store, run_id)) == 2
    assert "timeout of START" in (await wf.get(run_id)).run_state_reason
    assert await timeouts.list("tasks") == []


# ------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pause_retry": 0},
        {"pause_retry": -5},
        {"pause_retry": "1h"},
        {"pause_retry_limit": 0},
        {"pause_retry_limit": True},
        {"pause_retry_limit": 2.5},
    ],
)
def test_bad_pause_retry_options_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(errors.ConfigurationError):
        build(builder(pauses_then_works()), clock=FakeClock(T0), **kwargs)


async def test_a_pause_by_an_operator_is_not_resumed_automatically() -> None:
    # Given a run that an operator paused through the API (before any worker ran it)
    clock = FakeClock(T0)
    calls = 0

    async def step(run: Run[Task, S]) -> S:
        nonlocal calls
        calls += 1
        return S.DONE

    wf, _ = build(builder(step), clock=clock, pause_retry=60)
    run_id = await wf.trigger("t")
    await wf.pause(run_id, "investigating")
    async with wf:
        # When the pause-retry delay passes several times over
        for _ in range(5):
            clock.advance(timedelta(minutes=2))
            await asyncio.sleep(0.02)
        # Then the run is still paused, with the operator's reason, and the step never ran
        run = await wf.get(run_id)
        assert run.run_state is RunState.PAUSED
        assert run.run_state_reason == "investigating"
        assert calls == 0
        # and resuming it by hand lets it finish
        await wf.resume(run_id)
        done = await wf.wait_for("t", run_id, S.DONE, timeout=2)
    assert done.run_state is RunState.COMPLETED
