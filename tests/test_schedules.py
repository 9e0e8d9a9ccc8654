"""Cron schedules that trigger runs (issue "Time and the outside world").

The workflow is START -> DONE by one quick step, so each scheduled run completes at once. Clocks
are fake; every expected tick is written out by hand.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from functools import partial
from typing import Any

import pytest

from helpers import eventually, settle
from statestream import Builder, CronSpec, Run, RunState, Schedule, Workflow, errors, testing
from statestream._engine.schedules import next_ticks
from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer
from statestream.testing import FakeClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)  # a Thursday


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


class S(IntEnum):
    START = 1
    DONE = 2


@dataclass
class Job:
    n: int = 0


async def work(run: Run[Job, S]) -> S:
    return S.DONE


def builder(step: Any = work) -> Builder[Job, S]:
    b = Builder("jobs", Job, S)
    b.defaults(error_backoff=0.01, max_error_backoff=0.05, polling_frequency=0.01)
    b.outbox(polling_frequency=0.01, error_backoff=0.01)
    b.add_step(S.START, step, S.DONE)
    return b


@dataclass
class Env:
    clock: FakeClock = field(default_factory=lambda: FakeClock(T0 + timedelta(seconds=30)))
    streamer: MemoryStreamer = field(default_factory=MemoryStreamer)
    store: MemoryRecordStore = field(default_factory=MemoryRecordStore)
    scheduler: MemoryRoleScheduler = field(default_factory=MemoryRoleScheduler)

    def build(self, b: Builder[Job, S] | None = None) -> Workflow[Job, S]:
        return (b or builder()).build(
            self.streamer, self.store, self.scheduler, clock=self.clock, pause_retry=None
        )

    async def runs(self) -> list[datetime]:
        """Creation times of every run of the workflow, oldest first."""
        return [r.created_at for r in await self.store.list("jobs", limit=1000)]

    async def all_done(self) -> bool:
        records = await self.store.list("jobs", limit=1000)
        return all(r.run_state is RunState.COMPLETED for r in records)

    async def seed(self, wf: Workflow[Job, S], foreign_id: str = "job") -> None:
        """A finished run of ``foreign_id`` created now: the schedule counts ticks from it."""
        await wf.trigger(foreign_id)
        await eventually(self.all_done, what="seed run completed")


async def move_to(env: Env, when: datetime) -> None:
    """Set the fake clock once the scheduler is asleep on it (moves that land while it is
    between reading the time and going to sleep would be lost)."""
    await settle()
    env.clock.set(when)


async def count_is(env: Env, n: int) -> bool:
    return len(await env.runs()) == n


def _len_is(items: list[Any], n: int) -> bool:
    return len(items) == n


def _skipped_is(schedule: Schedule[Job, S], n: int) -> bool:
    return schedule.skipped == n


# ------------------------------------------------------------------------------ next ticks


@pytest.mark.parametrize(
    ("spec", "start", "tz", "expected"),
    [
        pytest.param(
            "*/15 9-10 * * mon-fri",
            utc(2026, 1, 2, 10, 40),  # a Friday
            "UTC",
            [utc(2026, 1, 2, 10, 45), utc(2026, 1, 5, 9, 0), utc(2026, 1, 5, 9, 15)],
            id="steps-ranges-day-names",
        ),
        pytest.param(
            "0 8,12,18 * * *",
            utc(2026, 1, 1, 12, 0),
            "UTC",
            [utc(2026, 1, 1, 18), utc(2026, 1, 2, 8), utc(2026, 1, 2, 12)],
            id="list-strictly-after-start",
        ),
        pytest.param(
            "0 0 1 jan,jul *",
            T0,
            "UTC",
            [utc(2026, 7, 1), utc(2027, 1, 1), utc(2027, 7, 1)],
            id="month-names",
        ),
        pytest.param(
            "30 6 * * SAT,SUN",
            T0,
            "UTC",
            [utc(2026, 1, 3, 6, 30), utc(2026, 1, 4, 6, 30), utc(2026, 1, 10, 6, 30)],
            id="upper-case-day-names",
        ),
        pytest.param(
            "@hourly", T0, "UTC", [utc(2026, 1, 1, 1), utc(2026, 1, 1, 2), utc(2026, 1, 1, 3)]
        ),
        pytest.param("@daily", T0, "UTC", [utc(2026, 1, 2), utc(2026, 1, 3), utc(2026, 1, 4)]),
        pytest.param("@midnight", T0, "UTC", [utc(2026, 1, 2), utc(2026, 1, 3), utc(2026, 1, 4)]),
        pytest.param("@weekly", T0, "UTC", [utc(2026, 1, 4), utc(2026, 1, 11), utc(2026, 1, 18)]),
        pytest.param("@monthly", T0, "UTC", [utc(2026, 2, 1), utc(2026, 3, 1), utc(2026, 4, 1)]),
        pytest.param("@yearly", T0, "UTC", [utc(2027, 1, 1), utc(2028, 1, 1), utc(2029, 1, 1)]),
        pytest.param("@annually", T0, "UTC", [utc(2027, 1, 1), utc(2028, 1, 1), utc(2029, 1, 1)]),
        pytest.param(
            "@every 90s",
            T0,
            "UTC",
            [utc(2026, 1, 1, 0, 1, 30), utc(2026, 1, 1, 0, 3), utc(2026, 1, 1, 0, 4, 30)],
        ),
        pytest.param(
            "@every 1h30m",
            T0 + timedelta(seconds=7),
            "UTC",
            [utc(2026, 1, 1, 1, 30, 7), utc(2026, 1, 1, 3, 0, 7), utc(2026, 1, 1, 4, 30, 7)],
            id="every-counts-from-start",
        ),
        pytest.param(
            "@every 1d", T0, "Asia/Tokyo", [utc(2026, 1, 2), utc(2026, 1, 3), utc(2026, 1, 4)]
        ),
        pytest.param(
            "0 9 * * *",
            T0,
            "America/New_York",  # 09:00 EST is 14:00 UTC
            [utc(2026, 1, 1, 14), utc(2026, 1, 2, 14), utc(2026, 1, 3, 14)],
            id="time-zone",
        ),
        pytest.param(
            "0 9 * * *",
            utc(2026, 3, 27, 12),
            "Europe/London",  # British Summer Time starts on 29 March 2026
            [utc(2026, 3, 28, 9), utc(2026, 3, 29, 8), utc(2026, 3, 30, 8)],
            id="time-zone-across-dst",
        ),
        pytest.param(
            "0 9 * * mon-fri",
            T0,  # Thursday 09:00 in Tokyo: the next is Friday 09:00 JST
            "Asia/Tokyo",
            [utc(2026, 1, 2, 0), utc(2026, 1, 5, 0), utc(2026, 1, 6, 0)],
            id="weekdays-in-a-time-zone-ahead-of-utc",
        ),
    ],
)
def test_next_ticks(spec: str, start: datetime, tz: str, expected: list[datetime]) -> None:
    ticks = next_ticks(spec, start, 3, tz)
    assert ticks == expected
    assert all(t.tzinfo == UTC for t in ticks)
    assert testing.next_ticks(spec, start, 3, tz) == expected


def test_cron_spec_next_after_needs_an_aware_time_and_keeps_the_spec() -> None:
    cron = CronSpec("  0 9 * * *  ", "Europe/London")
    assert cron.spec == "0 9 * * *"
    assert cron.interval is None
    assert CronSpec("@every 5m").interval == timedelta(minutes=5)
    with pytest.raises(errors.InvalidInput, match="timezone-aware"):
        cron.next_after(datetime(2026, 1, 1))


INVALID_SPECS = [
    "",
    "   ",
    "* * *",
    "61 * * * *",
    "* 24 * * *",
    "1-70 * * * *",
    "*/0 * * * *",
    "* * * * mon-fry",
    "0 0 * * 8",
    "@fortnightly",
    "@reboot",
    "@every",
    "@every 0s",
    "@every 5x",
    "@every -5s",
    "@every 1h 30",
    "every 5m",
]


@pytest.mark.parametrize("spec", INVALID_SPECS)
def test_invalid_spec_is_invalid_input(spec: str) -> None:
    with pytest.raises(errors.InvalidInput):
        CronSpec(spec)
    with pytest.raises(errors.InvalidInput):
        next_ticks(spec, T0)


@pytest.mark.parametrize("spec", ["* * * * * *", "0 */5 * * * *", "0 0 1 1 * 0 2030"])
def test_spec_with_more_than_five_fields_is_invalid_input(spec: str) -> None:
    with pytest.raises(errors.InvalidInput, match="5 fields"):
        CronSpec(spec)


def test_spec_that_never_fires_is_invalid_input_at_the_call() -> None:
    with pytest.raises(errors.InvalidInput):
        CronSpec("0 0 30 2 *")


@pytest.mark.parametrize("tz", ["Mars/Olympus_Mons", "", "../etc/passwd"])
def test_unknown_time_zone_is_invalid_input(tz: str) -> None:
    with pytest.raises(errors.InvalidInput, match="time zone"):
        CronSpec("@daily", tz)


# ------------------------------------------------------------------------------ registration


@pytest.mark.parametrize(
    ("spec", "kwargs"),
    [
        ("61 * * * *", {}),
        ("@every 0s", {}),
        ("@daily", {"tz": "Nowhere/Special"}),
        ("@daily", {"filter": "weekdays"}),
    ],
    ids=["bad-cron", "bad-interval", "bad-tz", "bad-filter"],
)
async def test_schedule_with_bad_input_raises_at_the_call_and_registers_nothing(
    spec: str, kwargs: dict[str, Any]
) -> None:
    # Given a started workflow
    env = Env()
    wf = env.build()
    before = set(wf.states())
    async with wf:
        # When a schedule with bad input is registered, then the call raises
        with pytest.raises(errors.InvalidInput):
            wf.schedule("job", spec, **kwargs)

        # And nothing was registered or triggered, even after a long time
        await settle()
        env.clock.advance(timedelta(days=400))
        await settle()
    assert set(wf.states()) == before
    assert await env.runs() == []


async def test_schedule_with_an_empty_foreign_id_is_invalid_input() -> None:
    wf = Env().build()
    with pytest.raises(errors.InvalidInput):
        wf.schedule("", "@daily")


async def test_same_schedule_twice_is_invalid_input_but_another_spec_is_fine() -> None:
    wf = Env().build()
    wf.schedule("job", "@daily")
    with pytest.raises(errors.InvalidInput, match="already registered"):
        wf.schedule("job", "@daily")
    wf.schedule("job", "@hourly")
    wf.schedule("other", "@daily")
    assert sum("scheduler" in name for name in wf.states()) == 3


async def test_schedule_returns_at_once_without_blocking_the_caller() -> None:
    # Given a started workflow whose clock never moves
    env = Env()
    wf = env.build()
    async with wf:
        # When a schedule is registered
        started = time.monotonic()
        schedule = wf.schedule("job", "@yearly", initial=Job(3))
        elapsed = time.monotonic() - started

        # Then the call is synchronous and returned at once, with the schedule's description
        assert not inspect.isawaitable(schedule)
        assert isinstance(schedule, Schedule)
        assert elapsed < 0.05
        assert (schedule.foreign_id, schedule.spec) == ("job", "@yearly")
        assert (schedule.triggered, schedule.skipped) == (0, 0)

        # And its process runs in the started workflow
        await eventually(
            lambda: any("scheduler" in n and s.name == "RUNNING" for n, s in wf.states().items()),
            what="scheduler process running",
        )


# ------------------------------------------------------------------------------ triggering


async def test_schedule_for_a_foreign_id_without_runs_fires_at_the_first_tick() -> None:
    # Given a schedule every minute for a foreign ID that has never run (clock at 00:00:30)
    env = Env()
    wf = env.build()
    schedule = wf.schedule("job", "* * * * *")
    async with wf:
        # When the clock reaches 00:01:00
        await move_to(env, T0 + timedelta(minutes=1))

        # Then one run is triggered
        await eventually(lambda: count_is(env, 1), timeout=0.5, what="first run")
    assert await env.runs() == [T0 + timedelta(minutes=1)]
    assert schedule.triggered == 1


async def test_schedule_triggers_once_per_tick() -> None:
    # Given a run of "job" at 00:00:30 and a schedule every minute
    env = Env()
    wf = env.build()
    schedule = wf.schedule("job", "* * * * *", initial=Job(7))
    async with wf:
        await env.seed(wf)

        # When the clock passes three ticks, one at a time, stopping also between ticks
        for minute in (1, 2, 3):
            await move_to(env, T0 + timedelta(minutes=minute))
            await eventually(partial(count_is, env, 1 + minute), what=f"run of tick {minute}")
            await eventually(env.all_done, what="scheduled run completed")
            await move_to(env, T0 + timedelta(minutes=minute, seconds=30))
        await settle()

    # Then there is exactly one run per tick, created at the tick, with the initial object
    created = await env.runs()
    assert created[1:] == [T0 + timedelta(minutes=m) for m in (1, 2, 3)]
    assert schedule.triggered == 3
    assert schedule.skipped == 0
    records = await env.store.list("jobs", limit=10)
    assert [r.foreign_id for r in records] == ["job"] * 4
    assert all(wf.to_run(r).object == Job(7) for r in records[1:])


async def test_interval_schedule_in_a_time_zone_triggers_at_its_ticks() -> None:
    # Given a run at 00:00:30 and a schedule at 09:00 New York time
    env = Env()
    wf = env.build()
    wf.schedule("job", "0 9 * * *", tz="America/New_York")
    async with wf:
        await env.seed(wf)

        # When the clock reaches 13:59 UTC, then nothing; at 14:00 UTC (09:00 EST), one run
        await move_to(env, utc(2026, 1, 1, 13, 59))
        await settle()
        assert len(await env.runs()) == 1
        await move_to(env, utc(2026, 1, 1, 14, 0))
        await eventually(lambda: count_is(env, 2), what="09:00 New York run")
    assert (await env.runs())[1] == utc(2026, 1, 1, 14, 0)


async def test_every_schedule_triggers_every_interval() -> None:
    env = Env()
    wf = env.build()
    wf.schedule("job", "@every 90s")
    async with wf:
        await env.seed(wf)  # at 00:00:30
        for n in (1, 2):
            await move_to(env, T0 + timedelta(seconds=30 + 90 * n))
            await eventually(partial(count_is, env, 1 + n), what=f"interval {n}")
            await eventually(env.all_done, what="run completed")
    assert (await env.runs())[1:] == [utc(2026, 1, 1, 0, 2), utc(2026, 1, 1, 0, 3, 30)]


async def test_two_processes_with_the_same_schedule_trigger_once_per_tick() -> None:
    # Given two processes sharing the adapters, both registering the same schedule
    env = Env()
    one, two = env.build(), env.build()
    first = one.schedule("job", "* * * * *")
    second = two.schedule("job", "* * * * *")
    async with one, two:
        await env.seed(one)

        # When three ticks pass
        for minute in (1, 2, 3):
            await move_to(env, T0 + timedelta(minutes=minute))
            await eventually(partial(count_is, env, 1 + minute), what=f"run of tick {minute}")
            await eventually(env.all_done, what="scheduled run completed")
        await settle()

        # Then there was exactly one trigger per tick across both
        assert len(await env.runs()) == 4
        assert first.triggered + second.triggered == 3
        assert first.skipped + second.skipped == 0

        # When the process running the schedule stops, the other takes over
        holder, other, other_wf = (one, second, two) if first.triggered else (two, first, one)
        await holder.stop()
        await move_to(env, T0 + timedelta(minutes=4))
        await eventually(lambda: count_is(env, 5), what="run of tick 4")
        await settle()

        # Then it neither repeats a tick nor skips one
        assert other.triggered == 1
        assert (await env.runs())[1:] == [T0 + timedelta(minutes=m) for m in (1, 2, 3, 4)]
        assert other_wf.running


async def test_after_downtime_exactly_one_catch_up_run_while_running() -> None:
    # Given a schedule every minute whose last run was at 00:01:00
    env = Env()
    wf = env.build()
    schedule = wf.schedule("job", "* * * * *")
    async with wf:
        await env.seed(wf)
        await move_to(env, T0 + timedelta(minutes=1))
        await eventually(lambda: count_is(env, 2), what="run of tick 1")
        await eventually(env.all_done, what="run completed")

        # When ten ticks pass at once (the process was starved or suspended)
        await move_to(env, T0 + timedelta(minutes=11, seconds=20))

        # Then exactly one catch-up run is triggered, now
        await eventually(lambda: count_is(env, 3), what="catch-up run")
        await eventually(env.all_done, what="catch-up completed")
        await settle()
        assert (await env.runs())[2] == T0 + timedelta(minutes=11, seconds=20)
        assert len(await env.runs()) == 3

        # And the next tick is the following whole minute
        await move_to(env, T0 + timedelta(minutes=12))
        await eventually(lambda: count_is(env, 4), what="run of the next tick")
    assert schedule.triggered == 3


async def test_after_downtime_exactly_one_catch_up_run_when_restarted() -> None:
    # Given a schedule that ran at 00:01:00, then the workflow stopped
    env = Env()
    wf = env.build()
    wf.schedule("job", "* * * * *")
    async with wf:
        await env.seed(wf)
        await move_to(env, T0 + timedelta(minutes=1))
        await eventually(lambda: count_is(env, 2), what="run of tick 1")
        await eventually(env.all_done, what="run completed")

    # When it starts again an hour later (60 missed ticks)
    env.clock.set(T0 + timedelta(hours=1, minutes=1, seconds=10))
    async with wf:
        # Then exactly one catch-up run is triggered at once, and no more
        await eventually(lambda: count_is(env, 3), what="catch-up run")
        await eventually(env.all_done, what="catch-up completed")
        await settle()
        assert len(await env.runs()) == 3
    assert (await env.runs())[2] == T0 + timedelta(hours=1, minutes=1, seconds=10)


async def test_filter_skips_ticks() -> None:
    # Given a schedule every minute whose (async) filter lets only even minutes through
    env = Env()
    wf = env.build()
    seen: list[datetime] = []

    async def even_minutes(tick: datetime) -> bool:
        seen.append(tick)
        return tick.minute % 2 == 0

    schedule = wf.schedule("job", "* * * * *", filter=even_minutes)
    async with wf:
        await env.seed(wf)

        # When four ticks pass
        for minute in (1, 2, 3, 4):
            await move_to(env, T0 + timedelta(minutes=minute))
            await eventually(partial(_len_is, seen, minute), what=f"tick {minute} filtered")
            await eventually(env.all_done, what="runs completed")
        await settle()

    # Then the filter saw each tick once and only the even ones triggered a run
    assert seen == [T0 + timedelta(minutes=m) for m in (1, 2, 3, 4)]
    assert (await env.runs())[1:] == [T0 + timedelta(minutes=2), T0 + timedelta(minutes=4)]
    assert (schedule.triggered, schedule.skipped) == (2, 2)


async def test_sync_filter_works_too() -> None:
    env = Env()
    wf = env.build()
    schedule = wf.schedule("job", "* * * * *", filter=lambda tick: False)
    async with wf:
        await env.seed(wf)
        await move_to(env, T0 + timedelta(minutes=1))
        await eventually(lambda: schedule.skipped == 1, what="tick skipped")
    assert len(await env.runs()) == 1


async def test_tick_while_the_previous_run_is_unfinished_is_skipped_not_queued() -> None:
    # Given a schedule every minute and a step that holds the run until released
    env = Env()
    release = asyncio.Event()

    async def slow(run: Run[Job, S]) -> S:
        await release.wait()
        return S.DONE

    wf = env.build(builder(slow))
    schedule = wf.schedule("job", "* * * * *")
    async with wf:
        await wf.trigger("job")  # at 00:00:30, held by the step

        # When three ticks pass while that run is unfinished
        for minute in (1, 2, 3):
            await move_to(env, T0 + timedelta(minutes=minute))
            await eventually(partial(_skipped_is, schedule, minute), what=f"tick {minute}")

        # Then each was skipped; and once the run finishes, no backlog is triggered
        assert len(await env.runs()) == 1
        release.set()
        await eventually(env.all_done, what="run completed")
        await settle()
        assert len(await env.runs()) == 1

        # And the next tick triggers normally
        await move_to(env, T0 + timedelta(minutes=4))
        await eventually(lambda: count_is(env, 2), what="run of tick 4")
    assert (schedule.triggered, schedule.skipped) == (1, 3)


async def test_schedule_added_after_start_runs() -> None:
    env = Env()
    wf = env.build()
    async with wf:
        await env.seed(wf)
        schedule = wf.schedule("job", "* * * * *")
        await move_to(env, T0 + timedelta(minutes=1))
        await eventually(lambda: count_is(env, 2), what="run of tick 1")
    assert schedule.triggered == 1
