"""The SQLite schema's versions: a file written by an older release migrates and keeps its data.

``V1_SCHEMA`` and ``V2_SCHEMA`` are the DDL of schema versions 1 and 2, copied here as the
releases that wrote them had it, so that the tests keep building such files whatever the code's
current schema is.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from statestream.adapters.sqlite import (
    SCHEMA_VERSION,
    SqliteDatabase,
    SqliteRecordStore,
    SqliteRoleScheduler,
    SqliteTimeoutStore,
    _schema,
)
from statestream.adapters.sqlite._dialect import SQLITE
from statestream.cli import main

V1_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS statestream_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS statestream_records (
        run_id TEXT PRIMARY KEY,
        workflow_name TEXT NOT NULL,
        foreign_id TEXT NOT NULL,
        run_state INTEGER NOT NULL,
        status INTEGER NOT NULL,
        object BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        version INTEGER NOT NULL,
        run_state_reason TEXT NOT NULL DEFAULT '',
        status_description TEXT NOT NULL DEFAULT '',
        auto_resumes INTEGER NOT NULL DEFAULT 0,
        active_key TEXT UNIQUE
    )""",
    """CREATE INDEX IF NOT EXISTS statestream_records_by_foreign_id
        ON statestream_records (workflow_name, foreign_id)""",
    """CREATE TABLE IF NOT EXISTS statestream_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        workflow_name TEXT NOT NULL,
        topic TEXT NOT NULL,
        key TEXT NOT NULL,
        type INTEGER NOT NULL,
        headers TEXT NOT NULL,
        data BLOB NOT NULL,
        created_at INTEGER NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS statestream_outbox_by_workflow
        ON statestream_outbox (workflow_name, seq)""",
    """CREATE TABLE IF NOT EXISTS statestream_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        key TEXT NOT NULL,
        type INTEGER NOT NULL,
        headers TEXT NOT NULL,
        data BLOB NOT NULL,
        created_at INTEGER NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS statestream_events_by_topic
        ON statestream_events (topic, id)""",
    """CREATE TABLE IF NOT EXISTS statestream_cursors (
        topic TEXT NOT NULL,
        name TEXT NOT NULL,
        last_id INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (topic, name)
    )""",
    """CREATE TABLE IF NOT EXISTS statestream_timeouts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        workflow_name TEXT NOT NULL,
        foreign_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        status INTEGER NOT NULL,
        run_version INTEGER NOT NULL,
        expire_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        state INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE INDEX IF NOT EXISTS statestream_timeouts_due
        ON statestream_timeouts (workflow_name, status, state, expire_at)""",
    """CREATE TABLE IF NOT EXISTS statestream_leases (
        role TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
]

#: Version 2: as version 1 wrote it, plus the events' key hash, one timer per visit, the parked
#: events.
V2_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS statestream_meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS statestream_records (
        run_id TEXT PRIMARY KEY,
        workflow_name TEXT NOT NULL,
        foreign_id TEXT NOT NULL,
        run_state INTEGER NOT NULL,
        status INTEGER NOT NULL,
        object BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        version INTEGER NOT NULL,
        run_state_reason TEXT NOT NULL DEFAULT '',
        status_description TEXT NOT NULL DEFAULT '',
        auto_resumes INTEGER NOT NULL DEFAULT 0,
        active_key TEXT UNIQUE
    )""",
    """CREATE INDEX IF NOT EXISTS statestream_records_by_foreign_id
        ON statestream_records (workflow_name, foreign_id)""",
    # (workflow_name, rowid): one workflow's runs in creation order, for keyset paging.
    """CREATE INDEX IF NOT EXISTS statestream_records_by_workflow
        ON statestream_records (workflow_name)""",
    """CREATE TABLE IF NOT EXISTS statestream_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        workflow_name TEXT NOT NULL,
        topic TEXT NOT NULL,
        key TEXT NOT NULL,
        type INTEGER NOT NULL,
        headers TEXT NOT NULL,
        data BLOB NOT NULL,
        created_at INTEGER NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS statestream_outbox_by_workflow
        ON statestream_outbox (workflow_name, seq)""",
    """CREATE TABLE IF NOT EXISTS statestream_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        key TEXT NOT NULL,
        type INTEGER NOT NULL,
        headers TEXT NOT NULL,
        data BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        key_hash INTEGER NOT NULL DEFAULT 0
    )""",
    # key_hash in the index: a sharded receiver skips other shards' rows in the index, without
    # reading them from the table.
    """CREATE INDEX IF NOT EXISTS statestream_events_by_topic
        ON statestream_events (topic, id, key_hash)""",
    """CREATE TABLE IF NOT EXISTS statestream_cursors (
        topic TEXT NOT NULL,
        name TEXT NOT NULL,
        last_id INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (topic, name)
    )""",
    """CREATE TABLE IF NOT EXISTS statestream_timeouts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        workflow_name TEXT NOT NULL,
        foreign_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        status INTEGER NOT NULL,
        run_version INTEGER NOT NULL,
        expire_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        state INTEGER NOT NULL DEFAULT 0,
        claimed_until INTEGER
    )""",
    """CREATE UNIQUE INDEX IF NOT EXISTS statestream_timeouts_visit
        ON statestream_timeouts (workflow_name, run_id, status, run_version)""",
    # Pending timers only: completed and cancelled ones stay out of the pollers' index.
    """CREATE INDEX IF NOT EXISTS statestream_timeouts_due
        ON statestream_timeouts (workflow_name, status, expire_at) WHERE state = 0""",
    """CREATE TABLE IF NOT EXISTS statestream_leases (
        role TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS statestream_parked (
        id TEXT PRIMARY KEY,
        workflow_name TEXT NOT NULL,
        consumer TEXT NOT NULL,
        event_id INTEGER NOT NULL,
        topic TEXT NOT NULL,
        key TEXT NOT NULL,
        type INTEGER NOT NULL,
        headers TEXT NOT NULL,
        data BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        error TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        parked_at INTEGER NOT NULL,
        retry_requested INTEGER NOT NULL DEFAULT 0
    )""",
    """CREATE INDEX IF NOT EXISTS statestream_parked_by_workflow
        ON statestream_parked (workflow_name, parked_at)""",
]


NOW = datetime.now(UTC).replace(microsecond=0)
US = int(NOW.timestamp()) * 1_000_000
PENDING, COMPLETED, CANCELLED = 0, 1, 2
EVENT_KEYS = [f"run-{i}" for i in range(40)] + ["r\u00e9sum\u00e9", "\u65e5\u672c"]
#: (run_id, state) of version 1 timers of one visit each (status 3, run version 2): several rows
#: for one visit were possible then. The row the migration keeps is marked.
TIMERS = [
    ("lone", PENDING, True),
    ("fired-twice", PENDING, False),
    ("fired-twice", COMPLETED, True),  # the visit's timeout fired: this one stays
    ("pending-twice", PENDING, True),  # the first pending one stays
    ("pending-twice", PENDING, False),
    ("cancelled-then-pending", CANCELLED, False),
    ("cancelled-then-pending", PENDING, True),
    ("cancelled-twice", CANCELLED, True),
    ("cancelled-twice", CANCELLED, False),
]


def write_v1_file(path: Path) -> None:
    """A file as schema version 1 wrote it, with data in every table."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for statement in V1_SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT INTO statestream_meta VALUES ('schema_version', '1')")
    for i in range(3):
        conn.execute(
            "INSERT INTO statestream_records (run_id, workflow_name, foreign_id, run_state, "
            "status, object, created_at, updated_at, version, run_state_reason, active_key) "
            "VALUES (?, 'wf', ?, 2, 2, ?, ?, ?, 3, 'why', ?)",
            (f"run-{i}", f"fid-{i}", b'{"n":%d}' % i, US + i, US + 10 + i, f"wf\x00fid-{i}"),
        )
    conn.execute(
        "INSERT INTO statestream_outbox (id, workflow_name, topic, key, type, headers, data, "
        "created_at) VALUES ('ob-1', 'wf', 'wf-2', 'run-0', 2, '{}', x'', ?)",
        (US,),
    )
    for key in EVENT_KEYS:
        conn.execute(
            "INSERT INTO statestream_events (topic, key, type, headers, data, created_at) "
            "VALUES ('wf-2', ?, 2, '{\"run_id\":\"x\"}', x'00ff', ?)",
            (key, US),
        )
    conn.execute("INSERT INTO statestream_cursors VALUES ('wf-2', 'consumer', 7, ?)", (US,))
    for run_id, state, _ in TIMERS:
        conn.execute(
            "INSERT INTO statestream_timeouts (workflow_name, foreign_id, run_id, status, "
            "run_version, expire_at, created_at, state) VALUES ('wf', 'fid', ?, 3, 2, ?, ?, ?)",
            (run_id, US + 60_000_000, US, state),
        )
    conn.execute("INSERT INTO statestream_leases VALUES ('role', 'holder', 1.5)")
    conn.execute("COMMIT")
    conn.close()


def rows(path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def shape(path: Path) -> dict[str, Any]:
    """Every table's columns and every index's definition: what must match between a migrated
    file and a new one."""
    conn = sqlite3.connect(path)
    try:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        result: dict[str, Any] = {}
        for table in tables:
            result[table] = conn.execute(f"PRAGMA table_xinfo({table})").fetchall()
        for name, table, sql in conn.execute(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name"
        ):
            columns = conn.execute(f"PRAGMA index_xinfo({name})").fetchall()
            result[f"index {name}"] = (table, " ".join((sql or "").split()), columns)
        return result
    finally:
        conn.close()


@pytest.fixture
def v1_file(tmp_path: Path) -> Path:
    path = tmp_path / "v1.db"
    write_v1_file(path)
    return path


async def migrate(path: Path) -> None:
    db = SqliteDatabase(path)
    try:
        assert await db.schema_version() == SCHEMA_VERSION
    finally:
        await db.close()


# ------------------------------------------------------------------------------------ tests


def test_the_current_version_is_4() -> None:
    # A bump needs a file NNN_name.sql in adapters/sql/schema/sqlite/ (it becomes
    # _schema._MIGRATIONS[NNN - 1]) and a test here that migrates a file of the version before.
    assert SCHEMA_VERSION == 4
    assert sorted(_schema._MIGRATIONS) == list(range(1, SCHEMA_VERSION))


def test_the_schema_ships_as_package_data_one_file_per_version() -> None:
    folder = resources.files("statestream.adapters.sql").joinpath("schema", "sqlite")
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sql"))
    assert [int(name[:3]) for name in names] == list(range(1, SCHEMA_VERSION + 1))
    assert SQLITE.sql("SELECT $1 FROM {prefix}meta WHERE key = $2", "statestream_") == (
        "SELECT ? FROM statestream_meta WHERE key = ?"
    )


async def test_a_migrated_file_has_the_same_schema_as_a_new_one(
    v1_file: Path, tmp_path: Path
) -> None:
    await migrate(v1_file)
    await migrate(tmp_path / "new.db")

    assert shape(v1_file) == shape(tmp_path / "new.db")


async def test_migration_keeps_records_outbox_cursors_and_leases(v1_file: Path) -> None:
    await migrate(v1_file)

    db = SqliteDatabase(v1_file)
    try:
        store = SqliteRecordStore(db)
        run = await store.lookup("run-1")
        assert (run.foreign_id, run.version, run.run_state_reason, run.object) == (
            "fid-1",
            3,
            "why",
            b'{"n":1}',
        )
        assert (await store.latest("wf", "fid-2")).run_id == "run-2"
        assert [r.run_id for r in await store.list("wf")] == ["run-0", "run-1", "run-2"]
        [outbox] = await store.list_outbox("wf", 10)
        assert (outbox.id, outbox.topic, outbox.message.key) == ("ob-1", "wf-2", "run-0")
    finally:
        await db.close()
    assert rows(v1_file, "SELECT topic, name, last_id FROM statestream_cursors") == [
        ("wf-2", "consumer", 7)
    ]
    assert rows(v1_file, "SELECT * FROM statestream_leases") == [("role", "holder", 1.5)]


async def test_migration_computes_the_key_hash_of_existing_events(v1_file: Path) -> None:
    await migrate(v1_file)

    found = rows(v1_file, "SELECT key, key_hash, data FROM statestream_events ORDER BY id")
    assert [key for key, _, _ in found] == EVENT_KEYS
    for key, stored, data in found:
        assert stored == zlib.crc32(key.encode("utf-8"))
        assert data == b"\x00\xff"


async def test_migration_keeps_one_timer_per_visit(v1_file: Path) -> None:
    before = rows(v1_file, "SELECT id FROM statestream_timeouts ORDER BY id")

    await migrate(v1_file)

    kept = [row_id for (row_id,), (_, _, keep) in zip(before, TIMERS, strict=True) if keep]
    after = rows(v1_file, "SELECT id, claimed_until FROM statestream_timeouts ORDER BY id")
    assert after == [(row_id, None) for row_id in kept]
    db = SqliteDatabase(v1_file)
    try:
        pending = await SqliteTimeoutStore(db).list("wf")
        assert sorted(t.run_id for t in pending) == [
            "cancelled-then-pending",
            "lone",
            "pending-twice",
        ]
        assert all(t.claimed_until is None for t in pending)
    finally:
        await db.close()


async def test_a_new_timer_for_a_migrated_visit_returns_the_kept_one(v1_file: Path) -> None:
    await migrate(v1_file)
    db = SqliteDatabase(v1_file)
    try:
        store = SqliteTimeoutStore(db)
        [lone] = [t for t in await store.list("wf") if t.run_id == "lone"]
        again = await store.create("wf", "fid", "lone", 3, 2, NOW + timedelta(hours=1))
        assert again.id == lone.id
        assert again.expire_at == lone.expire_at
    finally:
        await db.close()


async def test_a_failed_migration_leaves_the_file_at_version_1(
    v1_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = shape(v1_file)
    original = _schema._MIGRATIONS[1]

    def fails_half_way(conn: sqlite3.Connection) -> None:
        original(conn)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setitem(_schema._MIGRATIONS, 1, fails_half_way)
    db = SqliteDatabase(v1_file)
    try:
        with pytest.raises(Exception, match="disk I/O error"):
            await db.schema_version()
    finally:
        await db.close()

    assert shape(v1_file) == before
    assert rows(v1_file, "SELECT value FROM statestream_meta") == [("1",)]
    assert len(rows(v1_file, "SELECT id FROM statestream_timeouts")) == len(TIMERS)


def test_cli_schema_migrate_migrates_a_version_1_file(
    v1_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "version", str(v1_file)]) == 0
    out, _ = capsys.readouterr()
    assert out == "1\n"

    assert main(["schema", "migrate", str(v1_file)]) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == f"migrated {v1_file} from statestream schema version 1 to 4"
    assert rows(v1_file, "SELECT COUNT(*) FROM statestream_records") == [(3,)]
    assert main(["schema", "version", str(v1_file)]) == 0
    assert capsys.readouterr()[0] == "4\n"


# ------------------------------------------------------------------ version 2 -> 3


@pytest.fixture
def v2_file(tmp_path: Path) -> Path:
    """A file as schema version 2 wrote it, with a run, a lease and a parked event."""
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for statement in V2_SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT INTO statestream_meta VALUES ('schema_version', '2')")
    conn.execute(
        "INSERT INTO statestream_records (run_id, workflow_name, foreign_id, run_state, "
        "status, object, created_at, updated_at, version, active_key) "
        "VALUES ('run-0', 'wf', 'fid-0', 2, 2, x'7b7d', ?, ?, 1, ?)",
        (US, US, "wf\x00fid-0"),
    )
    conn.execute("INSERT INTO statestream_leases VALUES ('role', 'holder', 1.5)")
    conn.execute(
        "INSERT INTO statestream_parked VALUES ('p-1', 'wf', 'consumer', 7, 'wf-2', 'run-0', 2, "
        "'{}', x'00', ?, 'boom', 10, ?, 0)",
        (US, US),
    )
    conn.execute("COMMIT")
    conn.close()
    return path


async def test_a_migrated_version_2_file_has_the_schema_of_a_new_one(
    v2_file: Path, tmp_path: Path
) -> None:
    await migrate(v2_file)
    await migrate(tmp_path / "new.db")

    assert shape(v2_file) == shape(tmp_path / "new.db")
    assert rows(v2_file, "SELECT value FROM statestream_meta") == [(str(SCHEMA_VERSION),)]


async def test_migration_from_version_2_keeps_the_data_and_adds_the_members(
    v2_file: Path,
) -> None:
    await migrate(v2_file)

    assert rows(v2_file, "SELECT run_id, version FROM statestream_records") == [("run-0", 1)]
    assert rows(v2_file, "SELECT * FROM statestream_leases") == [("role", "holder", 1.5)]
    assert rows(v2_file, "SELECT id, error FROM statestream_parked") == [("p-1", "boom")]
    db = SqliteDatabase(v2_file)
    try:
        scheduler = SqliteRoleScheduler(db, member_ttl=5.0)
        assert dict(await scheduler.members("wf", "worker-1", 2)) == {"worker-1": 2}
        await scheduler.leave("wf", "worker-1")
    finally:
        await db.close()


def test_cli_schema_migrate_migrates_a_version_2_file(
    v2_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "migrate", str(v2_file)]) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == f"migrated {v2_file} from statestream schema version 2 to 4"


# ------------------------------------------------------------------ version 3 -> 4

#: Version 3: version 2 plus the live members of each workflow.
V3_SCHEMA = [
    *V2_SCHEMA,
    """CREATE TABLE IF NOT EXISTS statestream_members (
        group_name TEXT NOT NULL,
        member TEXT NOT NULL,
        held INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (group_name, member)
    )""",
]


#: (run_id, workflow, run state, status, created_at) of the runs in the version 3 file.
V3_RUNS = [
    (f"run-{i:02}", "wf" if i % 3 else "other", (2, 3, 5)[i % 3], i % 4 + 1, US + i)
    for i in range(30)
]


@pytest.fixture
def v3_file(tmp_path: Path) -> Path:
    """A file as schema version 3 wrote it, with runs of two workflows."""
    path = tmp_path / "v3.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for statement in V3_SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT INTO statestream_meta VALUES ('schema_version', '3')")
    for run_id, wf, state, status, at in V3_RUNS:
        conn.execute(
            "INSERT INTO statestream_records (run_id, workflow_name, foreign_id, run_state, "
            "status, object, created_at, updated_at, version) "
            "VALUES (?, ?, ?, ?, ?, x'7b7d', ?, ?, 1)",
            (run_id, wf, run_id, state, status, at, at),
        )
    conn.execute("COMMIT")
    conn.close()
    return path


async def test_a_migrated_version_3_file_has_the_schema_of_a_new_one(
    v3_file: Path, tmp_path: Path
) -> None:
    await migrate(v3_file)
    await migrate(tmp_path / "new.db")

    assert shape(v3_file) == shape(tmp_path / "new.db")
    assert rows(v3_file, "SELECT value FROM statestream_meta") == [("4",)]


async def test_migration_from_version_3_indexes_the_runs_already_there(v3_file: Path) -> None:
    from statestream import Order, RecordFilter, RunState

    await migrate(v3_file)
    db = SqliteDatabase(v3_file)
    try:
        store = SqliteRecordStore(db)
        mine = [run for run in V3_RUNS if run[1] == "wf"]
        counts = await store.count_runs("wf")
        assert dict(counts.statuses) == dict(Counter(run[3] for run in mine))
        assert dict(counts.run_states) == dict(Counter(RunState(run[2]) for run in mine))
        assert counts.total == 20
        paused = await store.list("wf", filter=RecordFilter(run_states=[RunState.PAUSED]))
        assert [r.run_id for r in paused] == [run[0] for run in mine if run[2] == 3]
        at_2 = await store.list("wf", filter=RecordFilter(statuses=[2]), order=Order.DESC)
        assert [r.run_id for r in at_2] == [run[0] for run in reversed(mine) if run[3] == 2]
        since = NOW + timedelta(microseconds=20)
        newest = await store.list("wf", order=Order.DESC, filter=RecordFilter(created_after=since))
        assert [r.run_id for r in newest] == [run[0] for run in reversed(mine) if run[4] > US + 20]
    finally:
        await db.close()


def test_cli_schema_migrate_migrates_a_version_3_file(
    v3_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "migrate", str(v3_file)]) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == f"migrated {v3_file} from statestream schema version 3 to 4"
