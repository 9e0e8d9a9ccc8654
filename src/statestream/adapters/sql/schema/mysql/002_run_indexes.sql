-- statestream schema version 2 on MySQL / MariaDB: keys on the runs for the web UI's lists,
-- each ending with seq so that a page is one range of it in the order it is read (keyset
-- paging): by run state, and by creation time (a time range). Neither column changes at a
-- step's transition (created_at never, run_state about twice in a run); there is no key on
-- status, which every transition changes. A list by status walks records_by_workflow;
-- count_runs reads the workflow's runs once. InnoDB builds them in place.
ALTER TABLE {prefix}records
    ADD KEY {prefix}records_by_run_state (workflow_name, run_state, seq),
    ADD KEY {prefix}records_by_created (workflow_name, created_at, seq);
