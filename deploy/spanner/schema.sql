-- tq outbox tables for Cloud Spanner, schema version 1.
-- Parked (dead-lettered) reminders move to TQParkedReminders, so scans
-- of TQReminders never read them. Apply with
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
