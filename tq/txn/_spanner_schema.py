"""The Cloud Spanner tables of the outbox, and a way to create them.

`deploy/spanner/schema.sql` holds the same statements for operators who
apply DDL themselves (a test keeps the two identical).

Parked reminders live in their own table, `TQParkedReminders`, with the
columns of `TQReminders`: parking moves the row there in one transaction.
The sweeper's range scan over `TQReminders` therefore never reads a parked
row (however many pile up), and the happy path maintains no index.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1
"""Bumped whenever the statements below change."""

REMINDERS = "TQReminders"
PARKED = "TQParkedReminders"
LEASES = "TQLeases"

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
}
"""CREATE TABLE statements by table name, in the order to apply them."""


def schema_sql() -> str:
    """The schema as a DDL script (the contents of deploy/spanner/schema.sql)."""
    head = (
        f"-- tq outbox tables for Cloud Spanner, schema version {SCHEMA_VERSION}.\n"
        "-- Parked (dead-lettered) reminders move to TQParkedReminders, so scans\n"
        "-- of TQReminders never read them. Apply with\n"
        "-- `tq.txn.spanner.create_schema(database)` or your own migrations.\n"
    )
    return head + "".join(f"\n{s};\n" for s in STATEMENTS.values())


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
