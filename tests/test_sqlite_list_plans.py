"""Every list the web UI makes of a SQLite store, and its counts, read an index in the order
they return (EXPLAIN QUERY PLAN of the statements the store really runs).

The tables here are small; SQLite's planner, without statistics, plans for big ones, as it
would for a million runs (``bench/web_list.py`` measures those).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from statestream import Message, Order, OutboxEvent, Record, RecordFilter, RunState
from statestream.adapters.sqlite import SqliteDatabase, SqliteRecordStore


def now() -> datetime:
    return datetime.now(UTC)


def outbox_event(record: Record) -> OutboxEvent:
    message = Message(record.run_id, record.status, {}, record.created_at)
    return OutboxEvent(f"ob-{record.run_id}", record.workflow_name, "wf-topic", message)


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    db = SqliteDatabase(tmp_path / "plans.db")
    store = SqliteRecordStore(db)
    at = now()
    for i in range(20):
        record = Record(
            "wf", f"fid-{i}", f"run-{i:02}", RunState(i % 3 + 1), i % 4 + 1, b"{}", at, at
        )
        await store.create(record, outbox_event(record))
    yield store
    await db.close()


async def plans(
    store: SqliteRecordStore, call: Callable[[], Awaitable[object]]
) -> list[tuple[str, str]]:
    """(statement, plan) of each statement ``call`` ran on the query thread's connection."""
    statements: list[str] = []

    def trace(conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(statements.append)

    def untrace(conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(None)

    await store.db.query(trace)
    try:
        await call()
    finally:
        await store.db.query(untrace)

    def explain(conn: sqlite3.Connection) -> list[tuple[str, str]]:
        found = []
        for sql in statements:
            if sql.lstrip().upper().startswith("SELECT"):
                rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall()
                found.append((sql, " | ".join(row[-1] for row in rows)))
        return found

    result = await store.db.query(explain)
    assert result, "the call ran no SELECT on the query thread"
    return result


HOUR = timedelta(hours=1)

#: The UI's lists: (name, filter, the index that serves them).
LISTS = [
    ("newest first", None, "statestream_records_by_workflow"),
    # (no index has the status, which every transition changes: the workflow's runs in
    # creation order, filtered)
    ("a status", RecordFilter(statuses=(2,)), "statestream_records_by_workflow"),
    (
        "a run state",
        RecordFilter(run_states=(RunState.PAUSED,)),
        "statestream_records_by_run_state",
    ),
    ("a foreign ID", RecordFilter(foreign_ids=("fid-3",)), "statestream_records_by_foreign_id"),
    (
        "a status and a run state",
        RecordFilter(statuses=(2,), run_states=(RunState.RUNNING,)),
        "statestream_records_by_run_state",
    ),
    (
        "a time range",
        RecordFilter(created_after=now() - HOUR, created_before=now() + HOUR),
        "statestream_records_by_created",
    ),
]


@pytest.mark.parametrize(
    ("flt", "index"), [(f, i) for _, f, i in LISTS], ids=[n for n, *_ in LISTS]
)
@pytest.mark.parametrize("order", [Order.DESC, Order.ASC])
@pytest.mark.parametrize("paged", [False, True], ids=["first page", "after="])
async def test_every_list_of_the_ui_reads_its_index(
    store: SqliteRecordStore, flt: RecordFilter | None, index: str, order: Order, paged: bool
) -> None:
    after = "run-10" if paged else None
    found = await plans(
        store, lambda: store.list("wf", limit=51, order=order, filter=flt, after=after)
    )
    *cursor, (sql, plan) = found
    # One seek (SEARCH) of the index, never a SCAN of the table or of an index
    assert "SCAN" not in plan, (sql, plan)
    assert f"SEARCH statestream_records USING INDEX {index}" in plan, (sql, plan)
    # In the list's order straight from the index: no sort of what the filter matched
    assert "TEMP B-TREE" not in plan, (sql, plan)
    for sql, plan in cursor:  # after=: the cursor's rowid, by primary key
        assert "INDEX sqlite_autoindex_statestream_records_1 (run_id=?)" in plan, (sql, plan)


async def test_count_runs_reads_the_workflows_runs_once(store: SqliteRecordStore) -> None:
    [(sql, plan)] = await plans(store, lambda: store.count_runs("wf"))
    # One range of the workflow (not a scan of every workflow's runs), grouped in one pass
    assert "SCAN" not in plan, (sql, plan)
    assert "SEARCH statestream_records USING INDEX statestream_records_by_" in plan, (sql, plan)
    assert "(workflow_name=?)" in plan, (sql, plan)
    assert plan.count("SEARCH") == 1, (sql, plan)


async def test_no_index_of_the_runs_has_the_status(store: SqliteRecordStore) -> None:
    # Every transition changes the status: an index on it would be rewritten each time (10 to
    # 35 % more CPU per transition, measured)
    def columns(conn: sqlite3.Connection) -> dict[str, list[str]]:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' "
                "AND tbl_name = 'statestream_records'"
            )
        ]
        return {n: [row[2] for row in conn.execute(f"PRAGMA index_info({n})")] for n in names}

    found = await store.db.query(columns)
    assert not [n for n, cols in found.items() if "status" in cols], found
    assert found["statestream_records_by_run_state"] == ["workflow_name", "run_state"]
    assert found["statestream_records_by_created"] == ["workflow_name", "created_at"]
