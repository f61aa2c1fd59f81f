"""The store protocol: what tq's core asks of a database keeping reminders.

Stores plug in here (`tq.txn.sql.SQLStore`, `tq.txn.spanner.SpannerStore`);
the core never imports them. A store is also the ambient-transaction provider
for its database: its transaction helpers put a `Transaction` in the current
context, `add_task` writes reminders into it, and after commit the store
hands them to `tq._outbox` for the happy path.

Reminder IDs and ranges of them: `tq.txn._keyspace`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

from tq._reminder import Reminder
from tq._submitter import Submission, Submitter


@dataclasses.dataclass(frozen=True, slots=True)
class ReminderKey:
    """What a sweep scan reads: an ID and until when the happy path owns it."""

    id: str
    fresh_until: dt.datetime


_new = object.__new__
_set_key_id, _set_key_fresh_until = (ReminderKey.__dict__[f].__set__ for f in ("id", "fresh_until"))


def reminder_key(id: str, fresh_until: dt.datetime) -> ReminderKey:
    """`ReminderKey(id, fresh_until)` at half the cost, for stores' scans.

    Sets the frozen dataclass's slots directly rather than through
    `object.__setattr__` by name (a scan reads up to thousands of keys).
    """
    key: ReminderKey = _new(ReminderKey)
    _set_key_id(key, id)
    _set_key_fresh_until(key, fresh_until)
    return key


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    """A sweeper's hold on part of a key space section until `expires_at`."""

    section: str
    lease_id: str
    ranges: tuple[tuple[int, int], ...]
    expires_at: dt.datetime


@runtime_checkable
class ReminderStore(Protocol):
    """A database that keeps reminders and sweeper leases.

    Every method runs its own short transaction and is blocking; async
    callers use `asyncio.to_thread`.
    """

    @property
    def name(self) -> str:
        """A stable name of this store, unique in the process (e.g. 'sql:main')."""
        ...

    @property
    def max_payload_size(self) -> int:
        """The largest reminder payload the store takes, in bytes."""
        ...

    def delete_reminders(self, ids: Sequence[str]) -> None:
        """Deletes the reminders with these IDs (missing ones are fine)."""
        ...

    def fetch_reminder_keys(self, low: str, high: str, limit: int) -> list[ReminderKey]:
        """Up to `limit` unparked reminders with low <= ID < high, ascending."""
        ...

    def fetch_reminders(self, ids: Sequence[str]) -> list[Reminder]:
        """The reminders with these IDs that still exist, in any order."""
        ...

    def park_reminder(self, reminder_id: str, extra: bytes) -> None:
        """Marks a reminder parked (dead-lettered) with the given Extra."""
        ...

    def list_parked(self, limit: int, after: str = "") -> list[Reminder]:
        """Up to `limit` parked reminders with ID > `after`, ascending."""
        ...

    def unpark_reminder(self, reminder_id: str, fresh_until: dt.datetime) -> bool:
        """Clears the parked mark so the reminder is swept again; False if absent."""
        ...

    def count_reminders(self) -> tuple[int, int]:
        """(unparked, parked) reminder counts."""
        ...

    def take_lease(
        self,
        section: str,
        ranges: Sequence[tuple[int, int]],
        expires_at: dt.datetime,
        now: dt.datetime,
    ) -> Lease:
        """Leases what of `ranges` no unexpired lease of `section` holds.

        Drops expired leases of the section on the way. The returned lease's
        `ranges` may be empty (everything was leased by others).
        """
        ...

    def release_lease(self, section: str, lease_id: str) -> None:
        """Drops a lease before it expires."""
        ...


@dataclasses.dataclass(slots=True)
class PendingTask:
    """A reminder written in a transaction, waiting for the commit."""

    reminder: Reminder
    submission: Submission
    submitter: Submitter


class Transaction(Protocol):
    """The ambient transaction `add_task` writes reminders into."""

    @property
    def store(self) -> ReminderStore: ...

    @property
    def deadline(self) -> dt.datetime | None:
        """A deadline that caps reminders' fresh_until, if the request has one."""
        ...

    def save_reminder(self, pending: PendingTask) -> None:
        """Writes the reminder in the transaction; after commit, submits it."""
        ...


def writes_tasks_itself(txn: Transaction, submitter: Submitter) -> bool:
    """Whether `txn` hands the tasks of `submitter` to it to write in the transaction.

    A transaction that can (the SQL stores', for the database queue's
    submitter) says so with a `writes_tasks_of(submitter)` method; its
    PendingTasks then carry a reminder that is never stored (empty payload),
    and no happy path runs after the commit.
    """
    ask = getattr(txn, "writes_tasks_of", None)
    return ask is not None and bool(ask(submitter))


@dataclasses.dataclass(frozen=True, slots=True)
class UntoldTransaction:
    """An open database transaction that tq can see but was not told about.

    A finder (see `register_finder`) returns one when it sees, say, a
    SQLAlchemy session in a transaction that no tq helper made ambient.
    `add_task` then refuses every task (a task submitted now would run even
    if that transaction rolled back) with an error made of `what` (the
    transaction, e.g. "a SQLAlchemy Session's transaction") and `fix` (how
    to tell tq of it, e.g. "wrap it in tq.txn.sql.bind(session)").
    """

    what: str
    fix: str


TransactionFinder = Callable[[], "Transaction | UntoldTransaction | None"]
"""Looks for an open transaction in the current context (see `register_finder`)."""

_current: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar(
    "tq_transaction", default=None
)
_outside: contextvars.ContextVar[bool] = contextvars.ContextVar("tq_outside", default=False)

# Stamps order the beginnings of transactions and of outside_transaction()
# blocks; `_outside_since` is the stamp of the innermost open block (0: none).
_stamps = itertools.count(1)
_outside_since: contextvars.ContextVar[int] = contextvars.ContextVar("tq_outside_since", default=0)

# (finder, scoped) pairs, in registration order.
_finders: tuple[tuple[TransactionFinder, bool], ...] = ()
_finders_lock = threading.Lock()


def register_finder(finder: TransactionFinder, *, scoped: bool = False) -> None:
    """Adds a way to find the transaction `add_task` runs in (idempotent).

    The one seam for "which transaction am I in": tq's helpers make their
    transaction ambient explicitly (`ambient`); a finder is asked when none
    did, in the order finders were registered, and the first answer that
    is not None wins. It returns a `Transaction` that `add_task` writes
    into (an instrumented SQLAlchemy session, a Django atomic block), an
    `UntoldTransaction` that makes `add_task` refuse, or None. Finders run
    on every `add_task` outside an explicit transaction: keep them cheap.

    Inside `outside_transaction()` a finder is not asked, unless it is
    `scoped`: a scoped finder stamps each transaction it sees begin
    (`transaction_stamp()`), and passes over those that
    `hidden_here()` says an open `outside_transaction()` block hides,
    so that a transaction begun inside the block is found as a helper's
    would be, and one begun before it is not. Default False.
    """
    global _finders
    with _finders_lock:
        if all(f != finder for f, _ in _finders):
            _finders = (*_finders, (finder, scoped))


def unregister_finder(finder: TransactionFinder) -> None:
    global _finders
    with _finders_lock:
        _finders = tuple((f, s) for f, s in _finders if f != finder)


def transaction_stamp() -> int:
    """A stamp for a transaction beginning now (for scoped finders).

    Stamps increase: a scoped finder records one with each transaction it
    sees begin, and asks `hidden_here` about it.
    """
    return next(_stamps)


def hidden_here(stamp: int) -> bool:
    """Whether a transaction stamped `stamp` is hidden here.

    It is while a scope opened after it began is open in this context (an
    `outside_transaction()` block, or a pushed task's handler run by
    `new_transaction_scope()`); one begun inside the scope is not.
    """
    return stamp < _outside_since.get()


def find_transaction() -> Transaction | UntoldTransaction | None:
    """The transaction `add_task` runs in: made ambient, found, seen untold, or None.

    Inside `outside_transaction()` (and no helper's block opened within it)
    only scoped finders are asked, and they answer only for transactions
    begun inside the block.
    """
    txn = _current.get()
    if txn is not None:
        return txn
    outside = _outside.get()
    for finder, scoped in _finders:
        if outside and not scoped:
            continue
        found = finder()
        if found is not None:
            return found
    return None


def current_transaction() -> Transaction | None:
    """The transaction `add_task` writes into in this context, if any.

    One a store's helper made ambient, else one a finder found; an untold
    transaction counts as none here (`find_transaction` tells it apart).
    """
    found = find_transaction()
    return None if isinstance(found, UntoldTransaction) else found


@contextlib.contextmanager
def ambient(txn: Transaction) -> Iterator[Transaction]:
    """Makes `txn` the current transaction inside the `with` block (for stores)."""
    token = _current.set(txn)
    try:
        yield txn
    finally:
        _current.reset(token)


_Scope = tuple[
    "contextvars.Token[Transaction | None]", "contextvars.Token[bool]", "contextvars.Token[int]"
]


def enter_new_scope(*, outside: bool = False) -> _Scope:
    """Opens a new transaction scope in this context (see `new_transaction_scope`)."""
    return _current.set(None), _outside.set(outside), _outside_since.set(next(_stamps))


def leave_scope(scope: _Scope) -> None:
    current, outside, since = scope
    _outside_since.reset(since)
    _outside.reset(outside)
    _current.reset(current)


@contextlib.contextmanager
def new_transaction_scope() -> Iterator[None]:
    """Runs the block as a request of its own: no transaction open around it is seen.

    The push path runs every handler so (a handler run in memory by
    tqtesting, or by the database queue's worker, inherits the context of
    the code that ran it, which may be inside a transaction): tq's helpers'
    transactions and those scoped finders saw begin before the block are
    not the handler's. Unlike `outside_transaction()`, every finder is
    asked, and a transaction begun inside the block is found as usual.
    """
    scope = enter_new_scope()
    try:
        yield
    finally:
        leave_scope(scope)


@contextlib.contextmanager
def outside_transaction() -> Iterator[None]:
    """Adds the tasks of the `with` block as if no transaction were open.

    Inside it, `add_task` submits at once: NON_TRANSACTIONAL and
    FOLLOWS_CONTEXT tasks go out now even while a transaction (tq's or one
    tq was not told about) is open, and TRANSACTIONAL ones are refused. A
    tq helper's transaction opened inside the block is ambient as usual,
    and so is one a scoped finder sees begin inside it (an instrumented
    SQLAlchemy session or engine, see `register_finder`).
    Use it when a task must not wait for, nor depend on, the open one.
    """
    scope = enter_new_scope(outside=True)
    try:
        yield
    finally:
        leave_scope(scope)


_stores: dict[str, ReminderStore] = {}
_stores_lock = threading.Lock()


def register_store(store: ReminderStore) -> None:
    """Makes a store known to sweepers and admin commands. Idempotent per name."""
    with _stores_lock:
        _stores[store.name] = store


def unregister_store(name: str) -> None:
    with _stores_lock:
        _stores.pop(name, None)


def stores() -> list[ReminderStore]:
    """The registered stores, by name."""
    with _stores_lock:
        return [_stores[k] for k in sorted(_stores)]


def get_store(name: str) -> ReminderStore | None:
    with _stores_lock:
        return _stores.get(name)
