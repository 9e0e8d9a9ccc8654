-- statestream schema version 2 on MySQL / MariaDB: keys on the runs for every list the web UI
-- makes and for counting them (RecordStore.count_runs). Each filter key ends with seq, so that
-- a filtered page is one range of it in creation order (keyset paging); count_runs reads
-- records_by_status and records_by_run_state only (covering). A time range reads
-- records_by_created. InnoDB builds them in place.
ALTER TABLE {prefix}records
    ADD KEY {prefix}records_by_status (workflow_name, status, seq),
    ADD KEY {prefix}records_by_run_state (workflow_name, run_state, seq),
    ADD KEY {prefix}records_by_created (workflow_name, created_at, seq);
