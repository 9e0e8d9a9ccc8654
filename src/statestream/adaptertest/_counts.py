"""The run-counting part of ``RecordStoreContract`` (see :mod:`.record_store`), for stores with
the optional :class:`~statestream.RunCounter` capability; skipped for the others."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import timedelta

import pytest

from .. import errors
from .._core.protocols import RecordStore, RunCounter
from .._core.records import Header, Message, OutboxEvent, Record, RunCounts, topic_for
from .._core.runstate import RunState
from ._util import now, unique

__all__ = ["RunCountsContract"]


def _run(workflow_name: str, status: int, run_state: RunState) -> Record:
    at = now()
    return Record(workflow_name, unique("fid"), str(uuid.uuid4()), run_state, status, b"{}", at, at)


def _event(record: Record) -> OutboxEvent:
    headers = {Header.RUN_ID.value: record.run_id, Header.RECORD_VERSION.value: "1"}
    message = Message(record.run_id, record.status, headers, record.updated_at)
    return OutboxEvent(
        f"outbox-id-{uuid.uuid4()}", record.workflow_name, topic_for(record), message
    )


def _next(record: Record, status: int, run_state: RunState) -> Record:
    return dataclasses.replace(
        record,
        status=status,
        run_state=run_state,
        version=record.version + 1,
        updated_at=record.updated_at + timedelta(seconds=1),
    )


def _counter(store: RecordStore) -> RunCounter:
    if not isinstance(store, RunCounter):
        pytest.skip("the store does not count runs (RunCounter is an optional capability)")
    return store


class RunCountsContract:
    """``count_runs``: the counts of the runs as stored, by status and by run state."""

    @pytest.mark.asyncio
    async def test_count_runs_by_status_and_by_run_state(self, store: RecordStore) -> None:
        counter = _counter(store)
        # Given runs of a workflow at three statuses in four run states, and another workflow
        wf, other = unique("wf"), unique("wf")
        states = [RunState.RUNNING, RunState.PAUSED, RunState.COMPLETED, RunState.CANCELLED]
        mine = [_run(wf, i % 3 + 1, states[i % 4]) for i in range(23)]
        for record in [*mine, _run(other, 1, RunState.RUNNING), _run(other, 9, RunState.PAUSED)]:
            await store.create(record, _event(record))

        counts = await counter.count_runs(wf)

        # Then the counts are those of the runs, keyed by int status and RunState
        assert counts == RunCounts.of(mine)
        assert counts.total == 23
        assert dict(counts.statuses) == {1: 8, 2: 8, 3: 7}
        assert dict(counts.run_states) == {
            RunState.RUNNING: 6,
            RunState.PAUSED: 6,
            RunState.COMPLETED: 6,
            RunState.CANCELLED: 5,
        }
        assert all(isinstance(s, RunState) for s in counts.run_states)
        assert dict((await counter.count_runs(other)).statuses) == {1: 1, 9: 1}
        assert await counter.count_runs(unique("wf")) == RunCounts()

    @pytest.mark.asyncio
    async def test_count_runs_follows_updates_and_ignores_refused_ones(
        self, store: RecordStore
    ) -> None:
        counter = _counter(store)
        wf = unique("wf")
        first, second = _run(wf, 1, RunState.INITIATED), _run(wf, 1, RunState.INITIATED)
        for record in (first, second):
            await store.create(record, _event(record))
        moved = _next(first, 2, RunState.RUNNING)
        await store.update(moved, _event(moved))
        paused = _next(second, 1, RunState.PAUSED)
        await store.update(paused, _event(paused))

        counts = await counter.count_runs(wf)
        assert dict(counts.statuses) == {1: 1, 2: 1}
        assert dict(counts.run_states) == {RunState.RUNNING: 1, RunState.PAUSED: 1}

        # A compare-and-set that loses changes no count; an emptied status or state is left out
        stale = _next(first, 3, RunState.COMPLETED)
        with pytest.raises(errors.VersionConflict):
            await store.update(stale, _event(stale))
        done = _next(moved, 3, RunState.COMPLETED)
        await store.update(done, _event(done))
        counts = await counter.count_runs(wf)
        assert dict(counts.statuses) == {1: 1, 3: 1}
        assert dict(counts.run_states) == {RunState.PAUSED: 1, RunState.COMPLETED: 1}

    @pytest.mark.asyncio
    async def test_count_runs_sees_concurrent_writes_once(self, store: RecordStore) -> None:
        counter = _counter(store)
        wf = unique("wf")
        runs = [_run(wf, 1, RunState.RUNNING) for _ in range(20)]
        for record in runs:
            await store.create(record, _event(record))
        # Two writers race for each run's next version: one wins, the count moves once
        tries = [_next(r, 2, RunState.COMPLETED) for r in runs for _ in range(2)]
        results = await asyncio.gather(
            *(store.update(t, _event(t)) for t in tries), return_exceptions=True
        )
        assert sum(r is None for r in results) == 20
        counts = await counter.count_runs(wf)
        assert dict(counts.statuses) == {2: 20}
        assert dict(counts.run_states) == {RunState.COMPLETED: 20}
