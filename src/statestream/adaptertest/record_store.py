"""``RecordStoreContract``: the conformance suite for :class:`~statestream.RecordStore`.

Mirrors luno/workflow's ``adaptertest.RunRecordStoreTest`` and adds the atomicity the engine
relies on: ``create`` refuses a second unfinished run per foreign ID, and ``update`` is a
compare-and-set on the version, both under concurrency. Also keyset paging (``list(after=...)``)
and parked events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import pytest

from .. import errors
from .._core.protocols import RecordStore
from .._core.records import (
    Header,
    Message,
    Order,
    OutboxEvent,
    Record,
    RecordFilter,
    topic_for,
)
from .._core.runstate import RunState
from ._counts import RunCountsContract
from ._parked import ParkedEventsContract
from ._scan import ScanListContract
from ._timed import TimeRangeContract
from ._util import assert_close, now, unique

__all__ = ["RecordStoreContract"]

_UNFINISHED = [RunState.INITIATED, RunState.RUNNING, RunState.PAUSED]


def _record(
    workflow_name: str,
    foreign_id: str,
    *,
    status: int = 1,
    run_state: RunState = RunState.INITIATED,
    created_at: datetime | None = None,
) -> Record:
    at = created_at if created_at is not None else now()
    return Record(
        workflow_name=workflow_name,
        foreign_id=foreign_id,
        run_id=str(uuid.uuid4()),
        run_state=run_state,
        status=status,
        object=b'{"amount": 42, "note": "\\u00e9\\u0000"}',
        created_at=at,
        updated_at=at,
        version=1,
        run_state_reason="",
        status_description="",
    )


def _next(record: Record, **changes: object) -> Record:
    """The next version of ``record``, as the engine would write it."""
    return dataclasses.replace(
        record,
        version=record.version + 1,
        updated_at=record.updated_at + timedelta(seconds=1),
        **changes,  # type: ignore[arg-type]
    )


def _event(record: Record) -> OutboxEvent:
    topic = topic_for(record)
    headers = {
        Header.WORKFLOW_NAME.value: record.workflow_name,
        Header.FOREIGN_ID.value: record.foreign_id,
        Header.RUN_ID.value: record.run_id,
        Header.TOPIC.value: topic,
        Header.RUN_STATE.value: str(int(record.run_state)),
        Header.RECORD_VERSION.value: str(record.version),
    }
    return OutboxEvent(
        id=f"outbox-id-{uuid.uuid4()}",
        workflow_name=record.workflow_name,
        topic=topic,
        message=Message(
            key=record.run_id, type=record.status, headers=headers, created_at=record.updated_at
        ),
    )


def _assert_same(actual: Record, expected: Record) -> None:
    assert actual.workflow_name == expected.workflow_name
    assert actual.foreign_id == expected.foreign_id
    assert actual.run_id == expected.run_id
    assert isinstance(actual.run_state, RunState), f"run_state is {type(actual.run_state)}"
    assert actual.run_state == expected.run_state
    assert actual.status == expected.status
    assert isinstance(actual.object, bytes), f"object is {type(actual.object)}"
    assert actual.object == expected.object
    assert actual.version == expected.version
    assert actual.run_state_reason == expected.run_state_reason
    assert actual.status_description == expected.status_description
    assert_close(actual.created_at, expected.created_at, "created_at")
    assert_close(actual.updated_at, expected.updated_at, "updated_at")


def _assert_same_event(actual: OutboxEvent, expected: OutboxEvent) -> None:
    assert actual.id == expected.id
    assert actual.workflow_name == expected.workflow_name
    assert actual.topic == expected.topic
    assert actual.message.key == expected.message.key
    assert actual.message.type == expected.message.type
    assert dict(actual.message.headers) == dict(expected.message.headers)
    assert_close(actual.created_at, expected.created_at, "outbox created_at")


def _ids(rows: Sequence[Record]) -> list[str]:
    return [r.run_id for r in rows]


class RecordStoreContract(
    ParkedEventsContract, RunCountsContract, ScanListContract, TimeRangeContract
):
    """Conformance tests for a :class:`~statestream.RecordStore`.

    Subclass it as ``TestXxxRecordStore`` and define a ``store`` fixture that gives the store
    under test. The store must persist the timestamps of the records it is given (to within a
    second).
    """

    async def _create(self, store: RecordStore, record: Record) -> OutboxEvent:
        event = _event(record)
        await store.create(record, event)
        return event

    async def _update(self, store: RecordStore, record: Record) -> OutboxEvent:
        event = _event(record)
        await store.update(record, event)
        return event

    # -- lookup / latest -----------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_lookup_returns_every_field(self, store: RecordStore) -> None:
        record = dataclasses.replace(
            _record(unique("wf"), "Andrew Wormald"),
            run_state_reason="because",
            status_description="Started",
        )
        await self._create(store, record)

        _assert_same(await store.lookup(record.run_id), record)

    @pytest.mark.asyncio
    async def test_lookup_of_missing_run_raises_record_not_found(self, store: RecordStore) -> None:
        with pytest.raises(errors.RecordNotFound):
            await store.lookup(str(uuid.uuid4()))

    @pytest.mark.asyncio
    async def test_latest_follows_updates(self, store: RecordStore) -> None:
        record = _record(unique("wf"), "Andrew Wormald")
        await self._create(store, record)
        _assert_same(await store.latest(record.workflow_name, record.foreign_id), record)

        updated = _next(record, status=3, run_state=RunState.COMPLETED)
        await self._update(store, updated)

        _assert_same(await store.latest(record.workflow_name, record.foreign_id), updated)

    @pytest.mark.asyncio
    async def test_latest_of_missing_foreign_id_raises_record_not_found(
        self, store: RecordStore
    ) -> None:
        record = _record(unique("wf"), unique("fid"))
        await self._create(store, record)

        with pytest.raises(errors.RecordNotFound):
            await store.latest(record.workflow_name, unique("fid"))
        with pytest.raises(errors.RecordNotFound):
            await store.latest(unique("wf"), record.foreign_id)

    @pytest.mark.asyncio
    async def test_latest_is_the_most_recently_created_run(self, store: RecordStore) -> None:
        wf, fid = unique("wf"), unique("fid")
        first = _record(wf, fid, run_state=RunState.COMPLETED)
        await self._create(store, first)
        second = _record(wf, fid, created_at=first.created_at + timedelta(seconds=1))
        await self._create(store, second)

        _assert_same(await store.latest(wf, fid), second)
        _assert_same(await store.lookup(first.run_id), first)

    # -- create ------------------------------------------------------------------------------

    @pytest.mark.asyncio
    @pytest.mark.parametrize("state", _UNFINISHED, ids=lambda s: s.name)
    async def test_create_refuses_a_second_unfinished_run(
        self, store: RecordStore, state: RunState
    ) -> None:
        # Given an unfinished run for the foreign ID
        wf, fid = unique("wf"), unique("fid")
        first = _record(wf, fid, run_state=state)
        await self._create(store, first)

        # When another run is created for it, then it is refused and nothing is written
        second = _record(wf, fid)
        with pytest.raises(errors.WorkflowInProgress):
            await self._create(store, second)
        with pytest.raises(errors.RecordNotFound):
            await store.lookup(second.run_id)
        assert len(await store.list_outbox(wf, 100)) == 1
        _assert_same(await store.latest(wf, fid), first)

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "state", [RunState.COMPLETED, RunState.CANCELLED], ids=lambda s: s.name
    )
    async def test_create_allows_a_new_run_once_the_last_finished(
        self, store: RecordStore, state: RunState
    ) -> None:
        wf, fid = unique("wf"), unique("fid")
        first = _record(wf, fid, run_state=RunState.RUNNING)
        await self._create(store, first)
        await self._update(store, _next(first, run_state=state))

        second = _record(wf, fid)
        await self._create(store, second)

        _assert_same(await store.latest(wf, fid), second)
        with pytest.raises(errors.WorkflowInProgress):
            await self._create(store, _record(wf, fid))

    @pytest.mark.asyncio
    async def test_create_does_not_block_other_foreign_ids_or_workflows(
        self, store: RecordStore
    ) -> None:
        wf, fid = unique("wf"), unique("fid")
        await self._create(store, _record(wf, fid))

        await self._create(store, _record(wf, unique("fid")))
        await self._create(store, _record(unique("wf"), fid))

    @pytest.mark.asyncio
    async def test_concurrent_creates_for_one_foreign_id_admit_exactly_one(
        self, store: RecordStore
    ) -> None:
        wf, fid = unique("wf"), unique("fid")
        records = [_record(wf, fid) for _ in range(20)]

        results = await asyncio.gather(
            *(self._create(store, r) for r in records), return_exceptions=True
        )

        winners = [
            r for r, res in zip(records, results, strict=True) if isinstance(res, OutboxEvent)
        ]
        failures = [res for res in results if isinstance(res, BaseException)]
        assert len(winners) == 1, results
        assert all(isinstance(f, errors.WorkflowInProgress) for f in failures), failures
        _assert_same(await store.latest(wf, fid), winners[0])
        assert len(await store.list_outbox(wf, 100)) == 1

    # -- update --------------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_update_stores_each_next_version(self, store: RecordStore) -> None:
        record = _record(unique("wf"), "Andrew Wormald")
        await self._create(store, record)

        for status in (2, 3):
            stored = await store.lookup(record.run_id)
            await self._update(store, _next(stored, status=status, run_state=RunState.RUNNING))

        final = await store.lookup(record.run_id)
        assert final.status == 3
        assert final.run_state == RunState.RUNNING
        assert final.version == 3
        assert_close(final.created_at, record.created_at, "created_at")

    @pytest.mark.asyncio
    async def test_update_with_a_stale_version_raises_and_writes_nothing(
        self, store: RecordStore
    ) -> None:
        # Given a run that was updated from version 1 to 2
        wf = unique("wf")
        record = _record(wf, unique("fid"))
        await self._create(store, record)
        winner = _next(record, status=2, run_state=RunState.RUNNING)
        await self._update(store, winner)

        # When another writer that also read version 1 writes version 2
        loser = _next(record, status=5, run_state=RunState.RUNNING)
        with pytest.raises(errors.VersionConflict) as info:
            await self._update(store, loser)

        # Then it is refused and neither the record nor the outbox changed
        assert info.value.run_id == record.run_id
        assert info.value.expected == 1
        assert info.value.actual == 2
        _assert_same(await store.lookup(record.run_id), winner)
        assert len(await store.list_outbox(wf, 100)) == 2

    @pytest.mark.asyncio
    async def test_update_that_skips_a_version_raises_version_conflict(
        self, store: RecordStore
    ) -> None:
        wf = unique("wf")
        record = _record(wf, unique("fid"))
        await self._create(store, record)

        with pytest.raises(errors.VersionConflict):
            await self._update(store, dataclasses.replace(record, version=3, status=2))

        _assert_same(await store.lookup(record.run_id), record)
        assert len(await store.list_outbox(wf, 100)) == 1

    @pytest.mark.asyncio
    async def test_update_of_a_missing_run_raises_record_not_found(
        self, store: RecordStore
    ) -> None:
        wf = unique("wf")
        record = _next(_record(wf, unique("fid")))

        with pytest.raises(errors.RecordNotFound):
            await self._update(store, record)
        assert await store.list_outbox(wf, 100) == []

    @pytest.mark.asyncio
    async def test_concurrent_updates_from_one_version_admit_exactly_one(
        self, store: RecordStore
    ) -> None:
        wf = unique("wf")
        record = _record(wf, unique("fid"))
        await self._create(store, record)
        candidates = [_next(record, status=i, run_state=RunState.RUNNING) for i in range(20)]

        results = await asyncio.gather(
            *(self._update(store, c) for c in candidates), return_exceptions=True
        )

        winners = [
            c for c, res in zip(candidates, results, strict=True) if isinstance(res, OutboxEvent)
        ]
        failures = [res for res in results if isinstance(res, BaseException)]
        assert len(winners) == 1, results
        assert all(isinstance(f, errors.VersionConflict) for f in failures), failures
        _assert_same(await store.lookup(record.run_id), winners[0])
        assert len(await store.list_outbox(wf, 100)) == 2

    # -- outbox --------------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_create_writes_exactly_one_outbox_event(self, store: RecordStore) -> None:
        wf = unique("wf")
        record = _record(wf, "Andrew Wormald")
        event = await self._create(store, record)

        listed = await store.list_outbox(wf, 100)

        assert len(listed) == 1
        _assert_same_event(listed[0], event)
        assert listed[0].id.startswith("outbox-id-")
        assert listed[0].topic == f"{wf}-1"

    @pytest.mark.asyncio
    async def test_delete_outbox_is_idempotent(self, store: RecordStore) -> None:
        wf = unique("wf")
        await self._create(store, _record(wf, unique("fid")))
        [event] = await store.list_outbox(wf, 100)

        await store.delete_outbox([event.id])
        assert await store.list_outbox(wf, 100) == []

        await store.delete_outbox([event.id])
        await store.delete_outbox([f"outbox-id-{uuid.uuid4()}"])
        await store.delete_outbox([])
        assert await store.list_outbox(wf, 100) == []

    @pytest.mark.asyncio
    async def test_list_outbox_is_oldest_first_and_respects_limit(self, store: RecordStore) -> None:
        # Given writes of three runs, interleaved
        wf = unique("wf")
        first, second, third = (_record(wf, unique("fid")) for _ in range(3))
        written = [
            await self._create(store, first),
            await self._create(store, second),
            await self._update(store, _next(first, status=2, run_state=RunState.RUNNING)),
            await self._create(store, third),
            await self._update(store, _next(second, status=2, run_state=RunState.RUNNING)),
        ]

        # Then the outbox lists them in write order, at most `limit` at a time
        listed = await store.list_outbox(wf, 100)
        assert [e.id for e in listed] == [e.id for e in written]
        for actual, expected in zip(listed, written, strict=True):
            _assert_same_event(actual, expected)
        assert [e.id for e in await store.list_outbox(wf, 2)] == [e.id for e in written[:2]]

        await store.delete_outbox([e.id for e in written[:2]])
        assert [e.id for e in await store.list_outbox(wf, 100)] == [e.id for e in written[2:]]

    @pytest.mark.asyncio
    async def test_list_outbox_lists_only_its_workflow(self, store: RecordStore) -> None:
        wf, other = unique("wf"), unique("wf")
        mine = await self._create(store, _record(wf, unique("fid")))
        theirs = await self._create(store, _record(other, unique("fid")))

        assert [e.id for e in await store.list_outbox(wf, 100)] == [mine.id]
        assert [e.id for e in await store.list_outbox(other, 100)] == [theirs.id]
        assert await store.list_outbox(unique("wf"), 100) == []

    # -- list ------------------------------------------------------------------------------------

    @pytest.mark.asyncio
    async def test_list_pages_by_row_offset_in_both_orders(self, store: RecordStore) -> None:
        # Given 1000 finished runs across two workflows and ten foreign IDs (the foreign ID
        # filter keeps other tests' rows out when listing every workflow of a shared backend)
        workflows = [unique("wf-a"), unique("wf-b")]
        foreign_ids = [unique("fid") for _ in range(10)]
        base = now() - timedelta(hours=2)
        seeded = []
        for i in range(1000):
            record = _record(
                workflows[i % 2],
                foreign_ids[i % 10],
                status=i % 4 + 1,
                run_state=RunState.COMPLETED,
                created_at=base + timedelta(seconds=i),
            )
            await store.create(record, _event(record))
            seeded.append(record.run_id)
        mine = RecordFilter(foreign_ids=foreign_ids)

        async def page(offset: int, limit: int, order: Order = Order.ASC) -> list[str]:
            return _ids(
                await store.list(None, offset=offset, limit=limit, order=order, filter=mine)
            )

        # Then
        assert await page(0, 53) == seeded[:53]
        assert await page(53, 100) == seeded[53:153]
        assert await page(153, 847) == seeded[153:]
        assert await page(950, 1000) == seeded[950:]
        assert len(await page(950, 1000, Order.DESC)) == 50
        newest_first = seeded[::-1]
        assert await page(0, 1000, Order.DESC) == newest_first
        assert await page(950, 1000, Order.DESC) == newest_first[950:]
        assert await page(1000, 10) == []
        assert await page(0, 0) == []
        assert _ids(await store.list(workflows[0], limit=1000)) == seeded[0::2]
        assert (
            _ids(await store.list(workflows[1], limit=1000, order=Order.DESC))
            == (seeded[1::2][::-1])
        )
        assert len(await store.list(workflows[0])) == 25
        assert await store.list(unique("wf")) == []

    @pytest.mark.asyncio
    async def test_list_filters(self, store: RecordStore) -> None:
        # Given runs in every state and status, a foreign ID with several runs, and another
        # workflow that shares that foreign ID
        wf, other = unique("wf"), unique("wf")
        base = now() - timedelta(hours=1)
        states = [*_UNFINISHED, RunState.COMPLETED, RunState.CANCELLED]
        seeded: list[Record] = []
        for i in range(60):
            record = _record(
                wf,
                unique("fid"),
                status=i % 3 + 1,
                run_state=states[i % 5],
                created_at=base + timedelta(seconds=i),
            )
            await self._create(store, record)
            seeded.append(record)
        shared = unique("fid-shared")
        for i in range(5):
            record = _record(
                wf,
                shared,
                run_state=RunState.COMPLETED,
                created_at=base + timedelta(seconds=60 + i),
            )
            await self._create(store, record)
            seeded.append(record)
        for i in range(20):
            record = _record(
                other, shared, run_state=RunState.COMPLETED, created_at=base + timedelta(seconds=i)
            )
            await self._create(store, record)

        async def listed(
            workflow_name: str | None = wf,
            *,
            offset: int = 0,
            order: Order = Order.ASC,
            foreign_ids: Sequence[str] = (),
            statuses: Sequence[int] = (),
            run_states: Sequence[RunState] = (),
        ) -> list[str]:
            flt = RecordFilter(foreign_ids=foreign_ids, statuses=statuses, run_states=run_states)
            rows = await store.list(
                workflow_name, offset=offset, limit=1000, order=order, filter=flt
            )
            return _ids(rows)

        def expected(keep: Callable[[Record], bool]) -> list[str]:
            return [r.run_id for r in seeded if keep(r)]

        # Then: workflow
        assert await listed() == _ids(seeded)
        assert len(await listed(other)) == 20
        assert len(await listed(None, foreign_ids=[shared])) == 25
        # foreign ID
        assert await listed(foreign_ids=[shared]) == expected(lambda r: r.foreign_id == shared)
        assert len(await listed(foreign_ids=[shared, seeded[3].foreign_id])) == 6
        assert await listed(foreign_ids=[unique("fid")]) == []
        # run state, single and several
        running = expected(lambda r: r.run_state == RunState.RUNNING)
        assert len(running) == 12
        assert await listed(run_states=[RunState.RUNNING]) == running
        assert await listed(run_states=[RunState.RUNNING, RunState.PAUSED]) == expected(
            lambda r: r.run_state in (RunState.RUNNING, RunState.PAUSED)
        )
        # status, single and several
        assert await listed(statuses=[2]) == expected(lambda r: r.status == 2)
        assert await listed(statuses=[1, 3]) == expected(lambda r: r.status in (1, 3))
        # every given field must match
        assert await listed(run_states=[RunState.COMPLETED], statuses=[1]) == expected(
            lambda r: r.run_state == RunState.COMPLETED and r.status == 1
        )
        # the offset counts filtered rows, in the requested order
        initiated = expected(lambda r: r.run_state == RunState.INITIATED)
        assert (
            await listed(offset=2, order=Order.DESC, run_states=[RunState.INITIATED])
            == (initiated[::-1][2:])
        )

    @pytest.mark.asyncio
    async def test_list_created_bounds_are_strict(self, store: RecordStore) -> None:
        wf = unique("wf")
        base = now() - timedelta(hours=1)
        seeded = []
        for i in range(30):
            record = _record(wf, unique("fid"), created_at=base + timedelta(seconds=i))
            await self._create(store, record)
            seeded.append(record.run_id)

        async def listed(after: datetime | None, before: datetime | None) -> list[str]:
            flt = RecordFilter(created_after=after, created_before=before)
            return _ids(await store.list(wf, limit=1000, filter=flt))

        assert (
            await listed(base + timedelta(seconds=10), base + timedelta(seconds=20))
            == (seeded[11:20])
        )
        assert await listed(base + timedelta(seconds=25), None) == seeded[26:]
        assert await listed(None, base + timedelta(seconds=3)) == seeded[:3]
        assert await listed(base + timedelta(seconds=29), None) == []

    @pytest.mark.asyncio
    async def test_list_pages_by_key_in_both_orders(self, store: RecordStore) -> None:
        # Given 120 runs of a workflow, with runs of another workflow created among them
        wf, other = unique("wf"), unique("wf")
        base = now() - timedelta(hours=2)
        seeded: list[Record] = []
        for i in range(120):
            at = base + timedelta(seconds=i)
            record = _record(wf, unique("fid"), status=i % 3 + 1, created_at=at)
            await self._create(store, record)
            seeded.append(record)
            if i % 10 == 0:
                await self._create(store, _record(other, unique("fid"), created_at=at))
        run_ids = _ids(seeded)

        async def pages(
            workflow_name: str | None,
            order: Order,
            limit: int,
            filter: RecordFilter | None = None,
        ) -> list[list[str]]:
            result: list[list[str]] = []
            after: str | None = None
            while True:
                page = _ids(
                    await store.list(
                        workflow_name, limit=limit, order=order, filter=filter, after=after
                    )
                )
                if not page:
                    return result
                result.append(page)
                after = page[-1]

        # When paging by key (each page after the last run of the one before)
        ascending = await pages(wf, Order.ASC, 25)
        descending = await pages(wf, Order.DESC, 50)

        # Then every run comes once, in order, in pages of the size asked
        assert [len(p) for p in ascending] == [25, 25, 25, 25, 20]
        assert [r for p in ascending for r in p] == run_ids
        assert [len(p) for p in descending] == [50, 50, 20]
        assert [r for p in descending for r in p] == run_ids[::-1]
        # And filters apply, with every workflow too
        status_two = RecordFilter(statuses=[2])
        assert [r for p in await pages(wf, Order.ASC, 7, status_two) for r in p] == [
            r.run_id for r in seeded if r.status == 2
        ]
        mine = RecordFilter(foreign_ids=[r.foreign_id for r in seeded])
        assert [r for p in await pages(None, Order.DESC, 33, mine) for r in p] == run_ids[::-1]
        # And an offset counts from the run after which the page starts
        assert _ids(await store.list(wf, after=run_ids[9], offset=5, limit=3)) == run_ids[15:18]
        assert (
            _ids(await store.list(wf, after=run_ids[9], offset=5, limit=3, order=Order.DESC))
            == run_ids[3:0:-1]
        )
        # And nothing comes after the last run in the order asked
        assert await store.list(wf, after=run_ids[-1]) == []
        assert await store.list(wf, after=run_ids[0], order=Order.DESC) == []

    @pytest.mark.asyncio
    async def test_list_after_an_unknown_run_raises_record_not_found(
        self, store: RecordStore
    ) -> None:
        wf = unique("wf")
        await self._create(store, _record(wf, unique("fid")))

        with pytest.raises(errors.RecordNotFound):
            await store.list(wf, after=str(uuid.uuid4()))
        with pytest.raises(errors.RecordNotFound):
            await store.list(None, after=str(uuid.uuid4()), order=Order.DESC)
