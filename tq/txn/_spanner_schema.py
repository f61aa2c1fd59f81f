"""The Cloud Spanner tables of the outbox, and a way to create them.

`deploy/spanner/schema.sql` holds the same statements for operators who
apply DDL themselves (a test keeps the two identical).

Parked reminders live in their own table, `TQParkedReminders`, with the
columns of `TQReminders`: parking moves the row there in one transaction.
The sweeper's range scan over `TQReminders` therefore never reads a parked
row (however many pile up), and the happy path maintains no index.

`TQDone` holds the done markers of effectively-once handlers
(`tq.txn.spanner.once`), keyed by `tq.txn.marker_key`. Its row deletion
policy has Spanner delete a marker once its `ExpiresAt` has passed (Spanner
does so within about three days); `tq markers expire` deletes them at once.
No index on `ExpiresAt`: an index on a timestamp written in time order
would send every handler's write to one split.

Versions: 1 reminders, parked reminders and leases; 2 adds `TQDone`.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 2
"""Bumped whenever the statements below change."""

REMINDERS = "TQReminders"
PARKED = "TQParkedReminders"
LEASES = "TQLeases"
DONE = "TQDone"

MAX_PAYLOAD = 102400
MAX_EXTRA = 1024

_REMINDER_COLUMNS = f"""
  ID STRING(MAX) NOT NULL,
  FreshUntil TIMESTAMP NOT NULL,
  Payload BYTES({MAX_PAYLOAD}) NOT NULL,
  Extra BYTES({MAX_EXTRA}),
) PRIMARY KEY (ID)"""

STATEMENTS: dict[str, str] = {
    REMINDERS: f"CREATE TABLE {REMINDERS} ({_REMINDER_COLUMNS}",
    PARKED: f"CREATE TABLE {PARKED} ({_REMINDER_COLUMNS}",
    LEASES: f"""CREATE TABLE {LEASES} (
  Section STRING(MAX) NOT NULL,
  LeaseID STRING(64) NOT NULL,
  Ranges ARRAY<STRING(80)> NOT NULL,
  ExpiresAt TIMESTAMP NOT NULL,
) PRIMARY KEY (Section, LeaseID)""",
    DONE: f"""CREATE TABLE {DONE} (
  ID STRING(MAX) NOT NULL,
  ExpiresAt TIMESTAMP NOT NULL,
) PRIMARY KEY (ID),
  ROW DELETION POLICY (OLDER_THAN(ExpiresAt, INTERVAL 0 DAY))""",
}
"""CREATE TABLE statements by table name, in the order to apply them."""


def schema_sql() -> str:
    """The schema as a DDL script (the contents of deploy/spanner/schema.sql)."""
    head = (
        f"-- tq outbox tables for Cloud Spanner, schema version {SCHEMA_VERSION}.\n"
        "-- Parked (dead-lettered) reminders move to TQParkedReminders, so scans\n"
        "-- of TQReminders never read them. TQDone holds the done markers of\n"
        "-- effectively-once handlers; Spanner deletes expired ones. Apply with\n"
        "-- `tq.txn.spanner.create_schema(database)` or your own migrations.\n"
    )
    return head + "".join(f"\n{s};\n" for s in STATEMENTS.values())


def schema_version(database: Any) -> int | None:
    """The schema version `database` holds, read from its tables; None if it has none."""
    existing = {t.table_id for t in database.list_tables()}
    if REMINDERS not in existing:
        return None
    return 1 if DONE not in existing else 2


def create_schema(database: Any, timeout_s: float = 300.0) -> list[str]:
    """Creates the tables that `database` lacks; returns the names created.

    Idempotent: existing tables are left as they are (not altered or
    checked). Blocks until the schema change is done (at most `timeout_s`).
    """
    existing = {t.table_id for t in database.list_tables()}
    missing = [name for name in STATEMENTS if name not in existing]
    if missing:
        op = database.update_ddl([STATEMENTS[name] for name in missing])
        op.result(timeout_s)
    return missing
