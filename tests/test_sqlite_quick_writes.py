"""Quick writes that find the SQLite database idle run and commit on the caller's thread.

What must hold either way: a write is answered only once committed; the worker still groups
the writes that arrive while it is busy; another process holding the write lock never stalls
the event loop (the worker waits for it, up to ``busy_timeout``); a write that fails leaves
nothing behind.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from statestream.adapters.sqlite import SqliteDatabase
from statestream.errors import AdapterError


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    database = SqliteDatabase(tmp_path / "quick.db")
    await database.schema_version()  # the worker has opened the file and its schema
    yield database
    await asyncio.wait_for(database.close(), 5)


def put(key: str, thread: list[str] | None = None) -> Callable[[sqlite3.Connection], str]:
    def fn(conn: sqlite3.Connection) -> str:
        if thread is not None:
            thread.append(threading.current_thread().name)
        conn.execute("INSERT INTO statestream_meta (key, value) VALUES (?, 'v')", (key,))
        return key

    return fn


def keys(path: Path) -> set[str]:
    """The keys committed, as another connection (another process) sees them."""
    conn = sqlite3.connect(str(path))
    try:
        return {row[0] for row in conn.execute("SELECT key FROM statestream_meta")}
    finally:
        conn.close()


async def test_an_idle_quick_write_commits_on_the_callers_thread(db: SqliteDatabase) -> None:
    threads: list[str] = []
    commits = db.commits
    assert await db.write(put("a", threads), quick=True) == "a"
    # committed before it returned: another connection sees it
    assert "a" in keys(db.path)
    assert threads == [threading.current_thread().name]
    assert db.commits == commits + 1
    # a write that is not quick still goes to the worker
    await db.write(put("b", threads))
    assert threads[-1].startswith("statestream-sqlite:")


async def test_quick_writes_of_one_turn_share_the_workers_commits(db: SqliteDatabase) -> None:
    commits = db.commits
    results = await asyncio.gather(*(db.write(put(f"k{i}"), quick=True) for i in range(50)))
    assert results == [f"k{i}" for i in range(50)]
    assert {f"k{i}" for i in range(50)} <= keys(db.path)
    # at most one ran at once; the others were batched on the worker
    assert db.commits - commits < 10


async def test_a_failing_quick_write_leaves_nothing(db: SqliteDatabase) -> None:
    def fails(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO statestream_meta (key, value) VALUES ('half', 'v')")
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await db.write(fails, quick=True)
    assert "half" not in keys(db.path)
    await asyncio.sleep(0)  # the next turn of the loop: one write at once per turn

    class Interrupt(BaseException):
        pass

    def interrupted(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO statestream_meta (key, value) VALUES ('cut', 'v')")
        raise Interrupt

    with pytest.raises(Interrupt):
        await db.write(interrupted, quick=True)
    assert "cut" not in keys(db.path)
    await asyncio.sleep(0)
    # and the database goes on working, on both paths
    await db.write(put("after"), quick=True)
    await db.write(put("after-worker"))
    assert {"after", "after-worker"} <= keys(db.path)


async def test_another_process_holding_the_lock_does_not_stall_the_loop(
    db: SqliteDatabase,
) -> None:
    # Given another connection (as another process would) holding the write lock
    other = sqlite3.connect(str(db.path), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.ensure_future(ticker())
    try:
        # When a quick write is made
        write = asyncio.ensure_future(db.write(put("waited"), quick=True))
        await asyncio.sleep(0.3)
        # Then it waits on the worker, and the loop goes on meanwhile
        assert not write.done()
        assert ticks >= 5
        other.execute("COMMIT")
        assert await asyncio.wait_for(write, 5) == "waited"
        assert "waited" in keys(db.path)
    finally:
        ticking.cancel()
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


async def test_the_worker_still_gives_up_after_busy_timeout(tmp_path: Path) -> None:
    database = SqliteDatabase(tmp_path / "busy.db", busy_timeout=0.2)
    await database.schema_version()
    other = sqlite3.connect(str(database.path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(AdapterError):
            await asyncio.wait_for(database.write(put("never"), quick=True), 5)
    finally:
        other.execute("ROLLBACK")
        other.close()
        await database.close()
