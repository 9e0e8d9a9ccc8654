"""The time-range part of ``RecordStoreContract`` (see :mod:`.record_store`): a list with a
time bound is in creation-time order, and pages by key in it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest

from .._core.protocols import RecordStore
from .._core.records import Order, Record, RecordFilter
from .._core.runstate import RunState
from ._counts import _event
from ._util import now, unique

__all__ = ["TimeRangeContract"]


def _run(workflow_name: str, at: datetime) -> Record:
    return Record(
        workflow_name, unique("fid"), str(uuid.uuid4()), RunState.RUNNING, 1, b"{}", at, at
    )


def _ids(rows: Sequence[Record]) -> list[str]:
    return [r.run_id for r in rows]


class TimeRangeContract:
    """``list`` with ``created_after``/``created_before``: ``(created_at, creation)`` order."""

    @pytest.mark.asyncio
    async def test_list_in_a_time_range_is_in_creation_time_order(self, store: RecordStore) -> None:
        # Given runs created in an order their times do not follow (two clocks), with a tie
        wf = unique("wf")
        base = now() - timedelta(hours=1)
        seconds = [5, 1, 3, 3, 2, 4, 0, 6]
        made = []
        for s in seconds:
            record = _run(wf, base + timedelta(seconds=s))
            await store.create(record, _event(record))
            made.append(record)
        order_of = sorted(range(len(made)), key=lambda i: (seconds[i], i))
        by_time = [made[i].run_id for i in order_of]
        window = RecordFilter(created_after=base, created_before=base + timedelta(seconds=6))

        async def pages(order: Order) -> list[str]:
            seen: list[str] = []
            cursor: str | None = None
            while True:
                rows = await store.list(wf, limit=2, order=order, filter=window, after=cursor)
                seen += _ids(rows)
                if len(rows) < 2:
                    return seen
                cursor = rows[-1].run_id

        # Then a time-bounded list is in (created_at, creation) order, and pages by key in it
        inside = [i for i in by_time if i not in (made[6].run_id, made[7].run_id)]
        assert _ids(await store.list(wf, limit=100, filter=window)) == inside
        assert await pages(Order.ASC) == inside
        assert await pages(Order.DESC) == inside[::-1]
        assert _ids(await store.list(wf, limit=2, offset=1, filter=window)) == inside[1:3]
        # and a cursor outside the range still starts after it in that order
        assert _ids(await store.list(wf, limit=100, filter=window, after=made[6].run_id)) == inside
        assert (
            _ids(
                await store.list(
                    wf, limit=100, filter=window, after=made[0].run_id, order=Order.DESC
                )
            )
            == inside[::-1][1:]
        )
