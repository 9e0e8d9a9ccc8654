-- statestream schema version 1 in an SQLite file. {prefix} is the table-name prefix (always
-- "statestream_" in a file). Times are integer microseconds since the Unix epoch (UTC), except
-- the lease expiry: wall-clock seconds (time.time()) of the host that holds the file.
-- A new file runs this file and then every later one, in turn, as an older file does from its
-- version: so a new file and a migrated one end with the same tables, columns and indexes.
CREATE TABLE IF NOT EXISTS {prefix}meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- active_key: workflow NUL foreign ID while the run is unfinished, else NULL: at most one
-- unfinished run per foreign ID and workflow. Creation order is the rowid.
CREATE TABLE IF NOT EXISTS {prefix}records (
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
);
CREATE INDEX IF NOT EXISTS {prefix}records_by_foreign_id
    ON {prefix}records (workflow_name, foreign_id);
CREATE TABLE IF NOT EXISTS {prefix}outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    workflow_name TEXT NOT NULL,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    type INTEGER NOT NULL,
    headers TEXT NOT NULL,
    data BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS {prefix}outbox_by_workflow
    ON {prefix}outbox (workflow_name, seq);
-- Every topic in one table; the event ID is the row ID (it grows across topics).
CREATE TABLE IF NOT EXISTS {prefix}events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key TEXT NOT NULL,
    type INTEGER NOT NULL,
    headers TEXT NOT NULL,
    data BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS {prefix}events_by_topic
    ON {prefix}events (topic, id);
CREATE TABLE IF NOT EXISTS {prefix}cursors (
    topic TEXT NOT NULL,
    name TEXT NOT NULL,
    last_id INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (topic, name)
);
-- state: 0 pending, 1 completed, 2 cancelled.
CREATE TABLE IF NOT EXISTS {prefix}timeouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_name TEXT NOT NULL,
    foreign_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    status INTEGER NOT NULL,
    run_version INTEGER NOT NULL,
    expire_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS {prefix}timeouts_due
    ON {prefix}timeouts (workflow_name, status, state, expire_at);
CREATE TABLE IF NOT EXISTS {prefix}leases (
    role TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
