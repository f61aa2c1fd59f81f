"""Seeing Spanner's own `Database.run_in_transaction`, which tq was not told about.

The Spanner client marks a database while `Database.run_in_transaction`
runs a function in the current thread (a thread-local flag it keeps to
refuse nested transactions). Inside tq's `run_in_transaction` the attempt's
transaction is ambient and this finder is not asked; anywhere else, a
database of a registered `SpannerStore` with the flag up means `add_task`
runs inside a transaction whose commit or rollback tq would not follow, so
it refuses. Not seen: `Session.run_in_transaction`, `session.transaction()`
and `database.batch()` used directly (the client marks none of them), and
databases that have no registered store.
"""

from __future__ import annotations

from tq.txn import _store
from tq.txn._spanner_store import SpannerStore
from tq.txn._store import UntoldTransaction, register_finder

FIX = (
    "Run the function with tq.txn.spanner.run_in_transaction(database, fn, ...) (or "
    "store.run_in_transaction) instead of database.run_in_transaction, so that the "
    "task is written in the transaction"
)


def find_spanner_transaction() -> UntoldTransaction | None:
    """An UntoldTransaction while Spanner's own run_in_transaction runs in this thread."""
    for store in tuple(_store._stores.values()):
        if isinstance(store, SpannerStore):
            local = getattr(store.database, "_local", None)
            if getattr(local, "transaction_running", False):
                name = getattr(store.database, "name", "?")
                what = f"a Spanner read-write transaction (Database.run_in_transaction on {name})"
                return UntoldTransaction(what=what, fix=FIX)
    return None


register_finder(find_spanner_transaction)
