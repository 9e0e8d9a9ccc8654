-- statestream SQLite schema version 1 -> 2, in the transaction that opens the file.
--
-- Events: the key's hash (crc32 of its UTF-8 bytes, as shard_of computes; key_hash % n is the
-- key's shard), computed for the rows already there by statestream_key_hash(), a function the
-- database registers on the connection that migrates; it goes into the topic index, so that a
-- sharded receiver skips other shards' rows in the index without reading them from the table.
ALTER TABLE {prefix}events ADD COLUMN key_hash INTEGER NOT NULL DEFAULT 0;
UPDATE {prefix}events SET key_hash = statestream_key_hash(key);
DROP INDEX IF EXISTS {prefix}events_by_topic;
CREATE INDEX IF NOT EXISTS {prefix}events_by_topic
    ON {prefix}events (topic, id, key_hash);
-- Timeouts: a poller's claim (claimed_until), and one timer per visit of a status. Version 1
-- could hold several timers for one visit: keep one per visit, a completed one (the visit's
-- timeout has fired), else the first pending one, else the first cancelled one.
ALTER TABLE {prefix}timeouts ADD COLUMN claimed_until INTEGER;
DELETE FROM {prefix}timeouts WHERE id IN (
    SELECT id FROM (
        SELECT id, ROW_NUMBER() OVER (
            PARTITION BY workflow_name, run_id, status, run_version
            ORDER BY CASE state WHEN 1 THEN 0 WHEN 0 THEN 1 ELSE 2 END, id
        ) AS n
        FROM {prefix}timeouts
    ) WHERE n > 1
);
DROP INDEX IF EXISTS {prefix}timeouts_due;
CREATE UNIQUE INDEX IF NOT EXISTS {prefix}timeouts_visit
    ON {prefix}timeouts (workflow_name, run_id, status, run_version);
-- Pending timers only: completed and cancelled ones stay out of the pollers' index.
CREATE INDEX IF NOT EXISTS {prefix}timeouts_due
    ON {prefix}timeouts (workflow_name, status, expire_at) WHERE state = 0;
-- (workflow_name, rowid): one workflow's runs in creation order, for keyset paging.
CREATE INDEX IF NOT EXISTS {prefix}records_by_workflow
    ON {prefix}records (workflow_name);
-- Events a consumer gave up on.
CREATE TABLE IF NOT EXISTS {prefix}parked (
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
);
CREATE INDEX IF NOT EXISTS {prefix}parked_by_workflow
    ON {prefix}parked (workflow_name, parked_at);
