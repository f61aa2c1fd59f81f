-- tq outbox tables for Cloud Spanner, schema version 2.
-- Parked (dead-lettered) reminders move to TQParkedReminders, so scans
-- of TQReminders never read them. TQDone holds the done markers of
-- effectively-once handlers; Spanner deletes expired ones. Apply with
-- `tq.txn.spanner.create_schema(database)` or your own migrations.

CREATE TABLE TQReminders (
  ID STRING(MAX) NOT NULL,
  FreshUntil TIMESTAMP NOT NULL,
  Payload BYTES(102400) NOT NULL,
  Extra BYTES(1024),
) PRIMARY KEY (ID);

CREATE TABLE TQParkedReminders (
  ID STRING(MAX) NOT NULL,
  FreshUntil TIMESTAMP NOT NULL,
  Payload BYTES(102400) NOT NULL,
  Extra BYTES(1024),
) PRIMARY KEY (ID);

CREATE TABLE TQLeases (
  Section STRING(MAX) NOT NULL,
  LeaseID STRING(64) NOT NULL,
  Ranges ARRAY<STRING(80)> NOT NULL,
  ExpiresAt TIMESTAMP NOT NULL,
) PRIMARY KEY (Section, LeaseID);

CREATE TABLE TQDone (
  ID STRING(MAX) NOT NULL,
  ExpiresAt TIMESTAMP NOT NULL,
) PRIMARY KEY (ID),
  ROW DELETION POLICY (OLDER_THAN(ExpiresAt, INTERVAL 0 DAY));
