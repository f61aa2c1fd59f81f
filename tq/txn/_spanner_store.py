"""The Cloud Spanner outbox store, and its transactions (see `tq.txn.spanner`).

`SpannerStore` keeps reminders and sweeper leases; `run_in_transaction`
makes each attempt's transaction ambient so that `add_task` writes
reminders into it as insert mutations, and runs the happy path after the
commit.
"""

from __future__ import annotations

import base64
import datetime as dt
import random as _random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from google.cloud.spanner_v1 import KeyRange, KeySet

from tq._errors import ConfigError
from tq._outbox import after_commit
from tq._reminder import Reminder
from tq.txn._keyspace import subtract_ranges
from tq.txn._spanner_retry import DEFAULT, Backoff
from tq.txn._spanner_schema import (
    LEASES,
    MAX_PAYLOAD,
    PARKED,
    REMINDERS,
)
from tq.txn._store import (
    Lease,
    PendingTask,
    ReminderKey,
    ReminderStore,
    ambient,
    register_store,
    stores,
)

T = TypeVar("T")

_COLUMNS = ("ID", "FreshUntil", "Payload", "Extra")
_LEASE_COLUMNS = ("Section", "LeaseID", "Ranges", "ExpiresAt")


def _b64(data: bytes) -> bytes:
    # The Python client sends BYTES values as given: Spanner expects base64.
    return base64.b64encode(data)


def _unb64(value: bytes | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _utc(value: dt.datetime) -> dt.datetime:
    # The client returns DatetimeWithNanoseconds; hand out plain datetimes.
    return dt.datetime(
        value.year, value.month, value.day, value.hour, value.minute, value.second,
        value.microsecond, tzinfo=dt.UTC,
    )  # fmt: skip


def _keys(keys: Sequence[Sequence[str]]) -> Any:
    return KeySet(keys=[list(k) for k in keys])  # type: ignore[no-untyped-call]


def _range(**bounds: list[str]) -> Any:
    """A KeySet of one KeyRange (start_closed=, start_open=, end_closed=, end_open=)."""
    return KeySet(ranges=[KeyRange(**bounds)])  # type: ignore[no-untyped-call]


_ALL: Any = KeySet(all_=True)  # type: ignore[no-untyped-call]


def _row(r: Reminder) -> list[Any]:
    return [r.id, r.fresh_until, _b64(r.payload), _b64(r.extra) if r.extra else None]


def _reminder(row: Sequence[Any]) -> Reminder:
    return Reminder(
        id=row[0], fresh_until=_utc(row[1]), payload=_unb64(row[2]), extra=_unb64(row[3])
    )


class SpannerTransaction:
    """One attempt of a read-write transaction, as `add_task` sees it.

    `spanner` is the client's `Transaction` the attempt runs in.
    """

    def __init__(self, store: SpannerStore, spanner: Any) -> None:
        self._store = store
        self.spanner = spanner
        self.pending: list[PendingTask] = []

    @property
    def store(self) -> ReminderStore:
        return self._store

    @property
    def deadline(self) -> dt.datetime | None:
        return None

    def save_reminder(self, pending: PendingTask) -> None:
        """Buffers the reminder's insert mutation; it is sent with the commit."""
        self.spanner.insert(REMINDERS, _COLUMNS, [_row(pending.reminder)])
        self.pending.append(pending)


class SpannerStore:
    """Keeps reminders and sweeper leases in a Cloud Spanner database.

    Args:
      database: a `google.cloud.spanner_v1.database.Database` with the tq
        tables (see `create_schema`).
      name: the store's name among registered stores (default "spanner");
        a store registered under the same name is replaced.
      retry: when Spanner aborts a transaction (another one touched the
        same rows), the pause before running it again: a `Backoff` (default
        `DEFAULT`: 10 ms, doubling up to 0.5 s, jittered); a number of
        seconds for the same pause before every retry; or None for the
        Spanner client's own, 2**n seconds plus up to one when Spanner
        suggests none (8 threads x 25 contending transactions on the
        emulator: about 16 s, against about 2 s with the default). Applies
        to the store's own transactions and to `run_in_transaction`, where a
        `default_retry_delay` argument fixes the pause for that call.
      retry_delay_s: the same as `retry` given in seconds (an older name).
      random, sleep: the source of the jitter and how pauses are taken
        (defaults `random.random`, `time.sleep`); tests pass their own.

    The store registers itself with `tq.txn.register_store`. Payloads up to
    102,400 bytes fit (`add_task` refuses bigger ones before writing).
    """

    def __init__(
        self,
        database: Any,
        *,
        name: str = "spanner",
        retry: Backoff | float | None = DEFAULT,
        retry_delay_s: float | None = None,
        random: Callable[[], float] = _random.random,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not name:
            raise ConfigError("a SpannerStore needs a non-empty name")
        if retry_delay_s is not None:
            retry = retry_delay_s
        if isinstance(retry, bool) or not (
            retry is None or isinstance(retry, Backoff | int | float)
        ):
            raise ConfigError(f"retry must be a Backoff, seconds or None, not {retry!r}")
        if isinstance(retry, int | float) and retry < 0:
            raise ConfigError(f"retry must not be negative, got {retry}")
        self.database = database
        self._name = name
        self.retry = retry
        self._random = random
        self._sleep = sleep
        register_store(self)

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_payload_size(self) -> int:
        return MAX_PAYLOAD

    def __repr__(self) -> str:
        return f"SpannerStore({self._name!r}, {getattr(self.database, 'name', '?')})"

    # Transactions.

    def run_in_transaction(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs `fn(transaction, *args, **kwargs)` in a read-write transaction.

        Like `Database.run_in_transaction` (whose options such as
        `timeout_secs` or `transaction_tag` pass through `kwargs`), with each
        attempt's transaction ambient for `add_task`. After the commit, the
        happy path submits the committed attempt's tasks (it never raises).
        An exception from `fn` rolls back and propagates; nothing is submitted.
        """
        attempts: list[SpannerTransaction] = []

        def attempt(transaction: Any, *a: Any, **kw: Any) -> T:
            txn = SpannerTransaction(self, transaction)
            attempts.append(txn)
            with ambient(txn):
                return fn(transaction, *a, **kw)

        result: T = self._run(attempt, *args, **kwargs)
        # run_in_transaction returns only after a commit, and the commit
        # follows the last call of `attempt`.
        if attempts and attempts[-1].pending:
            after_commit(self, attempts[-1].pending)
        return result

    def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        retry = self.retry
        if isinstance(retry, Backoff) and "default_retry_delay" not in kwargs:
            # The client then pauses only as long as Spanner says (the
            # emulator never does); the backoff is taken before each re-run.
            kwargs["default_retry_delay"] = 0
            fn = self._paced(fn, retry)
        elif isinstance(retry, int | float):
            kwargs.setdefault("default_retry_delay", float(retry))
        result: T = self.database.run_in_transaction(fn, *args, **kwargs)
        return result

    def _paced(self, fn: Callable[..., T], backoff: Backoff) -> Callable[..., T]:
        runs = 0

        def paced(transaction: Any, *args: Any, **kwargs: Any) -> T:
            nonlocal runs
            if runs:
                self._sleep(backoff.delay(runs, self._random))
            runs += 1
            return fn(transaction, *args, **kwargs)

        return paced

    def _batch(self) -> Any:
        # Blind writes (deletes) need no read-write transaction: a batch is
        # one Commit RPC, and the client retries it when aborted (with one
        # fixed pause: its retry loop takes no other).
        retry = self.retry
        if retry is None:
            return self.database.batch()
        delay = retry.first_s if isinstance(retry, Backoff) else float(retry)
        return self.database.batch(default_retry_delay=delay)

    # The store protocol.

    def delete_reminders(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        keys = _keys([[i] for i in ids])
        with self._batch() as batch:
            batch.delete(REMINDERS, keys)
            batch.delete(PARKED, keys)

    def fetch_reminder_keys(self, low: str, high: str, limit: int) -> list[ReminderKey]:
        if limit <= 0 or low >= high:
            return []
        keys = _range(start_closed=[low], end_open=[high])
        with self.database.snapshot() as snap:
            rows = snap.read(REMINDERS, ("ID", "FreshUntil"), keys, limit=limit)
            return [ReminderKey(id=r[0], fresh_until=_utc(r[1])) for r in rows]

    def fetch_reminders(self, ids: Sequence[str]) -> list[Reminder]:
        if not ids:
            return []
        keys = _keys([[i] for i in ids])
        with self.database.snapshot() as snap:
            return [_reminder(r) for r in snap.read(REMINDERS, _COLUMNS, keys)]

    def park_reminder(self, reminder_id: str, extra: bytes) -> None:
        key = _keys([[reminder_id]])

        def park(transaction: Any) -> None:
            rows = list(transaction.read(REMINDERS, _COLUMNS, key))
            if rows:
                row = list(rows[0])
                row[3] = _b64(extra)
                transaction.delete(REMINDERS, key)
                transaction.insert_or_update(PARKED, _COLUMNS, [row])
                return
            # Parked already: record the newer reason.
            if list(transaction.read(PARKED, ("ID",), key)):
                transaction.update(PARKED, ("ID", "Extra"), [[reminder_id, _b64(extra)]])

        self._run(park)

    def list_parked(self, limit: int, after: str = "") -> list[Reminder]:
        if limit <= 0:
            return []
        keys = _range(start_open=[after]) if after else _ALL
        with self.database.snapshot() as snap:
            return [_reminder(r) for r in snap.read(PARKED, _COLUMNS, keys, limit=limit)]

    def unpark_reminder(self, reminder_id: str, fresh_until: dt.datetime) -> bool:
        key = _keys([[reminder_id]])

        def unpark(transaction: Any) -> bool:
            rows = list(transaction.read(PARKED, _COLUMNS, key))
            if not rows:
                return bool(list(transaction.read(REMINDERS, ("ID",), key)))
            row = list(rows[0])
            transaction.delete(PARKED, key)
            transaction.insert_or_update(REMINDERS, _COLUMNS, [[row[0], fresh_until, row[2], None]])
            return True

        return self._run(unpark)

    def count_reminders(self) -> tuple[int, int]:
        with self.database.snapshot() as snap:
            rows = list(
                snap.execute_sql(
                    f"SELECT (SELECT COUNT(*) FROM {REMINDERS}), (SELECT COUNT(*) FROM {PARKED})"
                )
            )
        return int(rows[0][0]), int(rows[0][1])

    def take_lease(
        self,
        section: str,
        ranges: Sequence[tuple[int, int]],
        expires_at: dt.datetime,
        now: dt.datetime,
    ) -> Lease:
        lease_id = uuid.uuid4().hex
        prefix = _range(start_closed=[section], end_closed=[section])

        def take(transaction: Any) -> tuple[tuple[int, int], ...]:
            held: list[tuple[int, int]] = []
            expired: list[list[str]] = []
            for sec, lid, parts, until in transaction.read(LEASES, _LEASE_COLUMNS, prefix):
                if _utc(until) <= now:
                    expired.append([sec, lid])
                else:
                    held.extend(_decode_range(p) for p in parts)
            if expired:
                transaction.delete(LEASES, _keys(expired))
            free = tuple(subtract_ranges(ranges, held))
            if free:
                transaction.insert(
                    LEASES,
                    _LEASE_COLUMNS,
                    [[section, lease_id, [_encode_range(r) for r in free], expires_at]],
                )
            return free

        free = self._run(take)
        return Lease(section=section, lease_id=lease_id, ranges=free, expires_at=expires_at)

    def release_lease(self, section: str, lease_id: str) -> None:
        with self._batch() as batch:
            batch.delete(LEASES, _keys([[section, lease_id]]))


def _encode_range(r: tuple[int, int]) -> str:
    return f"{r[0]:x}:{r[1]:x}"


def _decode_range(s: str) -> tuple[int, int]:
    low, _, high = s.partition(":")
    return int(low, 16), int(high, 16)


def store_for(database: Any) -> SpannerStore:
    """The registered SpannerStore of `database`; ConfigError if there is none."""
    for s in stores():
        if isinstance(s, SpannerStore) and s.database is database:
            return s
    raise ConfigError(
        f"no SpannerStore for database {getattr(database, 'name', database)!r}: create "
        "tq.txn.spanner.SpannerStore(database) at start-up (it registers itself, so the "
        "sweeper finds the reminders)"
    )


def run_in_transaction(database: Any, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`Database.run_in_transaction` with tq's outbox: see `SpannerStore.run_in_transaction`.

    Uses the registered `SpannerStore` of `database`; raises ConfigError if
    there is none (so no reminder is written where no sweeper looks).
    """
    return store_for(database).run_in_transaction(fn, *args, **kwargs)
