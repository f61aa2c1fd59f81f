"""Transactional outbox: reminders written in the caller's transaction.

This package holds the store protocol and the ambient transaction; the
stores live in submodules imported on use, so their optional dependencies
load only when needed:

* `tq.txn.sql`: SQLAlchemy 2 (PostgreSQL, SQLite), sync and async.
* `tq.txn.spanner`: Cloud Spanner (`google-cloud-spanner`).

Both also keep the done markers of effectively-once handlers (`once`,
`mark_done`); `marker_key` and the retention bounds are shared, and
`insert_marker` writes a marker through any DB-API cursor.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tq.txn._keyspace import KEY_SPACE, key_bound, merge_ranges, subtract_ranges
from tq.txn._markers import (
    DEFAULT_MARKER_RETENTION,
    MAX_MARKER_RETENTION,
    MIN_MARKER_RETENTION,
    insert_marker,
    marker_key,
)
from tq.txn._store import (
    Lease,
    PendingTask,
    ReminderKey,
    ReminderStore,
    Transaction,
    TransactionFinder,
    UntoldTransaction,
    ambient,
    current_transaction,
    find_transaction,
    get_store,
    hidden_here,
    new_transaction_scope,
    outside_transaction,
    register_finder,
    register_store,
    stores,
    transaction_stamp,
    unregister_finder,
    unregister_store,
)

__all__ = [
    "DEFAULT_MARKER_RETENTION",
    "KEY_SPACE",
    "MAX_MARKER_RETENTION",
    "MIN_MARKER_RETENTION",
    "Lease",
    "PendingTask",
    "ReminderKey",
    "ReminderStore",
    "Transaction",
    "TransactionFinder",
    "UntoldTransaction",
    "ambient",
    "current_transaction",
    "find_transaction",
    "get_store",
    "hidden_here",
    "insert_marker",
    "key_bound",
    "marker_key",
    "merge_ranges",
    "new_transaction_scope",
    "outside_transaction",
    "register_finder",
    "register_store",
    "stores",
    "subtract_ranges",
    "transaction_stamp",
    "unregister_finder",
    "unregister_store",
]

_SUBMODULES = frozenset({"sql", "spanner"})


def __getattr__(name: str) -> ModuleType:
    # `tq.txn.sql` works after a bare `import tq` without importing SQLAlchemy
    # (or the Spanner client) for users who need neither.
    if name in _SUBMODULES:
        return importlib.import_module(f"tq.txn.{name}")
    raise AttributeError(f"module 'tq.txn' has no attribute {name!r}")
