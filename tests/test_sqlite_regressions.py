"""Regression tests for defects of the SQLite adapters found in review.

* The database thread dying (an exception escaping the batch executor, a ``BaseException`` in a
  write) left the callers whose writes were already taken into the batch waiting for ever.
* Slow reads (``list`` with a deep offset or a large page) ran on the event loop and froze it.
* A lone surrogate in a text value raised a bare ``UnicodeEncodeError`` from the driver.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from statestream import Message, Order, OutboxEvent, Record, RecordFilter, RunState
from statestream.adapters.sqlite import (
    SCHEMA_VERSION,
    SqliteDatabase,
    SqliteRecordStore,
    SqliteStreamer,
    SqliteTimeoutStore,
)
from statestream.errors import AdapterError, InvalidInput, RecordNotFound


def make(foreign_id: str, *, workflow: str = "wf") -> tuple[Record, OutboxEvent]:
    now = datetime.now(UTC)
    run_id = uuid.uuid4().hex
    record = Record(workflow, foreign_id, run_id, RunState.INITIATED, 1, b"{}", now, now)
    message = Message(run_id, 1, {"run_id": run_id}, now)
    return record, OutboxEvent(uuid.uuid4().hex, workflow, f"{workflow}-1", message)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase(tmp_path / "regressions.db", synchronous="NORMAL")
    yield database
    await asyncio.wait_for(database.close(), 5)


class _Boom(BaseException):
    """Not an ``Exception``: what a ``SystemExit`` or a ``KeyboardInterrupt`` would look like."""


async def _hold_thread(db: SqliteDatabase) -> tuple[threading.Event, asyncio.Future[None]]:
    """Occupy the database thread with a write of its own, so that what is queued next is taken
    into one batch; set the returned event to let it go."""
    gate, holding = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        holding.set()
        gate.wait(5)

    held = asyncio.ensure_future(db.write(hold))
    assert await asyncio.to_thread(holding.wait, 5)
    return gate, held


# ----------------------------------------------------------------- the database thread dies


async def test_a_base_exception_in_a_write_fails_every_batched_and_later_caller(
    db: SqliteDatabase, tmp_path: Path
) -> None:
    # Given a batch of writes queued behind a held thread, one of which raises a BaseException
    store = SqliteRecordStore(db)
    await db.schema_version()
    gate, held = await _hold_thread(db)
    runs = [make(f"batched-{i}") for i in range(6)]

    def boom(conn: sqlite3.Connection) -> None:
        raise _Boom("the thread must not take its batch down with it silently")

    calls = [asyncio.ensure_future(store.create(*run)) for run in runs[:3]]
    calls.append(asyncio.ensure_future(db.write(boom)))
    calls += [asyncio.ensure_future(store.create(*run)) for run in runs[3:]]
    await asyncio.sleep(0.05)  # every call has queued its write

    # When the thread runs the batch
    gate.set()
    await held
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)

    # Then every caller of the batch gets an AdapterError, and so does every later one
    assert all(isinstance(r, AdapterError) for r in results), results
    with pytest.raises(AdapterError):
        await asyncio.wait_for(store.create(*make("later")), 5)
    with pytest.raises(AdapterError):
        await asyncio.wait_for(store.lookup(runs[0][0].run_id), 5)

    # And nothing of the failed batch was committed
    other = SqliteDatabase(tmp_path / "regressions.db")
    try:
        for record, _ in runs:
            with pytest.raises(RecordNotFound):
                await SqliteRecordStore(other).lookup(record.run_id)
    finally:
        await other.close()


async def test_an_exception_escaping_the_batch_executor_fails_every_caller(
    db: SqliteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a database whose batch executor fails outside any single write (a bug, say)
    store = SqliteRecordStore(db)
    await db.schema_version()
    gate, held = await _hold_thread(db)

    def broken(conn: sqlite3.Connection, batch: object) -> None:
        raise RuntimeError("escaped the executor")

    monkeypatch.setattr(db, "_execute", broken)
    calls = [asyncio.ensure_future(store.create(*make(f"r-{i}"))) for i in range(5)]
    await asyncio.sleep(0.05)

    # When the thread takes the batch
    gate.set()
    await held
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)

    # Then nobody waits for ever: every caller, and every later one, gets an AdapterError
    assert all(isinstance(r, AdapterError) for r in results), results
    assert "escaped the executor" in str(results[0])
    with pytest.raises(AdapterError):
        await asyncio.wait_for(store.create(*make("later")), 5)


async def test_close_after_the_thread_died_returns_and_reopens(db: SqliteDatabase) -> None:
    store = SqliteRecordStore(db)

    def boom(conn: sqlite3.Connection) -> None:
        raise _Boom()

    with pytest.raises(AdapterError):
        await asyncio.wait_for(db.write(boom), 5)
    await asyncio.wait_for(db.close(), 5)

    record, event = make("after-reopen")
    await store.create(record, event)
    assert (await store.lookup(record.run_id)).foreign_id == "after-reopen"


# ----------------------------------------------------------------- slow reads off the loop


class _Ticker:
    """A 1 ms ticker on the event loop: the largest gap between ticks is how long the loop was
    blocked."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            last = now

    async def __aenter__(self) -> _Ticker:
        self._task = asyncio.ensure_future(self._tick())
        await asyncio.sleep(0.01)
        self.max_gap = 0.0
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        await asyncio.sleep(0.01)  # the tick after the blocking call measures its gap
        self._task.cancel()


async def _fill_records(db: SqliteDatabase, n: int, workflow: str = "wf") -> None:
    base = int(time.time() * 1_000_000)

    def fill(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO statestream_records (run_id, workflow_name, foreign_id, run_state, "
            "status, object, created_at, updated_at, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (f"run-{i:08d}", workflow, f"fid-{i}", 5, 3, b'{"n":3}', base + i, base + i, 4)
                for i in range(n)
            ),
        )

    await db.write(fill)


async def test_a_large_list_does_not_block_the_event_loop(db: SqliteDatabase) -> None:
    # Given 100,000 runs
    await _fill_records(db, 100_000)
    store = SqliteRecordStore(db)

    # When a list of all of them runs (SQL work, then 100,000 records to build)
    async with _Ticker() as ticker:
        started = time.monotonic()
        rows = await store.list("wf", limit=100_000)
        elapsed = time.monotonic() - started

    # Then the loop kept ticking meanwhile (about 30 ms at worst on an idle machine; the old
    # code, reading on the loop, blocked for the whole list, ~480 ms). The bound is relative to
    # the list's own duration, so that a loaded host that slows both does not fail it.
    assert len(rows) == 100_000
    assert ticker.max_gap < max(0.25, elapsed / 2), (
        f"the event loop was blocked for {ticker.max_gap * 1000:.0f} ms of {elapsed * 1000:.0f} ms"
    )


async def test_a_filter_that_scans_every_row_does_not_block_the_event_loop(
    db: SqliteDatabase,
) -> None:
    await _fill_records(db, 100_000)
    store = SqliteRecordStore(db)
    nothing = RecordFilter(created_before=datetime(2000, 1, 1, tzinfo=UTC))

    async with _Ticker() as ticker:
        for _ in range(5):
            assert await store.list(filter=nothing, offset=10_000) == []

    assert ticker.max_gap < 0.25, f"the event loop was blocked for {ticker.max_gap * 1000:.0f} ms"


async def test_offset_is_bounded_and_the_error_names_after(db: SqliteDatabase) -> None:
    store = SqliteRecordStore(db)
    assert await store.list(offset=SqliteRecordStore.max_offset) == []
    with pytest.raises(InvalidInput, match="after="):
        await store.list(offset=SqliteRecordStore.max_offset + 1)


async def test_deep_pages_by_after_match_the_whole_listing(db: SqliteDatabase) -> None:
    await _fill_records(db, 30_000)
    store = SqliteRecordStore(db)
    for order in (Order.ASC, Order.DESC):
        everything = [r.run_id for r in await store.list(limit=30_000, order=order)]
        paged: list[str] = []
        after: str | None = None
        while page := await store.list(limit=7_000, order=order, after=after):
            paged += [r.run_id for r in page]
            after = page[-1].run_id
        assert paged == everything
        assert len(set(paged)) == 30_000


# ----------------------------------------------------------------- lone surrogates


async def test_a_lone_surrogate_in_a_record_is_invalid_input(db: SqliteDatabase) -> None:
    store = SqliteRecordStore(db)
    record, event = make("bad-\ud800-id")

    with pytest.raises(InvalidInput, match="surrogate"):
        await store.create(record, event)

    good, good_event = make("good")
    await store.create(good, good_event)
    reason = Record(
        good.workflow_name,
        good.foreign_id,
        good.run_id,
        RunState.PAUSED,
        1,
        b"{}",
        good.created_at,
        good.updated_at,
        2,
        run_state_reason="because \udfff",
    )
    with pytest.raises(InvalidInput, match="surrogate"):
        await store.update(reason, make("good")[1])
    with pytest.raises(InvalidInput, match="surrogate"):
        await store.lookup("run-\ud800")
    with pytest.raises(InvalidInput, match="surrogate"):
        await store.latest("wf", "fid-\ud800")
    assert (await store.lookup(good.run_id)).version == 1  # the failed update changed nothing


async def test_a_lone_surrogate_in_an_event_or_timeout_is_invalid_input(
    db: SqliteDatabase,
) -> None:
    streamer = SqliteStreamer(db)
    now = datetime.now(UTC)
    with pytest.raises(InvalidInput, match="surrogate"):
        await streamer.publish("topic", [Message("key-\ud800", 1, {}, now)])
    with pytest.raises(InvalidInput, match="surrogate"):
        await streamer.publish("topic-\ud800", [Message("key", 1, {}, now)])

    timeouts = SqliteTimeoutStore(db)
    with pytest.raises(InvalidInput, match="surrogate"):
        await timeouts.create("wf", "fid-\ud800", "run", 1, 1, now + timedelta(minutes=1))
    await streamer.close()


async def test_a_lone_surrogate_in_a_header_round_trips(db: SqliteDatabase) -> None:
    # Headers are stored as JSON with ASCII escapes, so they keep any string exactly.
    streamer = SqliteStreamer(db)
    now = datetime.now(UTC)
    await streamer.publish("topic", [Message("key", 1, {"h": "x\ud800y"}, now, os.urandom(4))])
    receiver = await streamer.receiver("topic", "c")
    [event] = await asyncio.wait_for(receiver.recv(), 2)
    assert event.headers == {"h": "x\ud800y"}
    await receiver.close()
    await streamer.close()


# ----------------------------------------------------------------- opening a new file at once


async def test_processes_opening_a_new_file_at_the_same_time_all_succeed(
    tmp_path: Path,
) -> None:
    # Switching a new file to WAL can answer SQLITE_BUSY at once, without waiting for the busy
    # timeout, while another connection is switching it: the open must retry, not fail.
    for trial in range(40):
        path = tmp_path / f"new-{trial}.db"
        dbs = [SqliteDatabase(path, synchronous="NORMAL") for _ in range(3)]
        try:
            versions = await asyncio.gather(*(db.schema_version() for db in dbs))
            assert versions == [SCHEMA_VERSION] * 3
        finally:
            for db in dbs:
                await db.close()


async def test_a_failing_write_alone_in_its_transaction_leaves_nothing(
    db: SqliteDatabase,
) -> None:
    # Given a write that changes a row, then fails, with nothing else queued
    await db.write(
        lambda conn: conn.execute("INSERT INTO statestream_meta (key, value) VALUES ('x', '1')")
    )

    def change_then_fail(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE statestream_meta SET value = '2' WHERE key = 'x'")
        raise ValueError("boom")

    # When it runs, its error is raised and its change rolled back (no savepoint needed)
    with pytest.raises(ValueError, match="boom"):
        await db.write(change_then_fail)

    def value(conn: sqlite3.Connection) -> str:
        return str(conn.execute("SELECT value FROM statestream_meta WHERE key = 'x'").fetchone()[0])

    assert await db.read(value) == "1"
    # And the next write commits as usual
    await db.write(
        lambda conn: conn.execute("UPDATE statestream_meta SET value = '3' WHERE key = 'x'")
    )
    assert await db.read(value) == "3"


async def test_a_failing_rerunnable_write_in_a_batch_undoes_only_itself(
    db: SqliteDatabase, tmp_path: Path
) -> None:
    # Given a batch of rerunnable writes (run without savepoints), one of which fails
    from statestream.adapters.sqlite._db import _Op

    await db.schema_version()  # the file and its schema exist
    loop = asyncio.get_running_loop()
    runs: Counter[str] = Counter()

    def put(key: str, fail: bool = False) -> Callable[[sqlite3.Connection], str]:
        def fn(conn: sqlite3.Connection) -> str:
            runs[key] += 1
            conn.execute("INSERT INTO statestream_meta (key, value) VALUES (?, 'v')", (key,))
            if fail:
                raise ValueError(f"{key} failed")
            return key

        return fn

    batch = [
        _Op(put(key, fail=key == "b"), True, loop, loop.create_future(), rerunnable=True)
        for key in ("a", "b", "c")
    ]
    conn = sqlite3.connect(str(tmp_path / "regressions.db"), isolation_level=None)
    try:
        # When the batch runs
        db._execute(conn, batch)
        results = await asyncio.gather(*(op.future for op in batch), return_exceptions=True)
    finally:
        conn.close()

    # Then the others committed with their results, the failing one raised and left nothing
    assert results[0] == "a"
    assert isinstance(results[1], ValueError)
    assert results[2] == "c"

    def keys(c: sqlite3.Connection) -> set[str]:
        return {row[0] for row in c.execute("SELECT key FROM statestream_meta")}

    assert {"a", "c"} <= await db.read(keys)
    assert "b" not in await db.read(keys)
    # (the batch ran once optimistically, then again with savepoints)
    assert runs == {"a": 2, "b": 2, "c": 1}
