-- statestream SQLite schema version 3 -> 4: indexes on the runs for every list the web UI
-- makes and for counting them (RecordStore.count_runs). (workflow_name, status, rowid) and
-- (workflow_name, run_state, rowid): a filtered page is one seek in creation order, and
-- count_runs reads only these indexes, never the table. (workflow_name, created_at, rowid): a
-- time range. Building them reads the table once (seconds for a million runs).
CREATE INDEX IF NOT EXISTS {prefix}records_by_status
    ON {prefix}records (workflow_name, status);
CREATE INDEX IF NOT EXISTS {prefix}records_by_run_state
    ON {prefix}records (workflow_name, run_state);
CREATE INDEX IF NOT EXISTS {prefix}records_by_created
    ON {prefix}records (workflow_name, created_at);
