"""Retention: events every consumer has passed, and finished timers, are pruned after a period.

The retention process runs under one role per workflow, on the workflow's clock, so these tests
move a FakeClock past the period instead of waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from helpers import (
    ClockedAdapters,
    Order,
    Status,
    advance_until,
    clocked_adapters,
    eventually,
    settle,
)
from statestream import Builder, Event, Run, Workflow, after, errors
from statestream.adapters.memory import (
    MemoryTimeoutStore,
)
from statestream.testing import FakeClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TOPICS = ["orders-1", "orders-2", "orders-3", "orders-run-state-change", "orders-delete"]


class CountingTimeouts(MemoryTimeoutStore):
    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.pruned: list[tuple[datetime, int]] = []

    async def prune(self, workflow_name: str, before: datetime) -> int:
        n = await super().prune(workflow_name, before)
        self.pruned.append((before, n))
        return n


class Env(ClockedAdapters):
    timeouts: CountingTimeouts


@pytest.fixture(params=["memory", "sqlite"])
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    async with clocked_adapters(request.param, Env, memory_timeouts=CountingTimeouts) as e:
        yield e


async def pay(run: Run[Order, Status]) -> Status:
    return Status.PAID


class Ship:
    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, run: Run[Order, Status]) -> Status:
        await self.gate.wait()
        return Status.SHIPPED


def builder(ship: Ship | None = None, **ship_options: Any) -> Builder[Order, Status]:
    b = Builder("orders", Order, Status)
    b.defaults(error_backoff=0.01, max_error_backoff=0.02, polling_frequency=0.01)
    b.outbox(polling_frequency=0.01, error_backoff=0.01)
    b.add_step(Status.CREATED, pay, Status.PAID)
    b.add_step(Status.PAID, ship or Ship(), Status.SHIPPED, **ship_options)
    return b


def build(env: Env, b: Builder[Order, Status], **kw: Any) -> Workflow[Order, Status]:
    kw.setdefault("retention", timedelta(days=7))
    kw.setdefault("retention_interval", 3600)
    return b.build(
        env.streamer, env.store, env.scheduler, timeout_store=env.timeouts, clock=env.clock, **kw
    )


async def retained(streamer: Any, topics: list[str] = TOPICS) -> list[Event]:
    """Every event still stored on the topics (read under a name with no committed position)."""
    events: list[Event] = []
    for topic in topics:
        receiver = await streamer.receiver(topic, "test-inspector")
        try:
            while True:
                try:
                    batch = await asyncio.wait_for(receiver.recv(1000), 0.1)
                except TimeoutError:
                    break
                events += batch
        finally:
            await receiver.close()
    return events


async def test_events_of_completed_runs_are_pruned_after_the_retention_period(env: Env) -> None:
    # Given five completed runs, and a retention of 7 days checked hourly
    wf = build(env, builder())
    async with wf:
        ids = [await wf.trigger(f"o-{i}") for i in range(5)]
        for i, run_id in enumerate(ids):
            await wf.wait_for(f"o-{i}", run_id, Status.SHIPPED, timeout=5)
        await settle()
        assert {e.key for e in await retained(env.streamer)} >= set(ids)

        # When six days pass, then nothing is pruned yet
        env.clock.advance(timedelta(days=6))
        await settle()
        assert {e.key for e in await retained(env.streamer)} >= set(ids)

        # When the period has passed, hour by hour (a streamer may commit positions lazily, so
        # an event becomes prunable a little after its acknowledgement)
        env.clock.advance(timedelta(days=1))

        # Then no event of the completed runs is left on any topic of the workflow
        await advance_until(
            env.clock,
            lambda: _none_of(env.streamer, ids),
            step=3600,
            what="events of the completed runs pruned",
        )


async def _none_of(streamer: Any, ids: list[str]) -> bool:
    return not {e.key for e in await retained(streamer)} & set(ids)


async def test_retention_keeps_an_event_a_consumer_has_not_acknowledged(env: Env) -> None:
    # Given a run held in the ship step (its PAID event is not acknowledged)
    ship = Ship()
    ship.gate.clear()
    wf = build(env, builder(ship))
    async with wf:
        run_id = await wf.trigger("o-1")
        await wf.wait_for("o-1", run_id, Status.PAID, timeout=5)
        await settle()

        # When the retention period passes several times over
        for _ in range(3):
            env.clock.advance(timedelta(days=8))
            await settle()
        await wf.stop(grace=0.01)  # the held step is cancelled

    # Then the event is still there, and a restarted worker finishes the run
    assert run_id in {e.key for e in await retained(env.streamer, ["orders-2"])}
    ship.gate.set()
    wf = build(env, builder(ship))
    async with wf:
        await wf.wait_for("o-1", run_id, Status.SHIPPED, timeout=5)


async def test_finished_timers_are_pruned_after_the_retention_period() -> None:
    async with clocked_adapters("memory", Env, memory_timeouts=CountingTimeouts) as env:

        async def refund(run: Run[Order, Status], now: datetime) -> Status:
            return Status.REFUNDED

        b = Builder("orders", Order, Status)
        b.defaults(error_backoff=0.01, max_error_backoff=0.02, polling_frequency=0.01)
        b.outbox(polling_frequency=0.01)
        b.add_step(Status.CREATED, pay, Status.PAID)
        b.add_timeout(Status.PAID, after(60), refund, Status.REFUNDED, polling_frequency=0.01)
        wf = build(env, b)
        async with wf:
            run_id = await wf.trigger("o-1")
            await wf.wait_for("o-1", run_id, Status.PAID, timeout=5)
            await eventually(lambda: _has_timers(env.timeouts), what="timer stored")
            env.clock.advance(61)
            await wf.wait_for("o-1", run_id, Status.REFUNDED, timeout=5)

            env.clock.advance(timedelta(days=8))
            await eventually(
                lambda: any(n for _, n in env.timeouts.pruned), what="the finished timer pruned"
            )
        before, _ = env.timeouts.pruned[-1]
        assert before == env.clock.now() - timedelta(days=7)


async def _has_timers(timeouts: MemoryTimeoutStore) -> bool:
    return bool(await timeouts.list("orders"))


async def test_retention_none_runs_no_retention_process() -> None:
    async with clocked_adapters("memory", Env, memory_timeouts=CountingTimeouts) as env:
        assert "retention" in build(env, builder()).states()
        assert "retention" not in build(env, builder(), retention=None).states()


@pytest.mark.parametrize(
    "options",
    [
        {"retention": 0},
        {"retention": -1},
        {"retention": "7 days"},
        {"retention": timedelta(0)},
        {"retention_interval": 0},
        {"retention_interval": None},
        {"timeout_claim": 0},
        {"timeout_claim": float("inf")},
    ],
)
async def test_bad_retention_and_claim_options_are_refused_at_build(
    options: dict[str, Any],
) -> None:
    async with clocked_adapters("memory", Env, memory_timeouts=CountingTimeouts) as env:
        with pytest.raises(errors.ConfigurationError):
            build(env, builder(), **options)


async def test_retention_keeps_working_after_a_parallel_count_change() -> None:
    # (the old shard's consumer name keeps a committed position that no process advances any
    # more: retention forgets it once it is older than the retention period)
    async with clocked_adapters("memory", Env, memory_timeouts=CountingTimeouts) as env:
        # Given completed runs under ship on one shard, then more under three shards
        for n, prefix in ((1, "a"), (3, "b")):
            wf = build(env, builder(parallel_count=n))
            async with wf:
                ids = [await wf.trigger(f"{prefix}-{i}") for i in range(3)]
                for i, run_id in enumerate(ids):
                    await wf.wait_for(f"{prefix}-{i}", run_id, Status.SHIPPED, timeout=5)
                await settle()

                # When the retention period passes
                if n == 3:
                    for _ in range(5):
                        env.clock.advance(timedelta(days=8))
                        await settle()

        # Then the events of the runs completed under three shards are pruned too
        assert not {e.key for e in await retained(env.streamer)} & set(ids)
