-- statestream SQLite schema version 2 -> 3: the live workers of each workflow, so that they
-- divide its roles. One row per running workflow instance (group_name: the workflow),
-- rewritten every few seconds; expires_at is wall-clock time, as in {prefix}leases.
CREATE TABLE IF NOT EXISTS {prefix}members (
    group_name TEXT NOT NULL,
    member TEXT NOT NULL,
    held INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (group_name, member)
);
