-- tq outbox schema for MySQL / MariaDB (10.6 or later, InnoDB), version 2
-- (component 'outbox'). Apply with tq.txn.sql.create_schema(engine), or by
-- hand: every statement is idempotent. tq_schema_version keeps one row per
-- component, so other parts (e.g. the database queue) version their own
-- tables alongside. Times are integer microseconds since the Unix epoch, UTC.
-- IDs are ASCII compared bytewise (ascii_bin), so key ranges are plain
-- B-tree ranges, as on PostgreSQL (COLLATE "C") and SQLite.

CREATE TABLE IF NOT EXISTS tq_schema_version (
    component  VARCHAR(100) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    version    INTEGER NOT NULL,
    applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB;

-- One row per task added in a committed transaction and not yet submitted.
-- id: 32 lowercase hex characters (also the Cloud Tasks task ID). InnoDB
-- clusters rows by the primary key: the sweeper's range scan reads it alone.
-- payload: a whole CreateTaskRequest (up to 1 MiB; BLOB holds 64 KiB).
CREATE TABLE IF NOT EXISTS tq_reminders (
    id          VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    fresh_until BIGINT NOT NULL,
    parked      BOOLEAN NOT NULL DEFAULT FALSE,
    extra       BLOB NOT NULL,
    payload     LONGBLOB NOT NULL,
    INDEX tq_reminders_parked (parked, id)
) ENGINE=InnoDB;

-- Sweeper leases on key ranges: ranges is JSON [[low, high], ...] of
-- half-open integer ranges over the 128-bit key space.
CREATE TABLE IF NOT EXISTS tq_leases (
    section    VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    lease_id   VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    ranges     MEDIUMTEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (section, lease_id)
) ENGINE=InnoDB;

-- Done markers of effectively-once handlers (tq.txn.sql.once, mark_done):
-- one row per task whose handler's transaction committed, written in that
-- transaction. id: the task's marker key, "<queue>/<task ID>" and, for tasks
-- tq built, "/<expected ETA>" (tq.txn.marker_key). A marker expires at
-- expires_at (35 days after the commit by default).
CREATE TABLE IF NOT EXISTS tq_done (
    id         VARCHAR(700) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    expires_at BIGINT NOT NULL,
    INDEX tq_done_expires (expires_at)
) ENGINE=InnoDB;

INSERT IGNORE INTO tq_schema_version (component, version) VALUES ('outbox', 2);
