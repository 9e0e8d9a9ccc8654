"""A role handed over under load repeats no step (issue 9): the consumer handing its role over
finishes the events in hand and acknowledges what it finished, and the next holder passes over
the events whose run has moved past them, so that with a clean handover (no kill, no lost
lease) every step's side effect happens once.

Two workflow instances in this process stand for two workers on one database (each with its own
adapters, so its own database handle, role scheduler and membership): the first one runs alone
while runs stream in, the second joins (the first hands it its share of the roles while events
are in flight), and then the first stops (the second takes the rest). Parametrised over SQLite
and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import pytest

import backends
from statestream import Builder, Event, NullObserver, Run, RunState, SaveAndRepeat, Workflow
from statestream._engine import share
from statestream._engine.share import Kind, deal

pytestmark = pytest.mark.timeout(90)

RUNS = 500
#: A short member ttl: the second instance joins the deal within a few beats. Long leases: a
#: handover releases them (no waiting for an expiry), and a loaded machine does not lose them.
OPTIONS = {"ttl": 10.0, "poll_interval": 0.05, "member_ttl": 1.0}


class Status(IntEnum):
    STARTED = 1
    RESERVED = 2
    DONE = 3


@dataclass
class Job:
    rounds: int = 0


class Effects:
    """Every step's side effect, as ``(run_id, step, object round, instance)``."""

    def __init__(self) -> None:
        self.done: list[tuple[str, str, int, str]] = []
        self.failed: set[str] = set()

    def counts(self) -> Counter[tuple[str, str, int]]:
        return Counter((run, step, n) for run, step, n, _ in self.done)


class Stale(NullObserver):
    """The events a consumer took and passed over because their run had moved past them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Event]] = []

    def event_skipped(self, workflow: str, process: str, event: Event | None, reason: str) -> None:
        if event is not None and "version" in reason:
            self.events.append((process, event))


def build(
    adapters: backends.AdapterSet, effects: Effects, name: str, observer: Stale
) -> Workflow[Job, Status]:
    b: Builder[Job, Status] = Builder("handover", Job, Status)
    b.defaults(polling_frequency=0.05, error_backoff=0.05, max_error_backoff=0.2, parallel_count=2)
    b.outbox(polling_frequency=0.05, error_backoff=0.05)

    async def reserve(run: Run[Job, Status]) -> Status | SaveAndRepeat:
        # Steps of different lengths finish out of order; a run's second round on the same
        # status queues behind its first in the dispatcher (one run's events in order).
        effects.done.append((run.run_id, "reserve", run.object.rounds, name))
        await asyncio.sleep(random.uniform(0.0, 0.03))
        if run.object.rounds == 0:
            run.object.rounds = 1
            return SaveAndRepeat()
        return Status.RESERVED

    async def ship(run: Run[Job, Status]) -> Status:
        # Some runs' first attempt fails (before any effect): their events back off while the
        # events after them finish, so a handover finds finished events past an unfinished one.
        if int(run.foreign_id.split("-")[1]) % 5 == 0 and run.run_id not in effects.failed:
            effects.failed.add(run.run_id)
            raise RuntimeError("a transient failure")
        effects.done.append((run.run_id, "ship", run.object.rounds, name))
        await asyncio.sleep(random.uniform(0.0, 0.03))
        return Status.DONE

    b.add_step(Status.STARTED, reserve, Status.RESERVED)
    b.add_step(Status.RESERVED, ship, Status.DONE, error_backoff=0.3, max_error_backoff=0.3)
    return b.build(
        adapters.streamer,
        adapters.store,
        adapters.scheduler,
        timeout_store=adapters.timeouts,
        observer=observer,
    )


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, str, str]]:
    name: str = request.param
    backends.require(name)
    location, prefix = backends.location_for(name, tmp_path), backends.new_prefix()
    try:
        yield name, location, prefix
    finally:
        await backends.drop_prefixed(name, location, prefix)


async def until(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def names_for_the_deal(kinds: dict[str, Kind], first: str) -> str:
    """A member name for the second instance with which the deal gives it the first step
    (reserve) and the first instance the second (ship): so the second writes the versions
    that the first's ship handles, and then takes ship over when the first stops."""
    reserve = next(r for r in kinds if f"-{int(Status.STARTED)}-consumer-" in r)
    ship = next(r for r in kinds if f"-{int(Status.RESERVED)}-consumer-" in r)
    for i in itertools.count():
        second = f"second-{i}"
        dealt = deal(kinds, [first, second])
        if dealt[reserve] == second and dealt[ship] == first:
            return second
    raise AssertionError("unreachable")


async def test_a_clean_handover_under_load_repeats_no_step(
    backend: tuple[str, str, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="statestream")
    name, location, prefix = backend
    effects = Effects()
    stale = Stale()
    first_set = backends.open_set(name, location, prefix, **OPTIONS)
    second_set = backends.open_set(name, location, prefix, **OPTIONS)
    first = build(first_set, effects, "first", stale)
    second = build(second_set, effects, "second", stale)
    try:
        # (The members' names fix the deal: see names_for_the_deal.)
        monkeypatch.setattr(share, "member_name", lambda: "first")
        await first.start()
        second_name = names_for_the_deal(first._supervisor._role_kinds(), "first")
        monkeypatch.setattr(share, "member_name", lambda: second_name)
        runs: list[str] = []

        async def trigger() -> None:
            for i in range(RUNS):
                runs.append(await first.trigger(f"job-{i}"))
                if i % 10 == 9:
                    await asyncio.sleep(0.05)  # a steady stream, not one burst

        # Given the first instance running alone while runs stream in
        triggering = asyncio.ensure_future(trigger())
        await until(lambda: len(runs) >= RUNS // 5, 30, "the first runs")
        # When a second instance joins: the first hands roles over with events in flight
        await second.start()
        await until(lambda: "handing role" in caplog.text, 30, "a handover")
        await until(lambda: len(runs) >= RUNS * 3 // 5, 30, "more runs")
        assert not triggering.done(), "the runs stopped coming before the handover"
        # And the first one stops while they still stream in (a clean stop, no lost lease)
        await first.stop()
        assert not triggering.done(), "the runs stopped coming before the stop"
        await triggering
        pending = set(runs)

        async def complete() -> bool:
            for run_id in list(pending):
                if (await second.store.lookup(run_id)).run_state is RunState.COMPLETED:
                    pending.discard(run_id)
            return not pending

        deadline = time.monotonic() + 45
        while not await complete():
            assert time.monotonic() < deadline, f"{len(pending)} runs did not complete"
            await asyncio.sleep(0.1)
    finally:
        await first.stop()
        await second.stop()
        await first_set.close()
        await second_set.close()

    # (A lease lost to a stalled event loop would make this no clean handover: the leases are
    # long, only the membership is short, so that the roles move at once.)
    assert "lost role" not in caplog.text
    assert "passed its deadline" not in caplog.text
    # Then every step's side effect happened exactly once
    counts = effects.counts()
    expected = {(r, "reserve", 0) for r in runs} | {(r, "reserve", 1) for r in runs}
    expected |= {(r, "ship", 1) for r in runs}
    assert set(counts) == expected
    repeated = {k: n for k, n in counts.items() if n > 1}
    assert not repeated, f"{len(repeated)} steps ran more than once: {list(repeated.items())[:5]}"
    by = Counter(e[3] for e in effects.done)
    assert by["first"]
    assert by["second"]
    # (The events past one still backing off at a handover are read again by the next holder
    # and passed over: how many, for the report.)
    print(f"effects by instance: {dict(by)}; stale events passed over: {len(stale.events)}")
