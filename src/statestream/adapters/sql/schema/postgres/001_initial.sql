-- statestream schema version 1 on PostgreSQL. {prefix} is the table-name prefix.
-- Times are integer microseconds since the Unix epoch (UTC), as in the SQLite file, except the
-- lease expiry, which is the server's own clock (now()), so that hosts with skewed clocks agree.
CREATE TABLE {prefix}meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
-- seq: creation order, for keyset paging (SQLite's rowid). active: the run is unfinished; the
-- partial unique index below lets one foreign ID have at most one unfinished run per workflow.
CREATE TABLE {prefix}records (
    run_id text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    workflow_name text NOT NULL,
    foreign_id text NOT NULL,
    run_state smallint NOT NULL,
    status bigint NOT NULL,
    object bytea NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    version bigint NOT NULL,
    run_state_reason text NOT NULL DEFAULT '',
    status_description text NOT NULL DEFAULT '',
    auto_resumes integer NOT NULL DEFAULT 0,
    active boolean NOT NULL
);
CREATE UNIQUE INDEX {prefix}records_seq ON {prefix}records (seq);
CREATE UNIQUE INDEX {prefix}records_active ON {prefix}records (workflow_name, foreign_id)
    WHERE active;
CREATE INDEX {prefix}records_by_foreign_id ON {prefix}records (workflow_name, foreign_id, seq);
CREATE INDEX {prefix}records_by_workflow ON {prefix}records (workflow_name, seq);
CREATE TABLE {prefix}outbox (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL UNIQUE,
    workflow_name text NOT NULL,
    topic text NOT NULL,
    key text NOT NULL,
    type bigint NOT NULL,
    headers text NOT NULL,
    data bytea NOT NULL,
    created_at bigint NOT NULL
);
CREATE INDEX {prefix}outbox_by_workflow ON {prefix}outbox (workflow_name, seq);
-- tx: the writing transaction's ID (pg_current_xact_id(), 64 bits, never wraps). Receivers read
-- in (tx, id) order and only below the oldest transaction still running, so that an event whose
-- transaction commits late is never skipped (see PostgresStreamer).
CREATE TABLE {prefix}events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    topic text NOT NULL,
    key text NOT NULL,
    type bigint NOT NULL,
    headers text NOT NULL,
    data bytea NOT NULL,
    created_at bigint NOT NULL,
    key_hash bigint NOT NULL
);
CREATE INDEX {prefix}events_by_topic ON {prefix}events (topic, tx, id) INCLUDE (key_hash);
CREATE TABLE {prefix}cursors (
    topic text NOT NULL,
    name text NOT NULL,
    last_tx bigint NOT NULL,
    last_id bigint NOT NULL,
    updated_at bigint NOT NULL,
    PRIMARY KEY (topic, name)
);
CREATE TABLE {prefix}timeouts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_name text NOT NULL,
    foreign_id text NOT NULL,
    run_id text NOT NULL,
    status bigint NOT NULL,
    run_version bigint NOT NULL,
    expire_at bigint NOT NULL,
    created_at bigint NOT NULL,
    state smallint NOT NULL DEFAULT 0,
    claimed_until bigint
);
CREATE UNIQUE INDEX {prefix}timeouts_visit
    ON {prefix}timeouts (workflow_name, run_id, status, run_version);
CREATE INDEX {prefix}timeouts_due ON {prefix}timeouts (workflow_name, status, expire_at)
    WHERE state = 0;
CREATE INDEX {prefix}timeouts_pending ON {prefix}timeouts (workflow_name, id) WHERE state = 0;
CREATE TABLE {prefix}leases (
    role text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE TABLE {prefix}members (
    group_name text NOT NULL,
    member text NOT NULL,
    held integer NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (group_name, member)
);
CREATE TABLE {prefix}parked (
    id text PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    workflow_name text NOT NULL,
    consumer text NOT NULL,
    event_id bigint NOT NULL,
    topic text NOT NULL,
    key text NOT NULL,
    type bigint NOT NULL,
    headers text NOT NULL,
    data bytea NOT NULL,
    created_at bigint NOT NULL,
    error text NOT NULL,
    attempts integer NOT NULL,
    parked_at bigint NOT NULL,
    retry_requested boolean NOT NULL DEFAULT false
);
CREATE INDEX {prefix}parked_by_workflow ON {prefix}parked (workflow_name, parked_at, seq);
