"""The admin layer: what an operator does to queues, tasks and the outbox, once per backend.

The `tq` command (`tq.cli`) and the dashboard (`tq.dashboard`) both act
through these classes, so a pause, a purge or a replay means one thing
whichever door it came through:

* `QueueAdmin` is what both ask of a task backend; `DbQueueAdmin` answers it
  for the database queue (SQLite, PostgreSQL) and `CloudTasksAdmin` for
  Google Cloud Tasks (or its emulator) through the API.
* `OutboxAdmin` lists, counts, replays and drops reminders in any outbox
  store (SQLite, PostgreSQL, Spanner).
* `MarkerAdmin` counts and expires the done markers of effectively-once
  handlers in the SQL and Spanner stores.
* `readable_payload` turns a task's body (tq's JSON envelope) into the
  payload's JSON as its protobuf type reads it.

Rows are plain dicts with the keys each method documents (`QUEUE_KEYS`,
`STATS_KEYS`, `TASK_KEYS`), times as aware UTC datetimes, so a table, JSON
lines and an HTML page render them alike. Refusals (a filter a backend
cannot apply, a malformed cursor) raise `tq.ConfigError`-like `ValueError`s
with a message an operator can act on.
"""

from __future__ import annotations

from tq.admin._cloudtasks import CloudTasksAdmin
from tq.admin._markers import MarkerAdmin
from tq.admin._outbox import OutboxAdmin, describe_reminder
from tq.admin._payload import readable_payload
from tq.admin._queues import (
    QUEUE_KEYS,
    STATS_KEYS,
    TASK_KEYS,
    DbQueueAdmin,
    QueueAdmin,
)

__all__ = [
    "QUEUE_KEYS",
    "STATS_KEYS",
    "TASK_KEYS",
    "CloudTasksAdmin",
    "DbQueueAdmin",
    "MarkerAdmin",
    "OutboxAdmin",
    "QueueAdmin",
    "describe_reminder",
    "readable_payload",
]
