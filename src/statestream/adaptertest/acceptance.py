"""End-to-end workflows over one set of adapters: the same cases run for every backend.

The fixture ``adapters`` gives an :class:`AdapterSet`. Two :class:`~statestream.Workflow`
instances built over the same set stand for two worker processes sharing the backends.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from .. import Builder, CallbackOutcome, Run, RunState, Workflow, after
from .._core.clock import FakeClock
from .._core.protocols import EventStreamer, RecordStore, RoleScheduler, TimeoutStore
from ._util import unique

__all__ = ["AdapterSet", "WorkflowContract"]


@dataclass
class AdapterSet:
    """The four adapters a workflow runs on."""

    streamer: EventStreamer
    store: RecordStore
    scheduler: RoleScheduler
    timeout_store: TimeoutStore


class Stage(enum.IntEnum):
    STARTED = 1
    SHARDED = 2
    COOLING_DOWN = 3
    CONFIRMING = 4
    DONE = 5
    REJECTED = 6


@dataclass
class Item:
    id: str = ""
    steps: list[str] = field(default_factory=list)


@dataclass
class Confirmation:
    ok: bool


async def _eventually(condition: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


class WorkflowContract:
    """Acceptance cases: sharded steps, a timeout, a callback, hooks, two processes."""

    def _builder(self, name: str, calls: Counter[tuple[str, str]]) -> Builder[Item, Stage]:
        async def start(run: Run[Item, Stage]) -> Stage:
            calls[("start", run.foreign_id)] += 1
            run.object.steps.append("start")
            return Stage.SHARDED

        async def sharded(run: Run[Item, Stage]) -> Stage:
            calls[("sharded", run.foreign_id)] += 1
            run.object.steps.append("sharded")
            return Stage.COOLING_DOWN

        async def cooled(run: Run[Item, Stage], now: object) -> Stage:
            calls[("cooled", run.foreign_id)] += 1
            run.object.steps.append("cooled")
            return Stage.CONFIRMING

        def confirm(run: Run[Item, Stage], payload: Confirmation) -> Stage:
            run.object.steps.append("confirmed")
            return Stage.DONE if payload.ok else Stage.REJECTED

        b = Builder(name, Item, Stage)
        b.defaults(error_backoff=0.01, max_error_backoff=0.05, polling_frequency=0.05)
        b.add_step(Stage.STARTED, start, Stage.SHARDED, parallel_count=5)
        b.add_step(Stage.SHARDED, sharded, Stage.COOLING_DOWN, parallel_count=5)
        b.add_timeout(
            Stage.COOLING_DOWN,
            after(timedelta(hours=1)),
            cooled,
            Stage.CONFIRMING,
            polling_frequency=0.05,
        )
        b.add_callback(
            Stage.CONFIRMING, confirm, Stage.DONE, Stage.REJECTED, payload_type=Confirmation
        )
        return b

    def _build(
        self, b: Builder[Item, Stage], adapters: AdapterSet, clock: FakeClock
    ) -> Workflow[Item, Stage]:
        return b.build(
            adapters.streamer,
            adapters.store,
            adapters.scheduler,
            timeout_store=adapters.timeout_store,
            clock=clock,
            pause_retry=None,
        )

    @pytest.mark.asyncio
    async def test_sharded_steps_timeout_and_callback(self, adapters: AdapterSet) -> None:
        # Given a workflow with two 5-shard steps, a one-hour timeout and a callback
        calls: Counter[tuple[str, str]] = Counter()
        clock = FakeClock()
        completed: list[str] = []
        b = self._builder(unique("acceptance"), calls)

        async def on_complete(run: Run[Item, Stage]) -> None:
            completed.append(run.foreign_id)

        b.on_complete(on_complete)
        wf = self._build(b, adapters, clock)
        ids = [f"item-{i}" for i in range(20)]
        async with wf:
            # When 20 runs start and the clock passes the cool-down
            runs = {fid: await wf.trigger(fid, initial=Item(fid)) for fid in ids}
            for fid, run_id in runs.items():
                await wf.wait_for(fid, run_id, Stage.COOLING_DOWN, timeout=10)
            for _ in range(200):
                if len(await adapters.timeout_store.list(wf.name)) == len(ids):
                    break
                await asyncio.sleep(0.01)
            clock.advance(timedelta(hours=1, seconds=1))
            for fid, run_id in runs.items():
                await wf.wait_for(fid, run_id, Stage.CONFIRMING, timeout=10)
            # and each run gets its confirmation
            results = [await wf.callback(fid, Stage.CONFIRMING, b'{"ok": true}') for fid in ids]
            finals = [await wf.wait_for(fid, runs[fid], Stage.DONE, timeout=10) for fid in ids]
            await _eventually(lambda: len(completed) >= len(ids))
        # Then every run completed, each step ran once per run, the callback applied
        assert all(r.outcome is CallbackOutcome.APPLIED for r in results)
        for run in finals:
            assert run.run_state is RunState.COMPLETED
            assert run.object.steps == ["start", "sharded", "cooled", "confirmed"]
        assert set(calls.values()) == {1}
        assert len(calls) == 3 * len(ids)
        assert sorted(set(completed)) == sorted(ids)

    @pytest.mark.asyncio
    async def test_two_processes_handle_each_step_once(self, adapters: AdapterSet) -> None:
        # Given two workflow instances over the same adapters (two worker processes)
        calls: Counter[tuple[str, str]] = Counter()
        clock = FakeClock()
        name = unique("two-processes")
        first = self._build(self._builder(name, calls), adapters, clock)
        second = self._build(self._builder(name, calls), adapters, clock)
        ids = [f"item-{i}" for i in range(30)]
        async with first, second:
            # When runs are triggered from both
            runs = {}
            for i, fid in enumerate(ids):
                wf = first if i % 2 else second
                runs[fid] = await wf.trigger(fid, initial=Item(fid))
            for fid, run_id in runs.items():
                await first.wait_for(fid, run_id, Stage.COOLING_DOWN, timeout=10)
        # Then each step ran exactly once per run
        assert len(calls) == 2 * len(ids)
        assert set(calls.values()) == {1}

    @pytest.mark.asyncio
    async def test_pause_resume_and_cancel(self, adapters: AdapterSet) -> None:
        # Given a run that is paused before any worker runs
        calls: Counter[tuple[str, str]] = Counter()
        clock = FakeClock()
        wf = self._build(self._builder(unique("controls"), calls), adapters, clock)
        run_id = await wf.trigger("item", initial=Item("item"))
        paused = await wf.pause(run_id, "hold on")
        assert paused.run_state is RunState.PAUSED
        async with wf:
            await asyncio.sleep(0.1)
            # Then no step ran while it was paused
            assert calls[("start", "item")] == 0
            # When it is resumed, it moves on
            await wf.resume(run_id)
            await wf.wait_for("item", run_id, Stage.COOLING_DOWN, timeout=10)
            # and a cancelled run stays cancelled
            cancelled = await wf.cancel(run_id, "changed my mind")
        assert cancelled.run_state is RunState.CANCELLED
        assert (await wf.get(run_id)).run_state_reason == "changed my mind"
