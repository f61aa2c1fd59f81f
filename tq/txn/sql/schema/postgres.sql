-- tq outbox schema for PostgreSQL, version 1 (component 'outbox').
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

INSERT INTO tq_schema_version (component, version) VALUES ('outbox', 1)
    ON CONFLICT (component) DO NOTHING;
