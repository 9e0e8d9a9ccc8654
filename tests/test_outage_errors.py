"""A backend outage is not the run's fault: failed writes while the store is unreachable do not
count towards ``pause_after_errors``, so runs in flight are not paused by a long outage."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from helpers import eventually
from statestream import Builder, Run, RunState
from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler, MemoryStreamer
from statestream.errors import AdapterConnectionError


class S(IntEnum):
    START = 1
    DONE = 2


@dataclass
class Task:
    n: int = 0


class FlakyStore(MemoryRecordStore):
    """Refuses the first ``outage`` updates as an unreachable server would."""

    def __init__(self, outage: int) -> None:
        super().__init__(keep_snapshots=True)
        self.outage = outage

    async def update(self, record: Any, event: Any) -> None:
        if self.outage > 0:
            self.outage -= 1
            raise AdapterConnectionError("test server at 127.0.0.1:1 is unreachable")
        await super().update(record, event)


async def test_an_outage_longer_than_the_error_limit_pauses_no_run() -> None:
    async def step(run: Run[Task, S]) -> S:
        return S.DONE

    b = Builder("outage", Task, S)
    b.defaults(error_backoff=0.001, max_error_backoff=0.002, polling_frequency=0.01)
    b.add_step(S.START, step, S.DONE, pause_after_errors=2)
    store = FlakyStore(outage=6)  # three times the error limit
    wf = b.build(MemoryStreamer(), store, MemoryRoleScheduler())
    await wf.start()
    try:
        run_id = await wf.trigger("t-1", initial=Task())
        run = await wf.wait_for("t-1", run_id, S.DONE, timeout=10)
        assert run.status == S.DONE
        assert store.outage == 0
        states = [r.run_state for r in store.snapshots(run_id)]
        assert RunState.PAUSED not in states, states
    finally:
        await wf.stop()


async def test_an_ordinary_error_still_counts_towards_the_limit() -> None:
    async def step(run: Run[Task, S]) -> S:
        raise RuntimeError("boom")

    b = Builder("failing", Task, S)
    b.defaults(error_backoff=0.001, max_error_backoff=0.002, polling_frequency=0.01)
    b.add_step(S.START, step, S.DONE, pause_after_errors=2)
    store = MemoryRecordStore()
    wf = b.build(MemoryStreamer(), store, MemoryRoleScheduler())
    await wf.start()
    try:
        run_id = await wf.trigger("t-2", initial=Task())

        async def paused() -> bool:
            return (await store.lookup(run_id)).run_state == RunState.PAUSED

        await eventually(paused)
    finally:
        await wf.stop()
