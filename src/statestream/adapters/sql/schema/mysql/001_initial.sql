-- statestream schema version 1 on MySQL / MariaDB (InnoDB). {prefix} is the table-name prefix.
-- Text is stored as its UTF-8 bytes (VARBINARY, BLOB): compared byte for byte, as on SQLite and
-- PostgreSQL, where a _ci collation would take 'A' for 'a' and a PAD SPACE one 'a' for 'a '.
-- Indexed text has a length limit (in UTF-8 bytes), checked at the call: workflow names, run
-- IDs, topics, consumer names and roles 255, foreign IDs 512.
-- Times are integer microseconds since the Unix epoch (UTC), except the lease expiry, which is
-- the server's own clock (UTC_TIMESTAMP(6)), so that hosts with skewed clocks agree.
CREATE TABLE {prefix}meta (
    `key` VARBINARY(255) NOT NULL PRIMARY KEY,
    value VARBINARY(255) NOT NULL
) ENGINE=InnoDB;
-- seq: creation order, for keyset paging. active: 1 while the run is unfinished, NULL after;
-- NULLs never collide in a unique index, so a foreign ID has at most one unfinished run.
-- writer: the token of the batch that last wrote the row (tells a batch which of its
-- compare-and-sets won, inside its own transaction).
CREATE TABLE {prefix}records (
    run_id VARBINARY(255) NOT NULL PRIMARY KEY,
    seq BIGINT NOT NULL AUTO_INCREMENT,
    workflow_name VARBINARY(255) NOT NULL,
    foreign_id VARBINARY(512) NOT NULL,
    run_state SMALLINT NOT NULL,
    status BIGINT NOT NULL,
    object LONGBLOB NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL,
    run_state_reason MEDIUMBLOB NOT NULL,
    status_description MEDIUMBLOB NOT NULL,
    auto_resumes INT NOT NULL DEFAULT 0,
    active TINYINT NULL,
    writer BIGINT NOT NULL DEFAULT 0,
    UNIQUE KEY {prefix}records_seq (seq),
    UNIQUE KEY {prefix}records_active (workflow_name, foreign_id, active),
    KEY {prefix}records_by_foreign_id (workflow_name, foreign_id, seq),
    KEY {prefix}records_by_workflow (workflow_name, seq)
) ENGINE=InnoDB;
CREATE TABLE {prefix}outbox (
    seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id VARBINARY(255) NOT NULL,
    workflow_name VARBINARY(255) NOT NULL,
    topic VARBINARY(255) NOT NULL,
    `key` MEDIUMBLOB NOT NULL,
    type BIGINT NOT NULL,
    headers MEDIUMBLOB NOT NULL,
    data LONGBLOB NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE KEY {prefix}outbox_id (id),
    KEY {prefix}outbox_by_workflow (workflow_name, seq)
) ENGINE=InnoDB;
-- Event IDs come from {prefix}event_seq, taken in the writing transaction: its row lock makes
-- the order of commits the order of IDs, so a reader never sees an ID before a lower one
-- commits (no gaps to skip). tx is unused on MySQL (0): PostgreSQL orders by it.
CREATE TABLE {prefix}events (
    id BIGINT NOT NULL PRIMARY KEY,
    tx BIGINT NOT NULL DEFAULT 0,
    topic VARBINARY(255) NOT NULL,
    `key` MEDIUMBLOB NOT NULL,
    type BIGINT NOT NULL,
    headers MEDIUMBLOB NOT NULL,
    data LONGBLOB NOT NULL,
    created_at BIGINT NOT NULL,
    key_hash BIGINT NOT NULL,
    KEY {prefix}events_by_topic (topic, id, key_hash)
) ENGINE=InnoDB;
CREATE TABLE {prefix}event_seq (
    id TINYINT NOT NULL PRIMARY KEY,
    n BIGINT NOT NULL
) ENGINE=InnoDB;
INSERT IGNORE INTO {prefix}event_seq (id, n) VALUES (1, 0);
CREATE TABLE {prefix}cursors (
    topic VARBINARY(255) NOT NULL,
    name VARBINARY(255) NOT NULL,
    last_tx BIGINT NOT NULL DEFAULT 0,
    last_id BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (topic, name)
) ENGINE=InnoDB;
CREATE TABLE {prefix}timeouts (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    workflow_name VARBINARY(255) NOT NULL,
    foreign_id VARBINARY(512) NOT NULL,
    run_id VARBINARY(255) NOT NULL,
    status BIGINT NOT NULL,
    run_version BIGINT NOT NULL,
    expire_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    state SMALLINT NOT NULL DEFAULT 0,
    claimed_until BIGINT NULL,
    UNIQUE KEY {prefix}timeouts_visit (workflow_name, run_id, status, run_version),
    KEY {prefix}timeouts_due (workflow_name, status, state, expire_at),
    KEY {prefix}timeouts_pending (workflow_name, state, id)
) ENGINE=InnoDB;
CREATE TABLE {prefix}leases (
    role VARBINARY(255) NOT NULL PRIMARY KEY,
    holder VARBINARY(64) NOT NULL,
    expires_at DATETIME(6) NOT NULL
) ENGINE=InnoDB;
CREATE TABLE {prefix}members (
    group_name VARBINARY(255) NOT NULL,
    member VARBINARY(255) NOT NULL,
    held INT NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    PRIMARY KEY (group_name, member)
) ENGINE=InnoDB;
CREATE TABLE {prefix}parked (
    id VARBINARY(600) NOT NULL PRIMARY KEY,
    seq BIGINT NOT NULL AUTO_INCREMENT,
    workflow_name VARBINARY(255) NOT NULL,
    consumer VARBINARY(255) NOT NULL,
    event_id BIGINT NOT NULL,
    topic VARBINARY(255) NOT NULL,
    `key` MEDIUMBLOB NOT NULL,
    type BIGINT NOT NULL,
    headers MEDIUMBLOB NOT NULL,
    data LONGBLOB NOT NULL,
    created_at BIGINT NOT NULL,
    error MEDIUMBLOB NOT NULL,
    attempts INT NOT NULL,
    parked_at BIGINT NOT NULL,
    retry_requested TINYINT NOT NULL DEFAULT 0,
    UNIQUE KEY {prefix}parked_seq (seq),
    KEY {prefix}parked_by_workflow (workflow_name, parked_at, seq)
) ENGINE=InnoDB;
