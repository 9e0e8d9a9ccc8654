"""The bounded-scan part of ``RecordStoreContract`` (see :mod:`.record_store`), for stores with
the optional :class:`~statestream.ScanLister` capability; skipped for the others."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta

import pytest

from .. import errors
from .._core.protocols import RecordStore, ScanLister
from .._core.records import (
    Header,
    Message,
    Order,
    OutboxEvent,
    Record,
    RecordFilter,
    ScanPage,
    topic_for,
)
from .._core.runstate import RunState
from ._util import now, unique

__all__ = ["ScanListContract"]


def _event(record: Record) -> OutboxEvent:
    headers = {Header.RUN_ID.value: record.run_id, Header.RECORD_VERSION.value: "1"}
    message = Message(record.run_id, record.status, headers, record.updated_at)
    return OutboxEvent(
        f"outbox-id-{uuid.uuid4()}", record.workflow_name, topic_for(record), message
    )


def _lister(store: RecordStore) -> ScanLister:
    if not isinstance(store, ScanLister):
        pytest.skip("the store has no list_scan (ScanLister is an optional capability)")
    return store


async def _seed(store: RecordStore, n: int = 30) -> tuple[str, list[Record]]:
    """``n`` runs of a new workflow (status ``i % 5 + 1``; every third paused), one of another
    workflow between them, created a millisecond apart."""
    wf, other = unique("wf"), unique("wf")
    start = now() - timedelta(seconds=10)
    runs = []
    for i in range(n):
        at = start + timedelta(milliseconds=i)
        state = RunState.PAUSED if i % 3 == 0 else RunState.RUNNING
        record = Record(wf, unique("fid"), str(uuid.uuid4()), state, i % 5 + 1, b"{}", at, at)
        runs.append(record)
        await store.create(record, _event(record))
        if i == n // 2:
            foreign = dataclasses.replace(record, workflow_name=other, run_id=str(uuid.uuid4()))
            foreign = dataclasses.replace(foreign, foreign_id=unique("fid"), status=2)
            await store.create(foreign, _event(foreign))
    return wf, runs


async def _reference(
    store: RecordStore,
    wf: str,
    *,
    limit: int,
    scan_limit: int,
    order: Order,
    filter: RecordFilter,
    after: str | None = None,
) -> ScanPage:
    examined = await store.list(
        wf,
        limit=scan_limit,
        order=order,
        filter=dataclasses.replace(filter, statuses=()),
        after=after,
    )
    return ScanPage.of(examined, filter.statuses, limit, scan_limit)


def _ids(page: ScanPage) -> list[str]:
    return [r.run_id for r in page.records]


class ScanListContract:
    """``list_scan``: the runs at the statuses among at most ``scan_limit`` runs examined."""

    @pytest.mark.asyncio
    async def test_list_scan_examines_at_most_scan_limit_runs(self, store: RecordStore) -> None:
        lister = _lister(store)
        wf, runs = await _seed(store)
        newest = list(reversed(runs))
        # A status no run has: nothing found, and the scan stopped at the scan_limit-th run
        none = await lister.list_scan(
            wf, limit=5, scan_limit=10, filter=RecordFilter(statuses=(9,))
        )
        assert list(none.records) == []
        assert none.resume == newest[9].run_id
        # Status 1 (runs 0, 5, 10, ...): newest first, only among the 10 newest runs
        page = await lister.list_scan(
            wf, limit=5, scan_limit=10, filter=RecordFilter(statuses=(1,))
        )
        assert _ids(page) == [r.run_id for r in newest[:10] if r.status == 1]
        assert page.resume == newest[9].run_id
        assert all(isinstance(r, Record) and r.workflow_name == wf for r in page.records)
        # The page fills up first: it stops at its limit-th match
        full = await lister.list_scan(
            wf, limit=2, scan_limit=100, filter=RecordFilter(statuses=(1, 2))
        )
        matching = [r.run_id for r in newest if r.status in (1, 2)]
        assert _ids(full) == matching[:2]
        assert full.resume == matching[1]
        # The runs end before scan_limit: resume is ""
        rest = await lister.list_scan(
            wf, limit=50, scan_limit=100, filter=RecordFilter(statuses=(1, 2))
        )
        assert _ids(rest) == matching
        assert rest.resume == ""

    @pytest.mark.asyncio
    async def test_list_scan_pages_by_resume_cover_every_match_once(
        self, store: RecordStore
    ) -> None:
        lister = _lister(store)
        wf, runs = await _seed(store)
        for order in (Order.DESC, Order.ASC):
            flt = RecordFilter(statuses=(3,))
            seen: list[str] = []
            after: str | None = None
            for _ in range(40):
                page = await lister.list_scan(
                    wf, limit=2, scan_limit=4, order=order, filter=flt, after=after
                )
                seen += _ids(page)
                if not page.resume:
                    break
                after = page.resume
            expected = [r.run_id for r in runs if r.status == 3]
            assert seen == (expected if order is Order.ASC else list(reversed(expected)))

    @pytest.mark.asyncio
    async def test_list_scan_is_list_picked_with_the_other_filters(
        self, store: RecordStore
    ) -> None:
        lister = _lister(store)
        wf, runs = await _seed(store)
        middle = runs[15]
        filters = [
            RecordFilter(),
            RecordFilter(statuses=(2,)),
            RecordFilter(statuses=(2, 4), run_states=(RunState.PAUSED,)),
            RecordFilter(statuses=(1,), foreign_ids=(runs[5].foreign_id, runs[6].foreign_id)),
            RecordFilter(statuses=(4,), created_after=runs[3].created_at),
            RecordFilter(
                statuses=(1, 3),
                created_after=runs[2].created_at,
                created_before=runs[25].created_at,
            ),
        ]
        for flt in filters:
            for order in (Order.DESC, Order.ASC):
                for after in (None, middle.run_id):
                    for limit, scan_limit in ((3, 7), (1, 30), (30, 30), (2, 1)):
                        got = await lister.list_scan(
                            wf,
                            limit=limit,
                            scan_limit=scan_limit,
                            order=order,
                            filter=flt,
                            after=after,
                        )
                        want = await _reference(
                            store,
                            wf,
                            limit=limit,
                            scan_limit=scan_limit,
                            order=order,
                            filter=flt,
                            after=after,
                        )
                        case = (flt, order, after, limit, scan_limit)
                        assert _ids(got) == _ids(want), case
                        assert got.resume == want.resume, case

    @pytest.mark.asyncio
    async def test_list_scan_refuses_bad_limits_and_unknown_cursors(
        self, store: RecordStore
    ) -> None:
        lister = _lister(store)
        wf, _ = await _seed(store, 3)
        for limit, scan_limit in ((0, 10), (5, 0), (-1, 10)):
            with pytest.raises(errors.InvalidInput):
                await lister.list_scan(wf, limit=limit, scan_limit=scan_limit)
        with pytest.raises(errors.RecordNotFound):
            await lister.list_scan(wf, limit=5, scan_limit=10, after=str(uuid.uuid4()))
        empty = await lister.list_scan(unique("wf"), limit=5, scan_limit=10)
        assert empty == ScanPage([], "")
