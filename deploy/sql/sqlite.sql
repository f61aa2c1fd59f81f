-- tq outbox schema for SQLite, version 2 (component 'outbox').
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

-- Done markers of effectively-once handlers (tq.txn.sql.once, mark_done):
-- one row per task whose handler's transaction committed, written in that
-- transaction. id: the task's marker key, "<queue>/<task ID>" and, for tasks
-- tq built, "/<expected ETA>" (tq.txn.marker_key). A marker expires at
-- expires_at (35 days after the commit by default); `tq markers expire`
-- deletes expired ones, oldest first, through tq_done_expires.
CREATE TABLE IF NOT EXISTS tq_done (
    id         TEXT NOT NULL PRIMARY KEY,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tq_done_expires ON tq_done (expires_at);

INSERT INTO tq_schema_version (component, version) VALUES ('outbox', 2)
    ON CONFLICT (component) DO NOTHING;
