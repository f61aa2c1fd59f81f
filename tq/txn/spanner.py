"""The Cloud Spanner outbox: reminders written in your read-write transactions.

Create one `SpannerStore` per database at start-up (it registers itself so
that sweepers find it), make sure the tables exist (`create_schema`, or the
DDL in deploy/spanner/schema.sql), and run transactions through
`run_in_transaction`, which makes each attempt's transaction ambient so that
`add_task` writes reminders into it::

    store = tq.txn.spanner.SpannerStore(database)

    def place_order(transaction, order_id):
        transaction.insert("Orders", ["ID"], [[order_id]])
        disp.add_task(tq.Task(payload=pb.SendEmail(to="a@example.com")))

    tq.txn.spanner.run_in_transaction(database, place_order, "o-1")

A reminder is an insert mutation buffered in the transaction (no RPC of its
own). When Spanner aborts the transaction and the client re-runs the
function (after the store's `retry` pause: by default `DEFAULT`, a short
jittered `Backoff`), the aborted attempt's reminders vanish with it; the
happy path (submit, then delete the reminder) runs once, after the commit,
for the reminders of the attempt that committed.

Effectively-once handlers: `once(database)` runs a handler in a read-write
transaction with the task's done marker (table `TQDone`), so a redelivery
of a task whose effects committed runs nothing; `mark_done(transaction)`
writes the marker in a transaction of your own; `expire_markers` deletes
expired markers (Spanner's row deletion policy also does).

A task added inside the client's own `database.run_in_transaction` (a
database with a registered store) is refused: tq would not follow that
transaction (see docs/outbox-spanner.md).

Requires `google-cloud-spanner` (the `tq[spanner]` extra).
"""

from __future__ import annotations

from tq.txn import _spanner_finder  # noqa: F401  (sees Spanner's own run_in_transaction)
from tq.txn._spanner_markers import count_markers, expire_markers, mark_done, once
from tq.txn._spanner_retry import DEFAULT, Backoff
from tq.txn._spanner_schema import SCHEMA_VERSION, create_schema, schema_sql, schema_version
from tq.txn._spanner_store import (
    SpannerStore,
    SpannerTransaction,
    run_in_transaction,
    store_for,
)

__all__ = [
    "DEFAULT",
    "SCHEMA_VERSION",
    "Backoff",
    "SpannerStore",
    "SpannerTransaction",
    "count_markers",
    "create_schema",
    "expire_markers",
    "mark_done",
    "once",
    "run_in_transaction",
    "schema_sql",
    "schema_version",
    "store_for",
]
