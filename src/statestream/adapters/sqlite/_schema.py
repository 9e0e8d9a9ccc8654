"""The SQLite schema: the tables of the current version, and the migrations from older ones.

A new file gets :data:`SCHEMA` at once. A file of an older version gets each migration in turn,
from its version to :data:`SCHEMA_VERSION`, in one transaction: it ends with the same tables,
columns and indexes as a new file (``tests/test_sqlite_schema.py`` compares the two), and keeps
its data. A file of a newer version is refused before anything changes (``SqliteDatabase``).

History:

1. Records, outbox, events, cursors, timeouts, leases.
2. ``statestream_events.key_hash`` (crc32 of the key, for sharded receivers, in the topic
   index); one timer per visit (a unique key on the timeout's run, status and version) and
   ``claimed_until``; the due-timer index only over pending timers; an index to page the runs
   of one workflow; ``statestream_parked``.
3. ``statestream_members``: the live workers of each workflow, so that they divide its roles.
4. Indexes on the runs for every list the web UI makes and for counting them: by
   ``(workflow_name, status)``, ``(workflow_name, run_state)`` (each in creation order, the
   rowid, for keyset pages; together they count a workflow's runs without reading the table)
   and ``(workflow_name, created_at)`` (a time range).
"""

from __future__ import annotations

import logging
import sqlite3
import zlib
from collections.abc import Callable

__all__ = ["SCHEMA", "SCHEMA_VERSION", "key_hash", "upgrade"]

log = logging.getLogger("statestream.sqlite")

#: Version of the schema this release writes; stored in ``statestream_meta``.
SCHEMA_VERSION = 4


def key_hash(key: str) -> int:
    """The stored hash of an event key: crc32 of its UTF-8 bytes, as
    :func:`statestream._core.records.shard_of` computes (``key_hash % n`` is the key's shard)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass"))


#: The tables of a new file, at :data:`SCHEMA_VERSION`. Columns added by a migration come last,
#: in the order the migrations add them, so that a migrated file has the same columns.
SCHEMA = [
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
    # (workflow_name, status, rowid) and (workflow_name, run_state, rowid): a filtered page is
    # one seek in creation order; count_runs reads only these indexes.
    """CREATE INDEX IF NOT EXISTS statestream_records_by_status
        ON statestream_records (workflow_name, status)""",
    """CREATE INDEX IF NOT EXISTS statestream_records_by_run_state
        ON statestream_records (workflow_name, run_state)""",
    """CREATE INDEX IF NOT EXISTS statestream_records_by_created
        ON statestream_records (workflow_name, created_at)""",
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
    # One row per running workflow instance (group_name: the workflow), rewritten every few
    # seconds; expires_at is wall-clock time, as in statestream_leases.
    """CREATE TABLE IF NOT EXISTS statestream_members (
        group_name TEXT NOT NULL,
        member TEXT NOT NULL,
        held INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (group_name, member)
    )""",
]


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    # Events: the key's hash, computed for the rows already there.
    conn.create_function("statestream_key_hash", 1, key_hash, deterministic=True)
    conn.execute("ALTER TABLE statestream_events ADD COLUMN key_hash INTEGER NOT NULL DEFAULT 0")
    conn.execute("UPDATE statestream_events SET key_hash = statestream_key_hash(key)")
    conn.execute("DROP INDEX IF EXISTS statestream_events_by_topic")
    # Timeouts: version 1 could hold several timers for one visit of a status. Keep one per
    # visit: a completed one (the visit's timeout has fired), else the first pending one, else
    # the first cancelled one.
    conn.execute("ALTER TABLE statestream_timeouts ADD COLUMN claimed_until INTEGER")
    conn.execute(
        """DELETE FROM statestream_timeouts WHERE id IN (
            SELECT id FROM (
                SELECT id, ROW_NUMBER() OVER (
                    PARTITION BY workflow_name, run_id, status, run_version
                    ORDER BY CASE state WHEN 1 THEN 0 WHEN 0 THEN 1 ELSE 2 END, id
                ) AS n
                FROM statestream_timeouts
            ) WHERE n > 1
        )"""
    )
    conn.execute("DROP INDEX IF EXISTS statestream_timeouts_due")
    # The new indexes and the parked table come from SCHEMA, run after the migrations.


def _v2_to_v3(conn: sqlite3.Connection) -> None:
    # Only a new table, statestream_members: it comes from SCHEMA, run after the migrations.
    pass


def _v3_to_v4(conn: sqlite3.Connection) -> None:
    # Only new indexes on statestream_records: they come from SCHEMA, run after the migrations
    # (building them reads the table once: seconds for a million runs).
    pass


#: ``_MIGRATIONS[v]`` brings a file from version ``v`` to ``v + 1``.
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
}


def upgrade(conn: sqlite3.Connection, found: int) -> None:
    """Bring a file from version ``found`` (0: a new file) to :data:`SCHEMA_VERSION`, inside
    the caller's transaction."""
    if found:
        for version in range(found, SCHEMA_VERSION):
            _MIGRATIONS[version](conn)
            log.info("statestream: SQLite schema version %d migrated to %d", version, version + 1)
    for statement in SCHEMA:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO statestream_meta (key, value) VALUES ('schema_version', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(SCHEMA_VERSION),),
    )
