"""Done markers in Cloud Spanner: `mark_done`, `once`, and expiring them.

`mark_done(transaction)` reads the running task's marker in the read-write
transaction and, if there is none, buffers its insert mutation. The read
locks the key: of two concurrent deliveries of one task, Spanner aborts one,
and its retry finds the other's marker. `once(database)` runs a handler
`fn(payload, transaction)` that way through `run_in_transaction`.

Expired markers are deleted by Spanner itself (the table's row deletion
policy, within about three days); `expire_markers` deletes them at once,
scanning the table in key order in bounded pages (no index on `ExpiresAt`).
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from google.api_core.exceptions import AlreadyExists
from google.cloud.spanner_v1 import KeyRange, KeySet, param_types

from tq import _metrics, clock
from tq._errors import ConfigError
from tq._execution import execution_info
from tq.txn._markers import (
    DEFAULT_MARKER_RETENTION,
    check_key,
    check_retention,
    expiry,
    marker_key,
    note_done_already,
)
from tq.txn._spanner_schema import DONE
from tq.txn._spanner_store import SpannerStore, run_in_transaction

P = TypeVar("P")

DEFAULT_EXPIRE_BATCH = 1000
"""Markers read (and at most deleted) per page by `expire_markers`."""

_COLUMNS = ("ID", "ExpiresAt")


def _one(key: str) -> Any:
    return KeySet(keys=[[key]])  # type: ignore[no-untyped-call]


def mark_done(
    transaction: Any,
    key: str | None = None,
    *,
    retention: dt.timedelta = DEFAULT_MARKER_RETENTION,
) -> bool:
    """Writes a done marker in a read-write `transaction`; True if it is new.

    True: no committed marker had the key; its insert is buffered in the
    transaction (it commits with the handler's mutations). False: the task
    is done already; do nothing more. `key` defaults to the running task's
    (`tq.txn.marker_key()`); the marker expires `retention` after now.
    Raises ConfigError for a task without a name or a retention out of bounds.
    """
    key = marker_key() if key is None else check_key(key)
    expires_at = expiry(check_retention(retention))
    if list(transaction.read(DONE, ("ID",), _one(key))):
        return False
    transaction.insert(DONE, _COLUMNS, [[key, expires_at]])
    return True


def once(
    database: Any, *, retention: dt.timedelta = DEFAULT_MARKER_RETENTION
) -> Callable[[Callable[[P, Any], None]], Callable[[P], None]]:
    """Makes a handler `fn(payload, transaction)` effectively once; use under `task_class`.

    ::

        @disp.task_class(id="charge", prototype=pb.Charge, kind=..., queue="payments")
        @tq.txn.spanner.once(database)
        def charge(payload: pb.Charge, transaction) -> None:
            transaction.insert("Payments", ["Order", "Amount"], [[payload.order_id, ...]])

    Each delivery runs `tq.txn.spanner.run_in_transaction(database, ...)`
    (the database's registered `SpannerStore`): `mark_done` first, then the
    handler, then the commit. A delivery that finds the marker runs nothing
    and answers 200; a handler that raises rolls back its mutations and the
    marker. Spanner may run an attempt more than once (aborted
    transactions): the handler must act through `transaction` only. Tasks
    it adds are written in the transaction. Raises ConfigError at
    decoration for a retention out of bounds or an `async def` handler.
    """
    check_retention(retention)

    def decorate(fn: Callable[[P, Any], None]) -> Callable[[P], None]:
        if inspect.iscoroutinefunction(fn):
            raise ConfigError(
                f"tq.txn.spanner.once: {fn!r} is an async def handler; the Spanner client is "
                "synchronous: make it a plain def (tq runs it in a thread)"
            )

        @functools.wraps(fn)
        def handler(payload: P) -> None:
            info = execution_info()
            key = marker_key(info)

            def attempt(transaction: Any) -> bool:
                if not mark_done(transaction, key, retention=retention):
                    return False
                fn(payload, transaction)
                return True

            try:
                ran = run_in_transaction(database, attempt)
            except AlreadyExists:
                # A concurrent delivery's marker committed between our read
                # and our commit (or the handler's own insert collided).
                if not _exists(database, key):
                    raise
                ran = False
            if not ran:
                note_done_already(key, info.task_class)

        return handler

    return decorate


def _exists(database: Any, key: str) -> bool:
    with database.snapshot() as snap:
        return bool(list(snap.read(DONE, ("ID",), _one(key))))


def _database_of(bind: Any) -> tuple[Any, str]:
    if isinstance(bind, SpannerStore):
        return bind.database, bind.name
    return bind, "spanner"


def expire_markers(
    bind: Any,
    *,
    now: dt.datetime | None = None,
    batch_size: int = DEFAULT_EXPIRE_BATCH,
    max_batches: int | None = None,
) -> int:
    """Deletes the markers expired at `now`; returns how many.

    `bind` is a `SpannerStore` or a `Database`. Reads the table in key
    order, `batch_size` markers per page, and deletes each page's expired
    ones in one batch write; stops at the end of the table or after
    `max_batches` pages (None: no limit). Spanner's row deletion policy does
    the same on its own, within about three days of expiry.
    """
    if batch_size < 1 or (max_batches is not None and max_batches < 1):
        raise ConfigError("expire_markers needs batch_size >= 1 and max_batches >= 1")
    database, name = _database_of(bind)
    at = now if now is not None else clock.now()
    total = pages = 0
    after: str | None = None
    while max_batches is None or pages < max_batches:
        keys = (
            KeySet(ranges=[KeyRange(start_open=[after])])  # type: ignore[no-untyped-call]
            if after is not None
            else KeySet(all_=True)  # type: ignore[no-untyped-call]
        )
        with database.snapshot() as snap:
            rows = list(snap.read(DONE, _COLUMNS, keys, limit=batch_size))
        pages += 1
        expired = [[r[0]] for r in rows if r[1] <= at]
        if expired:
            with database.batch() as batch:
                batch.delete(DONE, KeySet(keys=expired))  # type: ignore[no-untyped-call]
            total += len(expired)
            _metrics.add("tq_markers_expired", len(expired), store=name)
        if len(rows) < batch_size:
            break
        after = rows[-1][0]
    return total


def count_markers(bind: Any, *, now: dt.datetime | None = None) -> tuple[int, int]:
    """(live, expired) markers at `now` (default: the clock's now); reads the whole table."""
    database, _ = _database_of(bind)
    at = now if now is not None else clock.now()
    with database.snapshot() as snap:
        rows = list(
            snap.execute_sql(
                f"SELECT COUNT(*), COUNTIF(ExpiresAt <= @now) FROM {DONE}",
                params={"now": at},
                param_types={"now": param_types.TIMESTAMP},
            )
        )
    total, expired = int(rows[0][0]), int(rows[0][1] or 0)
    return total - expired, expired
