"""Durable timeouts on the memory adapters and the fake clock (issue "Time and the outside world").

A run goes START -> WAITING. At WAITING a callback may approve it (-> APPROVED, terminal) or
bounce it (-> BOUNCED -> WAITING again, a cycle), and a timeout moves it to EXPIRED, where a
callback may close it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from functools import partial
from typing import Any

import pytest

from helpers import advance_until, eventually, settle
from statestream import (
    Builder,
    CallbackOutcome,
    Run,
    RunState,
    TimeoutRecord,
    Workflow,
    after,
    at,
    errors,
)
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
    CLOSED = 5
    BOUNCED = 6


@dataclass
class Doc:
    name: str = ""
    fired: int = 0


async def to_waiting(run: Run[Doc, S]) -> S:
    return S.WAITING


async def decide(run: Run[Doc, S], payload: bytes) -> Any:
    if payload == b"approve":
        return S.APPROVED
    if payload == b"bounce":
        return S.BOUNCED
    return run.skip()


async def close(run: Run[Doc, S], payload: bytes) -> S:
    return S.CLOSED


async def expire(run: Run[Doc, S], now: datetime) -> S:
    run.object.fired += 1
    return S.EXPIRED


def builder(
    timer: Any = None,
    on_timeout: Any = expire,
    *,
    name: str = "docs",
    **timeout_options: Any,
) -> Builder[Doc, S]:
    b = Builder(name, Doc, S)
    b.defaults(error_backoff=0.01, max_error_backoff=0.05, polling_frequency=0.01)
    b.outbox(polling_frequency=0.01, error_backoff=0.01)
    b.add_step(S.START, to_waiting, S.WAITING)
    b.add_step(S.BOUNCED, to_waiting, S.WAITING)
    b.add_callback(S.WAITING, decide, S.APPROVED, S.BOUNCED)
    b.add_callback(S.EXPIRED, close, S.CLOSED)
    timeout_options.setdefault("polling_frequency", 1)
    b.add_timeout(S.WAITING, timer or after(60), on_timeout, S.EXPIRED, **timeout_options)
    return b


@dataclass
class Env:
    """One set of memory adapters on one fake clock; workflows built on it share them."""

    clock: FakeClock = field(default_factory=lambda: FakeClock(T0))
    streamer: MemoryStreamer = field(default_factory=MemoryStreamer)
    store: MemoryRecordStore = field(default_factory=lambda: MemoryRecordStore(keep_snapshots=True))
    scheduler: MemoryRoleScheduler = field(default_factory=MemoryRoleScheduler)
    timeouts: MemoryTimeoutStore = field(init=False)

    def __post_init__(self) -> None:
        self.timeouts = MemoryTimeoutStore(self.clock)

    def build(
        self,
        b: Builder[Doc, S],
        *,
        scheduler: MemoryRoleScheduler | None = None,
        pause_retry: float | None = None,
        timeouts: Any = None,
    ) -> Workflow[Doc, S]:
        return b.build(
            self.streamer,
            self.store,
            scheduler or self.scheduler,
            timeout_store=timeouts or self.timeouts,
            clock=self.clock,
            pause_retry=pause_retry,
        )

    def transitions(self, run_id: str) -> list[tuple[int, int]]:
        """(from status, to status) of every stored status change of a run."""
        snaps = self.store.snapshots(run_id)
        return [(a.status, b.status) for a, b in itertools.pairwise(snaps) if a.status != b.status]


async def forward(env: Env, timeout: TimeoutRecord) -> None:
    """``testing.fast_forward`` once the poller is back asleep on the clock.

    Setting the fake clock while the poller is between its poll and its sleep loses the wake-up
    (see ``test_clock_moved_while_the_poller_polls_still_fires_the_timeout``), so let it settle.
    """
    await settle()
    await fast_forward(env.clock, timeout)


async def status_of(wf: Workflow[Doc, S], run_id: str) -> tuple[S, RunState]:
    run = await wf.get(run_id)
    return run.status, run.run_state


# ------------------------------------------------------------------------------ firing


async def test_timeout_fires_when_the_fake_clock_reaches_it_and_moves_the_run() -> None:
    # Given a run waiting at WAITING with a 60 s timer
    env = Env()
    wf = env.build(builder())
    async with wf:
        run_id = await wf.trigger("doc-1")
        timeout = await await_timeout(wf, "doc-1", S.WAITING)
        arrived = await wf.get(run_id)
        assert timeout.run_id == run_id
        assert timeout.foreign_id == "doc-1"
        assert timeout.status == S.WAITING
        assert timeout.run_version == arrived.version
        assert timeout.expire_at == T0 + timedelta(seconds=60)

        # When 59 s pass, then it does not fire
        env.clock.advance(59)
        await settle()
        assert await status_of(wf, run_id) == (S.WAITING, RunState.RUNNING)

        # When the clock reaches the expiry
        await forward(env, timeout)
        run = await wf.wait_for("doc-1", run_id, S.EXPIRED, timeout=2)

    # Then on_timeout moved the run once, stored its change of the object, and the timer is done
    assert run.run_state is RunState.RUNNING
    assert run.object.fired == 1
    assert env.transitions(run_id) == [(S.START, S.WAITING), (S.WAITING, S.EXPIRED)]
    assert await env.timeouts.list("docs") == []


async def test_timer_gets_the_run_and_now_and_at_fires_at_a_fixed_time() -> None:
    # Given an async timer that records what it was given, and one built with at()
    env = Env()
    seen: list[tuple[str, S, datetime]] = []
    fixed = T0 + timedelta(hours=2)
    fixed_timer = at(fixed)

    async def timer(run: Run[Doc, S], now: datetime) -> datetime | None:
        seen.append((run.object.name, run.status, now))
        when: datetime = fixed_timer(run, now)
        return when

    wf = env.build(builder(timer))
    async with wf:
        # When a run reaches WAITING
        run_id = await wf.trigger("doc-1", initial=Doc("report"))
        timeout = await await_timeout(wf, "doc-1", S.WAITING)

        # Then the timer saw the run at WAITING and the time now, and its time is stored
        assert seen == [("report", S.WAITING, T0)]
        assert timeout.expire_at == fixed

        # When the clock gets there
        await settle()
        env.clock.set(fixed - timedelta(seconds=1))
        await settle()
        assert (await wf.get(run_id)).status is S.WAITING
        await forward(env, timeout)

        # Then the run times out
        await wf.wait_for("doc-1", run_id, S.EXPIRED, timeout=2)


def test_at_needs_an_aware_datetime_and_after_a_positive_delay() -> None:
    with pytest.raises(errors.InvalidInput, match="timezone-aware"):
        at(datetime(2026, 1, 1))
    with pytest.raises(errors.ConfigurationError):
        after(0)
    with pytest.raises(errors.ConfigurationError):
        after(timedelta(seconds=-1))
    timer = after(timedelta(minutes=5))
    assert timer(None, T0) == T0 + timedelta(minutes=5)


async def test_timer_returning_none_creates_no_timeout() -> None:
    # Given a timer that sets a timeout only for documents named "urgent"
    env = Env()
    calls: list[str] = []

    def timer(run: Run[Doc, S], now: datetime) -> datetime | None:  # a plain def: in a thread
        calls.append(run.object.name)
        return now + timedelta(seconds=10) if run.object.name == "urgent" else None

    wf = env.build(builder(timer))
    async with wf:
        # When a relaxed and an urgent run reach WAITING
        relaxed = await wf.trigger("relaxed", initial=Doc("relaxed"))
        await eventually(lambda: "relaxed" in calls, what="timer called for the relaxed run")
        await wf.trigger("urgent", initial=Doc("urgent"))
        urgent = await await_timeout(wf, "urgent", S.WAITING)

        # Then only the urgent one has a timeout
        assert [t.id for t in await env.timeouts.list("docs")] == [urgent.id]

        # And long after, the relaxed run still waits while the urgent one timed out
        await advance_until(
            env.clock, lambda: _at(wf, "urgent", S.EXPIRED), step=5, what="urgent run expired"
        )
        env.clock.advance(timedelta(days=30))
        await settle()
        assert await status_of(wf, relaxed) == (S.WAITING, RunState.RUNNING)
    assert sorted(calls) == ["relaxed", "urgent"]


async def _at(wf: Workflow[Doc, S], foreign_id: str, status: S) -> bool:
    return (await wf.latest(foreign_id)).status is status


async def test_timeout_at_the_starting_status_fires_for_an_initiated_run() -> None:
    # Given a run triggered straight at WAITING (Initiated there: no step has run)
    env = Env()
    wf = env.build(builder())
    async with wf:
        run_id = await wf.trigger("doc-1", start_at=S.WAITING)
        timeout = await await_timeout(wf, "doc-1", S.WAITING)
        assert timeout.run_version == 1

        # When its timer comes due
        await forward(env, timeout)
        run = await wf.wait_for("doc-1", run_id, S.EXPIRED, timeout=2)

    # Then it moved on and is Running
    assert run.run_state is RunState.RUNNING
    assert [r.run_state for r in env.store.snapshots(run_id)] == [
        RunState.INITIATED,
        RunState.RUNNING,
    ]


# ------------------------------------------------------------------------------ bad timers


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (lambda now: datetime(2026, 1, 1, 0, 1), "timezone-aware"),  # naive
        (lambda now: now - timedelta(seconds=1), "before now"),  # in the past
        (lambda now: "tomorrow", "timezone-aware"),  # not a datetime at all
    ],
    ids=["naive", "past", "not-a-datetime"],
)
async def test_bad_timer_result_is_counted_writes_no_timeout_and_pauses_the_run(
    returned: Callable[[datetime], Any], message: str
) -> None:
    # Given a timer that returns something unusable, and auto-pause after 3 errors
    env = Env()
    calls = 0

    async def timer(run: Run[Doc, S], now: datetime) -> Any:
        nonlocal calls
        calls += 1
        return returned(now)

    wf = env.build(builder(timer, pause_after_errors=3))
    async with wf:
        # When a run reaches WAITING
        run_id = await wf.trigger("doc-1")

        # Then the timer is retried with backoff and the run is paused at the third error
        await eventually(lambda: _is_paused(wf, run_id), what="run paused after the timer's errors")
        run = await wf.get(run_id)
        await settle()
        assert calls == 3

    # And the reason says why, and nothing was written to the timeout store
    assert run.status is S.WAITING
    assert "3 consecutive errors" in run.run_state_reason
    assert "timer of WAITING" in run.run_state_reason
    assert message in run.run_state_reason
    assert await env.timeouts.list("docs") == []


async def _is_paused(wf: Workflow[Doc, S], run_id: str) -> bool:
    return (await wf.get(run_id)).run_state is RunState.PAUSED


# ------------------------------------------------------------------------------ stale timeouts


async def test_timeout_of_an_earlier_visit_never_fires_after_the_run_came_back() -> None:
    # Given a run that reached WAITING at T0 (its timer is due at T0+60)
    env = Env()
    wf = env.build(builder())
    async with wf:
        run_id = await wf.trigger("doc-1")
        first = await await_timeout(wf, "doc-1", S.WAITING)

        # When, at T0+30, it leaves WAITING and comes back through the BOUNCED cycle
        env.clock.advance(30)
        result = await wf.callback("doc-1", S.WAITING, b"bounce")
        assert result.outcome is CallbackOutcome.APPLIED
        await eventually(lambda: _second_timer(env, first.id), what="the timer of the second visit")
        second = next(t for t in await env.timeouts.list("docs") if t.id != first.id)
        assert second.expire_at == T0 + timedelta(seconds=90)
        assert second.run_version > first.run_version

        # And the first visit's timer comes due
        await settle()
        env.clock.set(T0 + timedelta(seconds=61))
        await eventually(
            lambda: _pending_ids(env, {second.id}), what="the stale timer is cancelled"
        )
        await settle()

        # Then the run still waits: the old timer was void
        assert await status_of(wf, run_id) == (S.WAITING, RunState.RUNNING)

        # When the second visit's timer comes due, then that one fires
        await forward(env, second)
        run = await wf.wait_for("doc-1", run_id, S.EXPIRED, timeout=2)
    assert run.object.fired == 1
    assert env.transitions(run_id).count((S.WAITING, S.EXPIRED)) == 1


async def _second_timer(env: Env, first_id: int) -> bool:
    return any(t.id != first_id for t in await env.timeouts.list("docs"))


async def _pending_ids(env: Env | MemoryTimeoutStore, ids: set[int]) -> bool:
    """Whether exactly these timeouts are pending."""
    store = env if isinstance(env, MemoryTimeoutStore) else env.timeouts
    return {t.id for t in await store.list("docs")} == ids


async def test_timeout_stored_with_an_old_run_version_is_cancelled_not_fired() -> None:
    # Given a run waiting at WAITING (its own timer far in the future)
    env = Env()
    wf = env.build(builder(after(timedelta(days=1))))
    async with wf:
        run_id = await wf.trigger("doc-1")
        own = await await_timeout(wf, "doc-1", S.WAITING)
        current = await wf.get(run_id)

        # And a timeout of the same run and status but of an earlier version, due now
        stale = await env.timeouts.create(
            "docs", "doc-1", run_id, int(S.WAITING), current.version - 1, T0
        )

        # When the poller looks at due timeouts
        await advance_until(
            env.clock, lambda: _pending_ids(env, {own.id}), what="stale timer cancelled"
        )
        await settle()

    # Then the stale timeout was cancelled without running on_timeout
    run = await wf.get(run_id)
    assert (run.status, run.version, run.object.fired) == (S.WAITING, current.version, 0)
    assert stale.id not in {t.id for t in await env.timeouts.list("docs")}


async def test_timeout_of_an_older_run_never_touches_a_newer_run_of_the_same_foreign_id() -> None:
    # Given run 1 of "doc-1" waiting at WAITING with a timer due at T0+60
    env = Env()
    wf = env.build(builder())
    async with wf:
        old_id = await wf.trigger("doc-1")
        old_timer = await await_timeout(wf, "doc-1", S.WAITING)

        # And run 1 is approved (finished) and run 2 of the same foreign ID reaches WAITING at
        # T0+30, at the same version as run 1 had there
        assert (await wf.callback("doc-1", S.WAITING, b"approve")).applied
        env.clock.advance(30)
        new_id = await wf.trigger("doc-1")
        new_timer = await await_timeout(wf, "doc-1", S.WAITING)
        assert new_timer.run_version == old_timer.run_version
        assert new_timer.id != old_timer.id

        # When run 1's timer comes due
        await settle()
        env.clock.set(old_timer.expire_at)
        await eventually(
            lambda: _pending_ids(env, {new_timer.id}), what="run 1's timer is cancelled"
        )
        await settle()

        # Then run 2 still waits, and run 1 is still approved
        assert await status_of(wf, new_id) == (S.WAITING, RunState.RUNNING)
        assert await status_of(wf, old_id) == (S.APPROVED, RunState.COMPLETED)

        # And run 2's own timer fires at its own time
        await forward(env, new_timer)
        await wf.wait_for("doc-1", new_id, S.EXPIRED, timeout=2)
    assert env.transitions(old_id) == [(S.START, S.WAITING), (S.WAITING, S.APPROVED)]


async def test_timeout_of_a_paused_run_does_not_fire_and_resuming_starts_a_new_timer() -> None:
    # Given a run waiting at WAITING with a timer at T0+60
    env = Env()
    wf = env.build(builder())
    async with wf:
        run_id = await wf.trigger("doc-1")
        first = await await_timeout(wf, "doc-1", S.WAITING)

        # When it is paused and the timer comes due
        await wf.pause(run_id, "on hold")
        await settle()
        env.clock.set(first.expire_at)
        await eventually(lambda: _pending_ids(env, set()), what="timer of the paused run void")
        await settle()

        # Then it did not fire
        assert await status_of(wf, run_id) == (S.WAITING, RunState.PAUSED)

        # When it is resumed, then a new timer starts from the time of the resume
        await wf.resume(run_id)
        second = await await_timeout(wf, "doc-1", S.WAITING)
        assert second.id != first.id
        assert second.expire_at == first.expire_at + timedelta(seconds=60)
        await forward(env, second)
        run = await wf.wait_for("doc-1", run_id, S.EXPIRED, timeout=2)
    assert run.object.fired == 1


# ------------------------------------------------------------------------ errors in on_timeout


async def test_on_timeout_errors_are_retried_with_backoff_and_then_succeed() -> None:
    # Given an on_timeout that fails twice, then works
    env = Env()
    calls = 0

    async def flaky(run: Run[Doc, S], now: datetime) -> S:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError(f"upstream down ({calls})")
        return await expire(run, now)

    wf = env.build(builder(on_timeout=flaky, pause_after_errors=5))
    async with wf:
        run_id = await wf.trigger("doc-1")
        timeout = await await_timeout(wf, "doc-1", S.WAITING)

        # When it comes due and the clock keeps moving
        await forward(env, timeout)
        await advance_until(
            env.clock, lambda: _at(wf, "doc-1", S.EXPIRED), what="the timeout finally fires"
        )

    # Then it was retried until it worked, and the run was never paused
    assert calls == 3
    assert [s.run_state for s in env.store.snapshots(run_id)].count(RunState.PAUSED) == 0
    assert await env.timeouts.list("docs") == []


async def test_on_timeout_error_is_backed_off_not_retried_on_every_poll() -> None:
    # Given an on_timeout that always fails and a (real-time) backoff of 5 s after an error
    env = Env()
    calls = 0

    async def broken(run: Run[Doc, S], now: datetime) -> S:
        nonlocal calls
        calls += 1
        raise RuntimeError("broken")

    wf = env.build(builder(on_timeout=broken, error_backoff=5, max_error_backoff=5))
    async with wf:
        run_id = await wf.trigger("doc-1")
        timeout = await await_timeout(wf, "doc-1", S.WAITING)

        # When it comes due and the poller is woken many times
        await forward(env, timeout)
        await eventually(lambda: calls == 1, what="first attempt")
        for _ in range(20):
            env.clock.advance(1)
            await asyncio.sleep(0.005)

        # Then it was not tried again within the backoff, and the timer is still pending
        assert calls == 1
        assert [t.id for t in await env.timeouts.list("docs")] == [timeout.id]
        assert (await wf.get(run_id)).status is S.WAITING


async def test_on_timeout_failing_forever_pauses_the_run_and_drops_the_timer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an on_timeout that always fails, and auto-pause after 3 errors
    caplog.set_level(logging.WARNING, logger="statestream")
    env = Env()
    calls = 0

    def broken(run: Run[Doc, S], now: datetime) -> S:
        nonlocal calls
        calls += 1
        raise ValueError("no such ledger")

    wf = env.build(builder(on_timeout=broken, pause_after_errors=3))
    async with wf:
        run_id = await wf.trigger("doc-1")
        timeout = await await_timeout(wf, "doc-1", S.WAITING)

        # When it comes due and the clock keeps moving
        await forward(env, timeout)
        await advance_until(
            env.clock, lambda: _is_paused(wf, run_id), what="run paused by timeout errors"
        )
        for _ in range(10):
            env.clock.advance(1)
            await asyncio.sleep(0.005)

    # Then it was tried exactly 3 times, the run is paused with the reason, the timer is gone
    assert calls == 3
    run = await wf.get(run_id)
    assert run.status is S.WAITING
    assert "3 consecutive errors in timeout of WAITING" in run.run_state_reason
    assert "ValueError: no such ledger" in run.run_state_reason
    assert await env.timeouts.list("docs") == []

    # And each error was logged with its count
    logged = [r.getMessage() for r in caplog.records if "timeout of WAITING" in r.getMessage()]
    assert [f"(error {n} of 3)" in m for n, m in enumerate(logged, 1)] == [True] * 3


async def test_on_timeout_returning_an_undeclared_status_is_an_error_and_writes_nothing() -> None:
    # Given an on_timeout that returns a status it did not declare
    env = Env()

    async def wrong(run: Run[Doc, S], now: datetime) -> S:
        return S.CLOSED

    wf = env.build(builder(on_timeout=wrong, pause_after_errors=1))
    async with wf:
        run_id = await wf.trigger("doc-1")
        timeout = await await_timeout(wf, "doc-1", S.WAITING)
        before = await wf.get(run_id)

        # When it fires
        await forward(env, timeout)
        await advance_until(env.clock, lambda: _is_paused(wf, run_id), what="run paused")

    # Then the run did not move: it was paused with an InvalidTransition reason
    run = await wf.get(run_id)
    assert run.status is S.WAITING
    assert "InvalidTransition" in run.run_state_reason
    assert run.version == before.version + 1  # only the pause was written
    assert env.transitions(run_id) == [(S.START, S.WAITING)]


async def test_on_timeout_may_skip_and_the_timer_does_not_fire_again() -> None:
    # Given an on_timeout that skips
    env = Env()
    calls = 0

    async def skip(run: Run[Doc, S], now: datetime) -> Any:
        nonlocal calls
        calls += 1
        return run.skip()

    wf = env.build(builder(on_timeout=skip))
    async with wf:
        run_id = await wf.trigger("doc-1")
        timeout = await await_timeout(wf, "doc-1", S.WAITING)
        version = (await wf.get(run_id)).version

        # When it fires and the clock keeps moving
        await forward(env, timeout)
        await eventually(lambda: calls == 1, what="on_timeout called")
        for _ in range(10):
            env.clock.advance(1)
            await asyncio.sleep(0.005)

    # Then it ran once, nothing was written, and the timer is done
    assert calls == 1
    assert (await wf.get(run_id)).version == version
    assert await env.timeouts.list("docs") == []


# ------------------------------------------------------------------------------ races


class CountingTimeoutStore(MemoryTimeoutStore):
    """Records which calls to ``complete`` actually completed a timeout."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.completed: list[int] = []

    async def complete(self, timeout_id: int) -> bool:
        done = await super().complete(timeout_id)
        if done:
            self.completed.append(timeout_id)
        return done


async def test_two_pollers_racing_move_the_run_exactly_once() -> None:
    # Given two processes that both believe they hold every role (separate role schedulers),
    # sharing the record store, the streamer, the timeout store and the clock; on_timeout is
    # slow, so both pollers are inside it at once
    env = Env()
    timeouts = CountingTimeoutStore(env.clock)
    calls = 0

    async def slow_expire(run: Run[Doc, S], now: datetime) -> S:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        return await expire(run, now)

    b = builder(on_timeout=slow_expire)
    one = env.build(b, scheduler=MemoryRoleScheduler(), timeouts=timeouts)
    two = env.build(b, scheduler=MemoryRoleScheduler(), timeouts=timeouts)
    async with one, two:
        run_id = await one.trigger("doc-1")
        await await_timeout(one, "doc-1", S.WAITING)
        await settle()  # let both inserters store their timer

        # When the timer comes due for both pollers at once
        env.clock.advance(60)
        await eventually(lambda: _at(one, "doc-1", S.EXPIRED), what="run expired")
        await eventually(lambda: _pending_ids(timeouts, set()), what="timers settled")
        await settle()

    # Then the run moved once, with one application of on_timeout's change, although both
    # pollers ran on_timeout; exactly one timer completed, the others were cancelled
    assert calls >= 2, "the pollers did not race"
    assert env.transitions(run_id) == [(S.START, S.WAITING), (S.WAITING, S.EXPIRED)]
    assert (await one.get(run_id)).object.fired == 1
    assert len(timeouts.completed) == 1


async def test_two_processes_sharing_roles_fire_each_timeout_once() -> None:
    # Given two processes sharing the role scheduler, and three runs waiting with timers
    env = Env()
    timeouts = CountingTimeoutStore(env.clock)
    b = builder()
    one = env.build(b, timeouts=timeouts)
    two = env.build(b, timeouts=timeouts)
    async with one, two:
        ids = [await two.trigger(f"doc-{i}") for i in range(3)]
        for i in range(3):
            await await_timeout(one, f"doc-{i}", S.WAITING)
        await settle()

        # When they come due
        env.clock.advance(60)
        for i in range(3):
            await eventually(partial(_at, one, f"doc-{i}", S.EXPIRED), what=f"doc-{i}")

    # Then each run moved once and each timer completed once
    for run_id in ids:
        assert env.transitions(run_id).count((S.WAITING, S.EXPIRED)) == 1
    assert len(timeouts.completed) == 3
    assert len(set(timeouts.completed)) == 3


async def test_callback_wins_against_a_timeout_that_is_firing() -> None:
    # Given a run at WAITING whose on_timeout is held half-way
    env = Env()
    entered = asyncio.Event()
    release = asyncio.Event()

    async def held(run: Run[Doc, S], now: datetime) -> S:
        entered.set()
        await release.wait()
        return await expire(run, now)

    wf = env.build(builder(on_timeout=held))
    async with wf:
        run_id = await wf.trigger("doc-1")
        timeout = await await_timeout(wf, "doc-1", S.WAITING)
        await forward(env, timeout)
        await asyncio.wait_for(entered.wait(), 2)

        # When a callback approves the run while the timeout is firing
        result = await wf.callback("doc-1", S.WAITING, b"approve")
        release.set()
        await eventually(lambda: _pending_ids(env, set()), what="the timer is settled")
        await settle()

    # Then the callback applied, the timeout lost and was cancelled: one move out of WAITING
    assert result.outcome is CallbackOutcome.APPLIED
    assert result.run.status is S.APPROVED
    run = await wf.get(run_id)
    assert (run.status, run.run_state, run.object.fired) == (S.APPROVED, RunState.COMPLETED, 0)
    assert env.transitions(run_id) == [(S.START, S.WAITING), (S.WAITING, S.APPROVED)]


async def test_timeout_wins_against_a_callback_in_progress() -> None:
    # Given a run at WAITING, and a callback whose function is held half-way
    env = Env()
    entered = asyncio.Event()
    release = asyncio.Event()

    async def held_decide(run: Run[Doc, S], payload: bytes) -> Any:
        entered.set()
        await release.wait()
        return await decide(run, payload)

    b = Builder("docs", Doc, S)
    b.defaults(error_backoff=0.01, max_error_backoff=0.05, polling_frequency=0.01)
    b.outbox(polling_frequency=0.01, error_backoff=0.01)
    b.add_step(S.START, to_waiting, S.WAITING)
    b.add_callback(S.WAITING, held_decide, S.APPROVED)
    b.add_callback(S.EXPIRED, close, S.CLOSED)
    b.add_timeout(S.WAITING, after(60), expire, S.EXPIRED, polling_frequency=1)
    wf = env.build(b)
    async with wf:
        run_id = await wf.trigger("doc-1")
        timeout = await await_timeout(wf, "doc-1", S.WAITING)
        pending = asyncio.create_task(wf.callback("doc-1", S.WAITING, b"approve"))
        await asyncio.wait_for(entered.wait(), 2)

        # When the timeout fires while the callback function runs
        await forward(env, timeout)
        await wf.wait_for("doc-1", run_id, S.EXPIRED, timeout=2)
        release.set()
        result = await pending

    # Then the callback reports that the run is not at WAITING any more, and wrote nothing
    assert result.outcome is CallbackOutcome.NOT_AT_STATUS
    assert result.run.status is S.EXPIRED
    assert env.transitions(run_id) == [(S.START, S.WAITING), (S.WAITING, S.EXPIRED)]


# ------------------------------------------------------------------------------ configuration


def test_timeouts_need_a_timeout_store_and_one_timeout_per_status() -> None:
    b = builder()
    with pytest.raises(errors.ConfigurationError, match="timeout_store"):
        b.build(MemoryStreamer(), MemoryRecordStore(), MemoryRoleScheduler())
    with pytest.raises(errors.ConfigurationError, match="already declared"):
        b.add_timeout(S.WAITING, after(1), expire, S.EXPIRED)
    with pytest.raises(errors.ConfigurationError, match="callable"):
        b.add_timeout(S.EXPIRED, "soon", expire, S.CLOSED)  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigurationError, match="next status"):
        b.add_timeout(S.EXPIRED, after(1), expire)


async def test_timeout_processes_are_listed_in_states() -> None:
    env = Env()
    wf = env.build(builder())
    names = set(wf.states())
    assert {"waiting-timeout-auto-inserter-consumer", "waiting-timeout-consumer"} <= names


# ------------------------------------------------------------------------------ fake clock


class ClockMovingTimeoutStore(MemoryTimeoutStore):
    """Moves the fake clock to ``move_to`` right after the first poll that finds nothing due:
    as if the test moved the clock while the poller was between its poll and its sleep."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.fake_clock = clock
        self.move_to: datetime | None = None

    async def list_due(
        self, workflow_name: str, status: int, now: datetime, limit: int = 100
    ) -> list[TimeoutRecord]:
        due = await super().list_due(workflow_name, status, now, limit)
        if self.move_to is not None and not due:
            self.fake_clock.set(self.move_to)
            self.move_to = None
        return due


async def test_clock_moved_while_the_poller_polls_still_fires_the_timeout() -> None:
    # Given a run waiting at WAITING with a timer at T0+60
    env = Env()
    timeouts = ClockMovingTimeoutStore(env.clock)
    wf = env.build(builder(), timeouts=timeouts)
    async with wf:
        run_id = await wf.trigger("doc-1")
        timeout = await await_timeout(wf, "doc-1", S.WAITING)
        await settle()

        # When the clock reaches the expiry just after the poller polled (and nothing else moves
        # it afterwards)
        timeouts.move_to = timeout.expire_at
        env.clock.advance(1)  # wake the poller for one more poll
        await eventually(lambda: timeouts.move_to is None, what="the poller polled")

        # Then the timeout fires anyway
        run = await wf.wait_for("doc-1", run_id, S.EXPIRED, timeout=0.5)
    assert run.object.fired == 1
