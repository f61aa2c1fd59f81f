-- tq outbox schema for PostgreSQL, version 2 (component 'outbox').
-- Apply with tq.txn.sql.create_schema(engine), or by hand: every statement
-- is idempotent. tq_schema_version keeps one row per component, so other
-- parts (e.g. the database queue) version their own tables alongside.

CREATE TABLE IF NOT EXISTS tq_schema_version (
    component  text COLLATE "C" PRIMARY KEY,
    version    integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- One row per task added in a committed transaction and not yet submitted.
-- id: 32 lowercase hex characters (also the Cloud Tasks task ID), compared
-- bytewise (COLLATE "C") so key ranges are plain B-tree ranges.
-- The primary key index also carries fresh_until and parked, so the
-- sweeper's scan (unparked IDs in a range, with fresh_until) is an
-- index-only range scan of the one index every insert maintains anyway.
CREATE TABLE IF NOT EXISTS tq_reminders (
    id          text COLLATE "C" NOT NULL,
    fresh_until timestamptz NOT NULL,
    parked      boolean NOT NULL DEFAULT false,
    extra       bytea NOT NULL DEFAULT '\x'::bytea,
    payload     bytea NOT NULL,
    CONSTRAINT tq_reminders_pkey PRIMARY KEY (id) INCLUDE (fresh_until, parked)
);

-- Parked (dead-lettered) reminders, for listing; empty for a healthy system,
-- and inserting unparked rows costs it nothing.
CREATE INDEX IF NOT EXISTS tq_reminders_parked ON tq_reminders (id) WHERE parked;

-- Sweeper leases on key ranges: ranges is JSON [[low, high], ...] of
-- half-open integer ranges over the 128-bit key space.
CREATE TABLE IF NOT EXISTS tq_leases (
    section    text COLLATE "C" NOT NULL,
    lease_id   text COLLATE "C" NOT NULL,
    ranges     text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (section, lease_id)
);

-- Done markers of effectively-once handlers (tq.txn.sql.once, mark_done):
-- one row per task whose handler's transaction committed, written in that
-- transaction. id: the task's marker key, "<queue>/<task ID>" and, for tasks
-- tq built, "/<expected ETA>" (tq.txn.marker_key). A marker expires at
-- expires_at (35 days after the commit by default); `tq markers expire`
-- deletes expired ones, oldest first, through tq_done_expires.
CREATE TABLE IF NOT EXISTS tq_done (
    id         text COLLATE "C" NOT NULL,
    expires_at timestamptz NOT NULL,
    CONSTRAINT tq_done_pkey PRIMARY KEY (id)
);
CREATE INDEX IF NOT EXISTS tq_done_expires ON tq_done (expires_at);

INSERT INTO tq_schema_version (component, version) VALUES ('outbox', 2)
    ON CONFLICT (component) DO NOTHING;
