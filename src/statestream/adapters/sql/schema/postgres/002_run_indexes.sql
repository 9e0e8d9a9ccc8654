-- statestream schema version 2 on PostgreSQL: indexes on the runs for every list the web UI
-- makes and for counting them (RecordStore.count_runs). Each filter index ends with seq, so that
-- a filtered page is one range of it in creation order (keyset paging); count_runs reads
-- records_by_status and records_by_run_state only (index-only scans). A time range reads
-- records_by_created. Building them reads the table once; writes wait meanwhile.
CREATE INDEX {prefix}records_by_status ON {prefix}records (workflow_name, status, seq);
CREATE INDEX {prefix}records_by_run_state ON {prefix}records (workflow_name, run_state, seq);
CREATE INDEX {prefix}records_by_created ON {prefix}records (workflow_name, created_at, seq);
