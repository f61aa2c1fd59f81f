-- tq outbox schema for SQLite, version 1 (component 'outbox').
-- Apply with tq.txn.sql.create_schema(engine), or by hand: every statement
-- is idempotent. tq_schema_version keeps one row per component, so other
-- parts (e.g. the database queue) version their own tables alongside.
-- Times are integer microseconds since the Unix epoch, UTC.

CREATE TABLE IF NOT EXISTS tq_schema_version (
    component  TEXT NOT NULL PRIMARY KEY,
    version    INTEGER NOT NULL,
    applied_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER))
);

-- One row per task added in a committed transaction and not yet submitted.
-- id: 32 lowercase hex characters (also the Cloud Tasks task ID).
-- WITHOUT ROWID clusters rows by id: the sweeper's scan (unparked IDs in a
-- range, with fresh_until) reads the primary key B-tree alone, and the
-- small columns come first so it never reads a payload's overflow pages.
CREATE TABLE IF NOT EXISTS tq_reminders (
    id          TEXT NOT NULL PRIMARY KEY,
    fresh_until INTEGER NOT NULL,
    parked      INTEGER NOT NULL DEFAULT 0,
    extra       BLOB NOT NULL DEFAULT x'',
    payload     BLOB NOT NULL
) WITHOUT ROWID;

-- Parked (dead-lettered) reminders, for listing; empty for a healthy system.
CREATE INDEX IF NOT EXISTS tq_reminders_parked ON tq_reminders (id) WHERE parked;

-- Sweeper leases on key ranges: ranges is JSON [[low, high], ...] of
-- half-open integer ranges over the 128-bit key space.
CREATE TABLE IF NOT EXISTS tq_leases (
    section    TEXT NOT NULL,
    lease_id   TEXT NOT NULL,
    ranges     TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (section, lease_id)
) WITHOUT ROWID;

INSERT INTO tq_schema_version (component, version) VALUES ('outbox', 1)
    ON CONFLICT (component) DO NOTHING;
