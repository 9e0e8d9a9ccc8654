"""The SQLite database file: bad files, locks, a full disk, group commit, two processes.

What the issue asks of a corrupted or foreign file, a schema from a newer release, a locked
database or a full disk: a clear error that names the file and what to do, and no partial write
left behind. Two ``SqliteDatabase`` objects on one file stand for two processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

import pytest

from helpers import eventually
from statestream import Builder, Message, OutboxEvent, ProcessState, Record, Run, RunState
from statestream.adapters.sql._schema import SchemaError
from statestream.adapters.sqlite import (
    SCHEMA_VERSION,
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteStreamer,
)
from statestream.errors import (
    AdapterError,
    RecordNotFound,
    VersionConflict,
    WorkflowInProgress,
)

# ------------------------------------------------------------------------------------ helpers

Opener = Callable[..., SqliteDatabase]


def make(
    foreign_id: str, size: int = 16, *, outbox_id: str | None = None
) -> tuple[Record, OutboxEvent]:
    """A new run's record (version 1) and its outbox event."""
    now = datetime.now(UTC)
    run_id = uuid.uuid4().hex
    record = Record("wf", foreign_id, run_id, RunState.INITIATED, 1, os.urandom(size), now, now)
    message = Message(run_id, 1, {"run_id": run_id}, now)
    return record, OutboxEvent(outbox_id or uuid.uuid4().hex, "wf", "wf-1", message)


def next_version(record: Record, *, version: int | None = None) -> tuple[Record, OutboxEvent]:
    now = datetime.now(UTC)
    changed = Record(
        record.workflow_name,
        record.foreign_id,
        record.run_id,
        RunState.RUNNING,
        2,
        b"next",
        record.created_at,
        now,
        version if version is not None else record.version + 1,
    )
    message = Message(record.run_id, 2, {}, now)
    return changed, OutboxEvent(uuid.uuid4().hex, "wf", "wf-2", message)


async def outbox_ids(db: SqliteDatabase) -> set[str]:
    rows = await db.read(lambda c: c.execute("SELECT id FROM statestream_outbox").fetchall())
    return {row[0] for row in rows}


async def count_records(db: SqliteDatabase) -> int:
    return await db.read(
        lambda c: c.execute("SELECT COUNT(*) FROM statestream_records").fetchone()[0]
    )


def _unblock(db: SqliteDatabase) -> None:
    """Answer the stop requests that a dead database thread will never see (see the close bug
    below), so that the executor thread waiting on them ends with the test."""
    while True:
        try:
            item = db._queue.get_nowait()
        except Exception:
            return
        done = getattr(item, "done", None)
        if isinstance(done, threading.Event):
            done.set()


async def safe_close(db: SqliteDatabase) -> bool:
    """``db.close()``, but without hanging the suite if it hangs; returns whether it returned."""
    try:
        await asyncio.wait_for(db.close(), 0.5)
    except TimeoutError:
        _unblock(db)
        return False
    return True


async def open_error(db: SqliteDatabase) -> AdapterError:
    """The error the first operation on a bad file raises.

    Retries an operation that hangs instead (up to a few times): the first operation on a file
    that fails to open may hang for ever (see the race bug below); this keeps the other checks
    of a bad file independent of it.
    """
    for _ in range(20):
        try:
            await asyncio.wait_for(db.schema_version(), 0.3)
        except AdapterError as exc:
            return exc
        except TimeoutError:
            continue
        pytest.fail("the bad file was opened without an error")
    pytest.fail("every operation on the bad file hung")


def files_in(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


async def sqlite_threads_ended(path: Path, timeout: float = 2.0) -> None:
    """Wait until the database threads of ``path`` have exited."""
    for thread in threading.enumerate():
        if thread.name == f"statestream-sqlite:{path.name}":
            await asyncio.to_thread(thread.join, timeout)


@pytest.fixture
async def opened() -> AsyncIterator[Opener]:
    """Makes SqliteDatabase objects that are closed (safely) at the end of the test."""
    made: list[SqliteDatabase] = []

    def make_db(path: Path, **kwargs: Any) -> SqliteDatabase:
        db = SqliteDatabase(path, **kwargs)
        made.append(db)
        return db

    yield make_db
    for db in made:
        await safe_close(db)


# ------------------------------------------------------------------------ schema, reopening


async def test_schema_is_created_on_first_use_with_its_version(
    tmp_path: Path, opened: Opener
) -> None:
    path = tmp_path / "new.db"
    db = opened(path)
    assert not path.exists()  # nothing happens before the first operation
    assert await db.schema_version() == SCHEMA_VERSION

    def pragmas(conn: sqlite3.Connection) -> tuple[str, int, set[str]]:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        return mode, sync, tables

    mode, sync, tables = await db.write(pragmas)  # the writing connection's settings
    assert mode == "wal"
    assert sync == 2  # FULL by default
    assert {
        "statestream_meta",
        "statestream_records",
        "statestream_outbox",
        "statestream_events",
        "statestream_cursors",
        "statestream_timeouts",
        "statestream_leases",
    } <= tables


async def test_reopening_a_file_keeps_its_data(tmp_path: Path) -> None:
    path = tmp_path / "keep.db"
    db = SqliteDatabase(path, synchronous="NORMAL")
    store = SqliteRecordStore(db)
    record, event = make("kept")
    await store.create(record, event)
    assert await db.write(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]) == 1
    await db.close()

    again = SqliteDatabase(path)
    try:
        assert (await SqliteRecordStore(again).lookup(record.run_id)).object == record.object
        assert await outbox_ids(again) == {event.id}
        assert await again.schema_version() == SCHEMA_VERSION
    finally:
        await again.close()


async def test_close_then_use_reopens(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "re.db")
    try:
        await db.schema_version()
        await db.close()
        await db.close()  # twice is fine
        assert await db.schema_version() == SCHEMA_VERSION
    finally:
        await db.close()


@pytest.mark.parametrize("value", ["OFF", "EXTRA", "normal", "", "FULL; DROP TABLE x"])
def test_synchronous_other_than_full_or_normal_is_rejected(tmp_path: Path, value: str) -> None:
    path = tmp_path / "sync.db"
    with pytest.raises(AdapterError, match="synchronous must be FULL or NORMAL"):
        SqliteDatabase(path, synchronous=value)  # type: ignore[arg-type]
    assert not path.exists()


async def test_missing_directory_names_it(tmp_path: Path, opened: Opener) -> None:
    path = tmp_path / "no" / "such" / "dir" / "x.db"
    err = await open_error(opened(path))
    assert str(path.parent) in str(err)
    assert not (tmp_path / "no").exists()


# ------------------------------------------------------------------------------- bad files


async def test_not_an_sqlite_file_is_refused_and_left_unchanged(
    tmp_path: Path, opened: Opener
) -> None:
    path = tmp_path / "junk.db"
    data = os.urandom(8192)
    path.write_bytes(data)
    db = opened(path)
    err = await open_error(db)
    assert str(path) in str(err)
    assert "not an SQLite database" in str(err)
    assert "choose another path" in str(err)
    # Every later operation fails the same way (the file is retried, never half-opened).
    again = await open_error(db)
    assert str(path) in str(again)
    assert path.read_bytes() == data
    assert files_in(path) == ["junk.db"]  # no -wal / -shm left behind


async def test_corrupted_database_names_the_file_and_the_remedy(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    db = SqliteDatabase(path)
    store = SqliteRecordStore(db)
    records = [make(f"f{i}", 500)[0] for i in range(40)]
    for record in records:
        await store.create(record, make("x")[1])
    await db.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        root = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'statestream_records'"
        ).fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    with path.open("r+b") as f:  # overwrite the records table's root page
        f.seek((root - 1) * page_size)
        f.write(b"\xff" * page_size)

    db = SqliteDatabase(path)
    try:
        with pytest.raises(AdapterError) as info:
            await SqliteRecordStore(db).lookup(records[3].run_id)
        assert str(path) in str(info.value)
        assert "corrupted" in str(info.value)
        assert "backup" in str(info.value)
        assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    finally:
        await db.close()


async def test_foreign_database_is_refused(tmp_path: Path, opened: Opener) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('ada'), ('grace')")
        conn.commit()
    err = await open_error(opened(path))
    assert str(path) in str(err)
    assert "allow_foreign" in str(err)
    assert "customers" in str(err)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert tables == {"customers"}  # no statestream table was added
        assert conn.execute("SELECT name FROM customers ORDER BY id").fetchall() == [
            ("ada",),
            ("grace",),
        ]


async def test_refused_foreign_database_is_left_byte_for_byte_unchanged(
    tmp_path: Path, opened: Opener
) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.commit()
    before = path.read_bytes()
    await open_error(opened(path))
    assert path.read_bytes() == before  # header bytes 18/19 become 2 (WAL) today
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


async def test_allow_foreign_adds_the_tables_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('ada')")
        conn.commit()
    db = SqliteDatabase(path, allow_foreign=True)
    try:
        store = SqliteRecordStore(db)
        record, event = make("shared")
        await store.create(record, event)
        assert (await store.lookup(record.run_id)).run_id == record.run_id
        assert await db.schema_version() == SCHEMA_VERSION
    finally:
        await db.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT name FROM customers").fetchall() == [("ada",)]
    # Once the statestream tables are there, the file is ours: no flag needed any more.
    db = SqliteDatabase(path)
    try:
        assert (await SqliteRecordStore(db).lookup(record.run_id)).run_id == record.run_id
    finally:
        await db.close()


async def test_schema_from_a_newer_release_is_refused(tmp_path: Path, opened: Opener) -> None:
    path = tmp_path / "future.db"
    db = SqliteDatabase(path)
    record, event = make("old")
    await SqliteRecordStore(db).create(record, event)
    await db.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE statestream_meta SET value = '999' WHERE key = 'schema_version'")
        conn.commit()

    err = await open_error(opened(path))
    assert isinstance(err, SchemaError)  # as the servers' newer schema is
    text = str(err)
    assert str(path) in text
    assert "newer" in text
    assert "999" in text
    assert "upgrade statestream" in text
    with contextlib.closing(sqlite3.connect(path)) as conn:  # not downgraded, data intact
        assert conn.execute(
            "SELECT value FROM statestream_meta WHERE key = 'schema_version'"
        ).fetchone() == ("999",)
        assert conn.execute("SELECT run_id FROM statestream_records").fetchall() == [
            (record.run_id,)
        ]


async def test_first_operation_on_a_bad_file_never_hangs(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(os.urandom(4096))
    for attempt in range(60):  # the race is lost about one time in four
        db = SqliteDatabase(path)
        try:
            await asyncio.wait_for(db.schema_version(), 0.5)
        except AdapterError:
            pass
        except TimeoutError:
            pytest.fail(f"operation {attempt + 1} on the bad file never returned")
        else:
            pytest.fail("the bad file was opened without an error")
        finally:
            await safe_close(db)


async def test_close_after_a_failed_open_returns(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(os.urandom(4096))
    db = SqliteDatabase(path)
    await open_error(db)
    await sqlite_threads_ended(path)  # it exits after failing every queued operation
    assert await safe_close(db), "close() hung"


# ---------------------------------------------------------------------------------- locking


async def test_locked_database_fails_fast_names_the_file_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    setup = SqliteDatabase(path)
    await setup.schema_version()
    await setup.close()

    other = sqlite3.connect(path, isolation_level=None)  # another process
    db = SqliteDatabase(path, busy_timeout=0.2)
    store = SqliteRecordStore(db)
    try:
        other.execute("BEGIN EXCLUSIVE")
        record, event = make("blocked")
        began = time.monotonic()
        with pytest.raises(AdapterError) as info:
            await store.create(record, event)
        assert time.monotonic() - began < 1.0
        text = str(info.value)
        assert str(path) in text
        assert "locked" in text or "busy" in text
        assert "busy_timeout" in text
        # Readers are not blocked by a writer in WAL mode.
        with pytest.raises(RecordNotFound):
            await store.lookup(record.run_id)
        other.execute("ROLLBACK")

        await store.create(record, event)  # the same write, once the lock is gone
        assert (await store.lookup(record.run_id)).version == 1
        assert await outbox_ids(db) == {event.id}
    finally:
        other.close()
        await db.close()


async def test_lock_while_opening_a_new_file_is_retried_on_the_next_operation(
    tmp_path: Path,
) -> None:
    path = tmp_path / "fresh.db"
    other = sqlite3.connect(path, isolation_level=None)
    db = SqliteDatabase(path, busy_timeout=0.2)
    try:
        other.execute("BEGIN EXCLUSIVE")  # a new file: rollback journal, even reads wait
        with pytest.raises(AdapterError) as info:
            await asyncio.wait_for(db.schema_version(), 5.0)
        assert str(path) in str(info.value)
        assert "locked" in str(info.value)
        other.execute("COMMIT")
        assert await db.schema_version() == SCHEMA_VERSION
    finally:
        other.close()
        await db.close()


# -------------------------------------------------------------------------------- full disk


async def _fill(db: SqliteDatabase, store: SqliteRecordStore) -> tuple[list[Record], Any, Any]:
    """Cap the file a few pages above its size and write runs until a write fails."""

    def cap(conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        # A setting of the connection, not of the transaction: it stays after this write.
        return int(conn.execute(f"PRAGMA max_page_count = {pages + 3}").fetchone()[0])

    await store.create(*make("first"))
    await db.write(cap)  # the writing connection
    written: list[Record] = []
    for i in range(200):
        record, event = make(f"fill-{i}", 3000)
        try:
            await store.create(record, event)
        except AdapterError as exc:
            return written, (record, event), exc
        written.append(record)
    pytest.fail("max_page_count did not fill the database")


async def test_full_disk_leaves_no_half_written_run(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "full.db")
    store = SqliteRecordStore(db)
    try:
        written, (failed, failed_event), err = await _fill(db, store)
        assert str(db.path) in str(err)
        with pytest.raises(RecordNotFound):
            await store.lookup(failed.run_id)
        assert failed_event.id not in await outbox_ids(db)
        # Reads still work, and everything written before is there with its outbox row.
        for record in written:
            assert (await store.lookup(record.run_id)).object == record.object
        assert await count_records(db) == len(written) + 1
        assert len(await outbox_ids(db)) == len(written) + 1
        # Space freed: the same write goes through.
        await db.write(lambda c: c.execute("PRAGMA max_page_count = 1000000").fetchone())
        await store.create(failed, failed_event)
        assert (await store.lookup(failed.run_id)).version == 1
    finally:
        await db.close()


async def test_full_disk_error_says_the_disk_is_full(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "full.db")
    try:
        _, _, err = await _fill(db, SqliteRecordStore(db))
        assert "database or disk is full" in str(err)  # SQLite's own words (SQLITE_FULL)
        assert "free space" in str(err)  # the hint
    finally:
        await db.close()


# ------------------------------------------------------------------------------ group commit


async def test_group_commit_isolates_each_failing_write(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "group.db")
    store = SqliteRecordStore(db)
    try:
        existing, existing_event = make("existing")
        await store.create(existing, existing_event)
        commits = db.commits

        # Hold the database thread (in a write of its own) so that every write below is queued
        # into one batch.
        gate, holding = threading.Event(), threading.Event()

        def hold(conn: sqlite3.Connection) -> None:
            holding.set()
            gate.wait(5)

        held = asyncio.ensure_future(db.write(hold))
        assert await asyncio.to_thread(holding.wait, 5)

        good = [make(f"good-{i}") for i in range(20)]
        dup, dup_event = make("good-7")  # an unfinished run of that foreign ID is in the batch
        reused, reused_event = make("reused", outbox_id=existing_event.id)  # outbox row fails
        stale, stale_event = next_version(existing, version=5)  # expects version 4
        calls = [store.create(r, e) for r, e in good[:10]]
        calls += [store.create(dup, dup_event), store.create(reused, reused_event)]
        calls += [store.update(stale, stale_event)]
        calls += [store.create(r, e) for r, e in good[10:]]
        tasks = [asyncio.ensure_future(c) for c in calls]
        await asyncio.sleep(0.05)  # every task has queued its write
        gate.set()
        await held
        results = await asyncio.gather(*tasks, return_exceptions=True)

        assert db.commits == commits + 2  # the holding write, then one for the whole batch
        errors = [r for r in results if r is not None]
        assert len(errors) == 3
        assert isinstance(results[10], WorkflowInProgress)
        assert isinstance(results[11], AdapterError)
        assert "UNIQUE" in str(results[11])
        assert isinstance(results[12], VersionConflict)

        for record, _ in good:
            assert (await store.lookup(record.run_id)).version == 1
        for record in (dup, reused):  # nothing of the failed writes is left
            with pytest.raises(RecordNotFound):
                await store.lookup(record.run_id)
        assert (await store.lookup(existing.run_id)).version == 1
        assert await outbox_ids(db) == {existing_event.id} | {e.id for _, e in good}
    finally:
        await db.close()


async def test_group_commit_batches_concurrent_writes(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "batch.db")
    store = SqliteRecordStore(db)
    try:
        await db.schema_version()
        commits, writes = db.commits, db.writes
        await asyncio.gather(*(store.create(*make(f"r-{i}")) for i in range(300)))
        assert db.writes - writes == 300
        assert db.commits - commits < 300
        assert await count_records(db) == 300
    finally:
        await db.close()


# ---------------------------------------------------------------- two processes, one file


async def test_roles_are_exclusive_across_databases_and_taken_over_after_ttl(
    tmp_path: Path,
) -> None:
    path = tmp_path / "roles.db"
    ttl, poll = 0.4, 0.05
    first_db, second_db = SqliteDatabase(path), SqliteDatabase(path)
    first = SqliteRoleScheduler(first_db, ttl=ttl, poll_interval=poll)
    second = SqliteRoleScheduler(second_db, ttl=ttl, poll_interval=poll)
    try:
        lease = await first.acquire("relay")
        waiting = asyncio.ensure_future(second.acquire("relay"))
        await asyncio.sleep(3 * ttl)  # the holder renews: the role stays taken
        assert not waiting.done()

        # The holder stops renewing, as a frozen or dead process does. (A hung write cannot
        # stand for it: it would hold SQLite's write lock, and nobody could take anything.)
        lease._renewer.cancel()
        stalled = time.monotonic()
        taken = await asyncio.wait_for(waiting, ttl + poll + 1.0)
        assert time.monotonic() - stalled <= ttl + poll + 0.5
        assert taken.holder != lease.holder

        # The old holder's renewal is refused now: that is how a live holder learns of it.
        assert await first._extend("relay", lease.holder) is False
        await lease.release()  # must not delete the new holder's lease
        holder = await second_db.read(
            lambda c: c.execute(
                "SELECT holder FROM statestream_leases WHERE role = 'relay'"
            ).fetchone()
        )
        assert holder == (taken.holder,)
        contender = asyncio.ensure_future(first.acquire("relay"))
        await asyncio.sleep(2 * ttl)
        assert not contender.done()
        await taken.release()
        again = await asyncio.wait_for(contender, poll + 1.0)
        await again.release()
    finally:
        await first_db.close()
        await second_db.close()


async def test_a_holder_whose_lease_was_taken_learns_it_at_its_next_renewal(
    tmp_path: Path,
) -> None:
    path = tmp_path / "roles.db"
    ttl = 0.3
    first_db, second_db = SqliteDatabase(path), SqliteDatabase(path)
    try:
        lease = await SqliteRoleScheduler(first_db, ttl=ttl).acquire("relay")
        # Another process took the row over (say its clock ran ahead and it saw it expired).
        stolen = await second_db.write(
            lambda c: (
                c.execute(
                    "UPDATE statestream_leases SET holder = 'other', expires_at = ? "
                    "WHERE role = 'relay'",
                    (time.time() + 60,),
                ).rowcount
            )
        )
        assert stolen == 1
        await asyncio.wait_for(lease.lost(), ttl / 3 + 1.0)
        await lease.release()
        assert await second_db.read(
            lambda c: c.execute("SELECT holder FROM statestream_leases").fetchall()
        ) == [("other",)]
    finally:
        await first_db.close()
        await second_db.close()


class Status(IntEnum):
    A = 1
    B = 2


@dataclass
class Obj:
    n: int = 0


async def test_losing_a_role_leaves_no_orphan_receiver_task(tmp_path: Path) -> None:
    path = tmp_path / "lost.db"
    db = SqliteDatabase(path)
    thief = SqliteDatabase(path)
    streamer = SqliteStreamer(db)

    async def step(run: Run[Obj, Status]) -> Status:
        return Status.B

    b: Builder[Obj, Status] = Builder("lost", Obj, Status)
    b.add_step(Status.A, step, Status.B, polling_frequency=0.05)
    wf = b.build(streamer, SqliteRecordStore(db), SqliteRoleScheduler(db, ttl=0.3))
    problems: list[str] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, ctx: problems.append(str(ctx.get("message"))))
    try:
        await wf.start()

        def states() -> set[ProcessState]:
            return {info.state for info in wf.process_info().values()}

        # Every role held, its consumer idle in recv() (waited for, not slept: on a loaded
        # machine the first acquisitions may take longer than any fixed sleep)
        await eventually(lambda: states() == {ProcessState.RUNNING}, timeout=20.0)
        await asyncio.sleep(0.1)
        # Another process takes every role, also one this one lost meanwhile to a stalled loop
        # (its row is deleted then, and an UPDATE alone would miss it; the lease is short).
        roles = [(info.role, time.time() + 60) for info in wf.process_info().values()]
        stolen = await thief.write(
            lambda c: (
                c.executemany(
                    "INSERT INTO statestream_leases (role, holder, expires_at) "
                    "VALUES (?, 'thief', ?) ON CONFLICT (role) DO UPDATE SET "
                    "holder = excluded.holder, expires_at = excluded.expires_at",
                    roles,
                ).rowcount
            )
        )
        assert stolen == len(roles) >= 2
        # Renewals fail: every role is lost (and not acquired again: the thief holds them)
        await eventually(lambda: ProcessState.RUNNING not in states(), timeout=20.0)
        await wf.stop()
        gc.collect()
        await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(previous)
        await streamer.close()
        await db.close()
        await thief.close()
    assert problems == []
