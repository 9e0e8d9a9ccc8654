-- statestream SQLite schema version 3 -> 4: the runs by (workflow_name, run_state, rowid) and by
-- (workflow_name, created_at, rowid), for the web UI's lists: a page of one run state, or of a
-- time range, is one seek in the order it is read. Neither column changes at a step's
-- transition (created_at never, run_state about twice in a run), so a transition rewrites no
-- entry of them; there is no index on status, which every transition changes (a list by status
-- walks records_by_workflow; count_runs reads the workflow's runs once). Building them reads the
-- table once (seconds for a million runs).
CREATE INDEX IF NOT EXISTS {prefix}records_by_run_state
    ON {prefix}records (workflow_name, run_state);
CREATE INDEX IF NOT EXISTS {prefix}records_by_created
    ON {prefix}records (workflow_name, created_at);
