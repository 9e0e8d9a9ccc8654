-- statestream schema version 2 on PostgreSQL: indexes on the runs for the web UI's lists, each
-- ending with seq so that a page is one range of it in the order it is read (keyset paging): by
-- run state, and by creation time (a time range). created_at never changes and run_state about
-- twice in a run (when it starts and when it ends), so the other updates of a run stay HOT
-- updates. There is no index on status, which every transition changes: it would make every
-- update write every index of the table. A list by status walks records_by_workflow;
-- count_runs reads the workflow's runs once. Building them reads the table once; writes wait
-- meanwhile.
CREATE INDEX {prefix}records_by_run_state ON {prefix}records (workflow_name, run_state, seq);
CREATE INDEX {prefix}records_by_created ON {prefix}records (workflow_name, created_at, seq);
