"""Exactly once where the engine promises it: timers, claims and the idempotency key.

A run goes START -> WAITING; at WAITING a callback approves it (-> APPROVED) and a timeout
expires it (-> EXPIRED). Events delivered twice, two pollers at once, a timer already due when
it is set, and timers of runs that left their status.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any

import pytest

from helpers import ClockedAdapters, advance_until, clocked_adapters, eventually, settle
from statestream import Builder, Message, Run, RunState, Workflow, after, at, errors
from statestream.adapters.memory import (
    MemoryRecordStore,
    MemoryRoleScheduler,
    MemoryStreamer,
    MemoryTimeoutStore,
)
from statestream.testing import FakeClock, await_timeout, fast_forward

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class S(IntEnum):
    START = 1
    WAITING = 2
    APPROVED = 3
    EXPIRED = 4


@dataclass
class Doc:
    name: str = ""
    fired: int = 0


async def to_waiting(run: Run[Doc, S]) -> S:
    return S.WAITING


async def approve(run: Run[Doc, S], payload: bytes) -> S:
    return S.APPROVED


@dataclass
class Calls:
    """What on_timeout saw: one entry per call."""

    runs: list[str] = field(default_factory=list)
    gate: asyncio.Event | None = None

    async def expire(self, run: Run[Doc, S], now: datetime) -> S:
        self.runs.append(run.run_id)
        if self.gate is not None:
            await self.gate.wait()
        run.object.fired += 1
        return S.EXPIRED


def builder(
    calls: Calls, timer: Any = None, on_timeout: Any = None, **options: Any
) -> Builder[Doc, S]:
    b = Builder("docs", Doc, S)
    b.defaults(error_backoff=0.01, max_error_backoff=0.05, polling_frequency=0.01)
    b.outbox(polling_frequency=0.01, error_backoff=0.01)
    b.add_step(S.START, to_waiting, S.WAITING)
    b.add_callback(S.WAITING, approve, S.APPROVED)
    options.setdefault("polling_frequency", 1)
    fn = on_timeout or calls.expire
    b.add_timeout(S.WAITING, timer or after(60), fn, S.EXPIRED, **options)
    return b


class Env(ClockedAdapters):
    def build(self, b: Builder[Doc, S], *, own_roles: bool = False, **kw: Any) -> Workflow[Doc, S]:
        scheduler = self.new_scheduler() if own_roles else self.scheduler
        kw.setdefault("pause_retry", None)
        return b.build(
            self.streamer,
            self.store,
            scheduler,
            timeout_store=self.timeouts,
            clock=self.clock,
            **kw,
        )


@pytest.fixture(params=["memory", "sqlite"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    async with clocked_adapters(request.param, Env) as e:
        yield e


async def republish_all(streamer: Any, topic: str) -> int:
    """Publish every event of ``topic`` again: as a relay that crashed between publishing and
    deleting its outbox batch would, or a streamer redelivering after a lost ack."""
    receiver = await streamer.receiver(topic, "test-republisher")
    try:
        events = await asyncio.wait_for(receiver.recv(1000), 1.0)
    finally:
        await receiver.close()
    await streamer.publish(
        topic, [Message(e.key, e.type, e.headers, e.created_at, e.data) for e in events]
    )
    return len(events)


# ------------------------------------------------------------------ redelivered events


async def test_a_status_event_delivered_twice_stores_one_timer_and_fires_once(env: Env) -> None:
    # Given a run waiting at WAITING with its 60 s timer
    calls = Calls()
    wf = env.build(builder(calls))
    async with wf:
        run_id = await wf.trigger("doc-1")
        timer = await await_timeout(wf, "doc-1", S.WAITING)

        # When the event that brought it to WAITING is delivered again
        assert await republish_all(env.streamer, "docs-2") >= 1
        await settle()

        # Then the visit still has one timer
        pending = [t for t in await env.timeouts.list("docs") if t.run_id == run_id]
        assert [t.id for t in pending] == [timer.id]

        # And when it comes due, on_timeout runs once
        await settle()
        await fast_forward(env.clock, timer)
        await wf.wait_for("doc-1", run_id, S.EXPIRED, timeout=2)
        await advance_until(env.clock, lambda: _no_timers(env), what="timers settled")
        await settle()
    assert calls.runs == [run_id]
    assert (await wf.get(run_id)).object.fired == 1


async def _no_timers(env: Env) -> bool:
    return not await env.timeouts.list("docs")


# ------------------------------------------------------------------ two pollers


async def test_two_pollers_at_once_run_on_timeout_once(env: Env) -> None:
    # Given two processes that both believe they hold every role (separate role schedulers),
    # sharing the stores, the streamer and the clock; on_timeout is held until released
    calls = Calls(gate=asyncio.Event())
    b = builder(calls)
    one = env.build(b, own_roles=True)
    two = env.build(b, own_roles=True)
    async with one, two:
        run_id = await one.trigger("doc-1")
        timer = await await_timeout(one, "doc-1", S.WAITING)
        await settle()

        # When the timer comes due for both pollers, and both poll while on_timeout runs
        env.clock.advance(60)
        await eventually(lambda: len(calls.runs) >= 1, what="on_timeout started")
        for _ in range(5):
            env.clock.advance(1)  # inside the claim window: others must leave the timer alone
            await asyncio.sleep(0.01)
        calls.gate.set()
        await one.wait_for("doc-1", run_id, S.EXPIRED, timeout=2)
        await settle()

    # Then on_timeout ran once, and the timer is done
    assert calls.runs == [run_id]
    assert timer.id not in {t.id for t in await env.timeouts.list("docs")}


async def test_a_timer_claimed_elsewhere_waits_for_the_claim_to_lapse(env: Env) -> None:
    # Given a run whose due timer another poller has claimed for 10 minutes (then died)
    calls = Calls()
    wf = env.build(builder(calls))
    async with wf:
        run_id = await wf.trigger("doc-1")
        timer = await await_timeout(wf, "doc-1", S.WAITING)
        await settle()
        due = timer.expire_at
        assert await env.timeouts.claim(timer.id, due, due + timedelta(minutes=10))

        # When it is due but still claimed, then it does not fire
        env.clock.set(due + timedelta(minutes=5))
        await settle()
        env.clock.advance(1)
        await settle()
        assert calls.runs == []

        # When the claim lapses, then it fires once
        await advance_until(
            env.clock, lambda: len(calls.runs) == 1, step=30, what="fired after the claim"
        )
        await wf.wait_for("doc-1", run_id, S.EXPIRED, timeout=2)
    assert calls.runs == [run_id]


async def test_an_on_timeout_error_defers_the_timer_in_the_store(env: Env) -> None:
    # Given an on_timeout that fails once, with a 60-120 s backoff after an error
    fails = 1
    seen: list[datetime] = []

    async def flaky(run: Run[Doc, S], now: datetime) -> S:
        nonlocal fails
        seen.append(now)
        if fails:
            fails -= 1
            raise RuntimeError("ledger down")
        return S.EXPIRED

    b = builder(Calls(), on_timeout=flaky, error_backoff=120, max_error_backoff=120)
    wf = env.build(b)
    async with wf:
        run_id = await wf.trigger("doc-1")
        timer = await await_timeout(wf, "doc-1", S.WAITING)
        await settle()
        await fast_forward(env.clock, timer)
        await eventually(lambda: len(seen) == 1, what="first attempt")
        await settle()

        # Then the retry time is kept with the timer, where every poller sees it
        (stored,) = [t for t in await env.timeouts.list("docs") if t.id == timer.id]
        assert stored.claimed_until is not None
        assert stored.claimed_until >= env.clock.now() + timedelta(seconds=59)

        # And a second process's poller (its own roles) does not retry it early
        other = env.build(b, own_roles=True)
        async with other:
            for _ in range(5):
                env.clock.advance(10)
                await asyncio.sleep(0.01)
            assert len(seen) == 1

            # When the backoff has passed, then it is retried once and succeeds
            await advance_until(env.clock, lambda: len(seen) == 2, step=10, what="the retry")
            await wf.wait_for("doc-1", run_id, S.EXPIRED, timeout=2)
    assert len(seen) == 2


# ------------------------------------------------------------------ timers already due


async def test_at_a_time_already_past_fires_at_once(env: Env) -> None:
    # Given a timer at a deadline that passed an hour ago
    calls = Calls()
    wf = env.build(builder(calls, timer=at(T0 - timedelta(hours=1))))
    async with wf:
        # When a run reaches WAITING (and the clock does not move)
        run_id = await wf.trigger("doc-1")
        run = await wf.wait_for("doc-1", run_id, S.EXPIRED, timeout=2)

    # Then the timer was stored due now and fired at once; the run was never paused
    assert run.run_state is RunState.COMPLETED
    assert calls.runs == [run_id]


async def test_a_timer_function_returning_the_past_fires_at_once(env: Env) -> None:
    calls = Calls()

    def yesterday(run: Run[Doc, S], now: datetime) -> datetime:
        return now - timedelta(days=1)

    wf = env.build(builder(calls, timer=yesterday))
    async with wf:
        run_id = await wf.trigger("doc-1")
        await wf.wait_for("doc-1", run_id, S.EXPIRED, timeout=2)
    assert calls.runs == [run_id]


# ------------------------------------------------------------------ timers of runs that left


@pytest.mark.parametrize("leave", ["callback", "pause", "cancel"])
async def test_a_timer_is_cancelled_when_its_run_leaves_the_status(env: Env, leave: str) -> None:
    # Given a run waiting at WAITING with a timer a year away
    calls = Calls()
    wf = env.build(builder(calls, timer=after(timedelta(days=365))))
    async with wf:
        run_id = await wf.trigger("doc-1")
        await await_timeout(wf, "doc-1", S.WAITING)

        # When it leaves WAITING (or stops there), then its timer is cancelled at once, without
        # waiting for it to come due
        if leave == "callback":
            assert (await wf.callback("doc-1", S.WAITING, b"")).applied
        elif leave == "pause":
            await wf.pause(run_id, "on hold")
        else:
            await wf.cancel(run_id, "not needed")
        assert await env.timeouts.list("docs") == []


class FailingCancel(MemoryTimeoutStore):
    async def cancel_for(
        self, workflow_name: str, run_id: str, status: int, below_version: int
    ) -> None:
        raise errors.AdapterError("timeout store down")


async def test_a_failed_cancel_of_a_left_timer_is_logged_and_the_poller_cancels_it_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a timeout store whose cancel_for fails
    clock = FakeClock(T0)
    timeouts = FailingCancel(clock)
    calls = Calls()
    wf = builder(calls).build(
        MemoryStreamer(),
        MemoryRecordStore(clock),
        MemoryRoleScheduler(),
        timeout_store=timeouts,
        clock=clock,
        pause_retry=None,
    )
    async with wf:
        run_id = await wf.trigger("doc-1")
        timer = await await_timeout(wf, "doc-1", S.WAITING)

        # When the run leaves WAITING, then the callback succeeds (its write is stored)
        assert (await wf.callback("doc-1", S.WAITING, b"")).applied
        assert "cancelling the timers of run" in caplog.text

        # And the timer is cancelled, not fired, when it comes due
        await settle()
        await fast_forward(clock, timer)
        await advance_until(clock, lambda: _none_pending(timeouts), what="timer cancelled")
    assert calls.runs == []
    assert (await wf.get(run_id)).status is S.APPROVED


async def _none_pending(timeouts: MemoryTimeoutStore) -> bool:
    return not await timeouts.list("docs")


# ------------------------------------------------------------------ idempotency key


class St(IntEnum):
    A = 1
    B = 2


@dataclass
class Counter:
    n: int = 0


def test_idempotency_key_is_the_run_and_its_version() -> None:
    run: Run[Counter, St] = Run(
        workflow_name="w",
        foreign_id="f",
        run_id="abc",
        run_state=RunState.RUNNING,
        status=St.A,
        object=Counter(),
        created_at=T0,
        updated_at=T0,
        version=3,
    )
    assert run.idempotency_key == "abc-3"


async def test_idempotency_key_is_stable_across_retries_and_new_for_the_next_visit() -> None:
    # Given a step that fails on its first attempt, then saves and repeats once, then moves on
    keys: list[str] = []

    async def step(run: Run[Counter, St]) -> Any:
        keys.append(run.idempotency_key)
        if len(keys) == 1:
            raise RuntimeError("flaky")
        if len(keys) == 2:
            return run.save_and_repeat()
        return St.B

    b = Builder("keys", Counter, St)
    b.defaults(error_backoff=0.01, max_error_backoff=0.02, polling_frequency=0.01)
    b.outbox(polling_frequency=0.01)
    b.add_step(St.A, step, St.B)
    wf = b.build(MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler(), pause_retry=None)
    async with wf:
        run_id = await wf.trigger("k-1")
        await wf.wait_for("k-1", run_id, St.B, timeout=2)

    # Then the retry of the same visit saw the same key, and the repeat (a new version) a new one
    assert keys[0] == keys[1] == f"{run_id}-1"
    assert keys[2] == f"{run_id}-2"
