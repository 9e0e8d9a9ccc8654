"""SQLite record store: parked events kept in the file, keyset paging within a workflow."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from statestream import Event, Message, Order, OutboxEvent, Record, RecordFilter, RunState
from statestream._core.records import ParkedEvent
from statestream.adapters.sqlite import SqliteDatabase, SqliteRecordStore


def now() -> datetime:
    return datetime.now(UTC)


def parked(error: str = "boom") -> ParkedEvent:
    event = Event(7, "wf-1", "run-1", 1, {"h": "v"}, now(), b"\x00\xff")
    return ParkedEvent("c:wf-1:7", "wf", "c", event, error, 3, now())


async def test_parked_events_survive_reopening_the_file(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "parked.db", synchronous="NORMAL")
    try:
        await SqliteRecordStore(db).park(parked())
        await SqliteRecordStore(db).retry_parked("c:wf-1:7")
    finally:
        await db.close()

    again = SqliteDatabase(tmp_path / "parked.db", synchronous="NORMAL")
    try:
        [found] = await SqliteRecordStore(again).list_parked("wf", retry_requested=True)
        assert (found.id, found.attempts, found.event.data) == ("c:wf-1:7", 3, b"\x00\xff")
        assert found.event.headers == {"h": "v"}
    finally:
        await again.close()


async def test_an_error_text_with_a_lone_surrogate_is_kept_escaped(tmp_path: Path) -> None:
    # The error comes from user code: refusing it would lose the parked event.
    db = SqliteDatabase(tmp_path / "parked.db", synchronous="NORMAL")
    try:
        store = SqliteRecordStore(db)
        await store.park(parked("ValueError: bad \udc80 byte"))
        [found] = await store.list_parked("wf")
        assert found.error == "ValueError: bad \\udc80 byte"
    finally:
        await db.close()


async def test_keyset_pages_of_one_workflow_with_a_filter(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "records.db", synchronous="NORMAL")
    try:
        store = SqliteRecordStore(db)
        ids: dict[str, list[str]] = {"a": [], "b": []}
        for i in range(60):
            workflow = "ab"[i % 2]
            run_id = uuid.uuid4().hex
            status = 1 + i % 3
            record = Record(
                workflow, f"f-{i}", run_id, RunState.RUNNING, status, b"{}", now(), now()
            )
            event = OutboxEvent(uuid.uuid4().hex, workflow, "t", Message(run_id, 1, {}, now()))
            await store.create(record, event)
            if status != 2:
                ids[workflow].append(run_id)
        only = RecordFilter(statuses=[1, 3])
        for order in (Order.ASC, Order.DESC):
            expected = ids["a"] if order is Order.ASC else ids["a"][::-1]
            paged: list[str] = []
            after: str | None = None
            while page := await store.list("a", limit=4, order=order, filter=only, after=after):
                paged += [r.run_id for r in page]
                after = page[-1].run_id
            assert paged == expected
    finally:
        await db.close()
