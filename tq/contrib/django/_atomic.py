"""The outbox in Django's `atomic()` blocks: a transaction finder for tq.

Registered with `tq.txn.register_finder`, `find` tells `add_task` (and so
the django.tasks backend) that it runs inside `transaction.atomic()` on one
of the watched aliases, detected from `connection.in_atomic_block`. The
task is then written in that transaction through Django's own connection:

* its reminder (a row of `tq_reminders`), submitted right after the commit
  by an `on_commit` callback (the happy path) and by the sweeper if the
  process dies first; or,
* when tasks go to the database queue on the same database, the task row
  itself (a row of `tq_tasks`): it exists if and only if the transaction
  commits, and the workers wake up on commit.

A rollback, or a rolled-back inner `atomic()` (its savepoint), drops the
row, and Django drops the `on_commit` callbacks registered inside it.
Outside any atomic block on a watched alias nothing is found and tasks are
submitted at once. The finder is scoped (see `tq.txn.register_finder`): a
block begun before the current scope, the caller's around a pushed
handler or around an `outside_transaction()` block, is not the scope's,
and one begun inside it is. A connection in a transaction that is not an atomic
block (`set_autocommit(False)`) is a transaction tq cannot follow:
`add_task` refuses there, and where atomic blocks are open on several
aliases at once, unless `on_database(alias)` says which one to use.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, SupportsIndex

from django.db import connections, transaction

from tq import _outbox
from tq._errors import ConfigError
from tq._submitter import Submitter
from tq.contrib.django._databases import DjangoStore, sqlalchemy_url
from tq.contrib.django._delivery import DatabaseDelivery
from tq.dbqueue import _dbapi
from tq.dbqueue._submitter import DbQueueSubmitter
from tq.txn import PendingTask, Transaction, UntoldTransaction
from tq.txn._store import get_store, hidden_here, transaction_stamp
from tq.txn.sql._schema import to_micros
from tq.txn.sql._store import url_key
from tq.txn.sql._transaction import _insert_sql

_INSERT_REMINDER = _insert_sql("format")
_watched: tuple[str, ...] = ()
_chosen: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tq_django_alias", default=None
)


def watch(aliases: Sequence[str]) -> None:
    """The aliases whose atomic blocks `find` looks at (set at start-up)."""
    global _watched
    _watched = tuple(aliases)


def watched() -> tuple[str, ...]:
    return _watched


@contextlib.contextmanager
def on_database(alias: str) -> Iterator[None]:
    """Tasks added in the block go into the atomic block of `alias`.

    Only needed where atomic blocks are open on several watched aliases
    at once; ConfigError if `alias` is not watched.
    """
    if alias not in _watched:
        raise ConfigError(f"tq does not watch database {alias!r} (watched: {list(_watched)})")
    token = _chosen.set(alias)
    try:
        yield
    finally:
        _chosen.reset(token)


class Blocks(list[Any]):
    """A connection's `atomic_blocks`, noting when each block began (a transaction stamp).

    Django appends each `atomic()` block it enters to the connection's list
    and pops it on exit; tq puts this list in its place (`stamp_blocks`),
    so that the finder can tell a block begun before the current scope (a
    caller's, around a pushed handler or an `outside_transaction()` block)
    from one begun inside it.
    """

    __slots__ = ("stamps",)

    def __init__(self, blocks: Iterable[Any] = ()) -> None:
        super().__init__(blocks)
        self.stamps = [0] * len(self)  # begun before tq watched: before any scope

    def append(self, block: Any) -> None:
        super().append(block)
        self.stamps.append(transaction_stamp())

    def pop(self, index: SupportsIndex = -1) -> Any:
        self.stamps.pop(index)
        return super().pop(index)


def stamp_blocks(connection: Any, **_: Any) -> None:
    """Gives a new connection a `Blocks` list (Django's `connection_created` receiver)."""
    blocks = connection.atomic_blocks
    if type(blocks) is not Blocks:
        connection.atomic_blocks = Blocks(blocks)


def _in_block(conn: Any) -> bool:
    """Whether `conn` is in an atomic block the current scope sees.

    The innermost block decides: one a handler opened inside the caller's
    (a savepoint of the caller's transaction) holds the handler's tasks.
    """
    if not conn.in_atomic_block:
        return False
    blocks = conn.atomic_blocks
    if type(blocks) is not Blocks:
        blocks = conn.atomic_blocks = Blocks(blocks)
    stamps = blocks.stamps
    return not stamps or not hidden_here(stamps[-1])


def find() -> Transaction | UntoldTransaction | None:
    """The Django transaction `add_task` runs in, if any (the finder).

    Registered scoped: an atomic block begun before the current scope (a
    pushed handler's, or an `outside_transaction()` block) is passed over.
    """
    chosen = _chosen.get()
    if chosen is not None:
        conn = connections[chosen]
        if _in_block(conn):
            return DjangoTransaction(chosen)
        return None
    found: str | None = None
    for alias in _watched:
        conn = connections[alias]
        if conn.in_atomic_block:
            if not _in_block(conn):
                continue
            if found is not None:
                return UntoldTransaction(
                    what=f"Django atomic blocks on databases {found!r} and {alias!r}",
                    fix="Say which one holds the task with "
                    "`with tq.contrib.django.on_database(alias):`",
                )
            found = alias
        elif conn.connection is not None and not conn.autocommit:
            return UntoldTransaction(
                what=f"a transaction on Django database {alias!r} outside transaction.atomic() "
                "(autocommit is off)",
                fix="Open it with django.db.transaction.atomic()",
            )
    return None if found is None else DjangoTransaction(found)


class DjangoTransaction:
    """The atomic block of one alias, as the `Transaction` add_task writes into."""

    __slots__ = ("alias",)

    def __init__(self, alias: str) -> None:
        self.alias = alias

    @property
    def store(self) -> DjangoStore:
        return store_of(self.alias)

    @property
    def deadline(self) -> None:
        return None

    def writes_tasks_of(self, submitter: Submitter) -> bool:
        """Whether tasks for `submitter` go into this transaction as rows of its queue."""
        return queue_submitter(submitter, self.alias) is not None

    def save_reminder(self, pending: PendingTask) -> None:
        alias = self.alias
        conn = connections[alias]
        queue_sub = queue_submitter(pending.submitter, alias)
        companion = _take_companion(alias)
        with conn.cursor() as cursor:
            if queue_sub is not None:
                queue = pending.submission.request.parent.rsplit("/", 1)[-1]  # type: ignore[attr-defined]
                known = _queue_known(queue_sub, queue)
                if companion is not None and (conn.vendor != "postgresql" or not known):
                    cursor.execute(*companion)
                    companion = None
                _dbapi.insert_task(
                    cursor, queue_sub, pending.submission, known_queue=known, with_row=companion
                )
                transaction.on_commit(
                    lambda: _task_committed(queue_sub, pending, queue), using=alias
                )
                return
            r = pending.reminder
            fresh_until: Any = r.fresh_until
            if conn.vendor == "sqlite":
                fresh_until = to_micros(fresh_until)  # SQLite keeps integer microseconds
            params: tuple[Any, ...] = (r.id, fresh_until, r.extra, r.payload)
            if companion is None:
                cursor.execute(_INSERT_REMINDER, params)
            elif conn.vendor == "postgresql":
                cursor.execute(*with_companion(companion, _INSERT_REMINDER, params))
            else:
                cursor.execute(*companion)
                cursor.execute(_INSERT_REMINDER, params)
        transaction.on_commit(lambda: happy_path(alias, pending), using=alias)


# A row of the caller's written with the task, in one statement on PostgreSQL
# (the django.tasks backend's result row): one round trip fewer per enqueue.

Statement = tuple[str, tuple[Any, ...]]
_companion: contextvars.ContextVar[tuple[str, Statement] | None] = contextvars.ContextVar(
    "tq_django_companion", default=None
)


@contextlib.contextmanager
def companion(alias: str, statement: Statement) -> Iterator[list[bool]]:
    """The next task saved in `alias`'s transaction inside the block writes `statement` too.

    `statement` is an INSERT (SQL in the format style, parameters). Yields a
    list that holds True once it was written; when no task was saved in
    such a transaction, it holds nothing and the caller writes it itself.
    """
    written: list[bool] = []
    token = _companion.set((alias, statement))
    try:
        yield written
    finally:
        if _companion.get() is None:
            written.append(True)
        _companion.reset(token)


def _take_companion(alias: str) -> Statement | None:
    found = _companion.get()
    if found is None or found[0] != alias:
        return None
    _companion.set(None)
    return found[1]


def with_companion(companion: Statement, sql: str, params: tuple[Any, ...]) -> Statement:
    """One PostgreSQL statement doing both INSERTs (a data-modifying WITH); rowcount: `sql`'s."""
    return f"WITH tq_companion AS ({companion[0]}) {sql}", (*companion[1], *params)


# Tasks for the database queue on the transaction's own database.

_lock = threading.Lock()
# Per database-queue submitter: its database (url_key), and its queues seen committed.
_submitter_db: weakref.WeakKeyDictionary[DbQueueSubmitter, tuple[Any, ...]] = (
    weakref.WeakKeyDictionary()
)
_known_queues: weakref.WeakKeyDictionary[DbQueueSubmitter, set[str]] = weakref.WeakKeyDictionary()
_alias_db: dict[tuple[str, str], tuple[Any, ...]] = {}  # (alias, NAME) -> url_key


_queue_targets: dict[tuple[int, str], tuple[Any, Any, DbQueueSubmitter | None]] = {}


def queue_submitter(submitter: Submitter, alias: str) -> DbQueueSubmitter | None:
    """The database-queue submitter behind `submitter` if its queue is on `alias`'s database."""
    sd = connections[alias].settings_dict
    cached = _queue_targets.get((id(submitter), alias))
    if cached is not None and cached[0] is submitter and cached[1] is sd:
        return cached[2]
    target: Any = submitter
    if isinstance(target, DatabaseDelivery):
        target = target.database_queue()
    found: DbQueueSubmitter | None = None
    if isinstance(target, DbQueueSubmitter):
        mine = _submitter_db.get(target)
        if mine is None:
            mine = url_key(target.engine.url)
            with _lock:
                _submitter_db[target] = mine
        name = str(sd.get("NAME"))
        theirs = _alias_db.get((alias, name))
        if theirs is None:
            theirs = url_key(sqlalchemy_url(alias))
            with _lock:
                _alias_db[(alias, name)] = theirs
        found = target if mine == theirs else None
    if not isinstance(submitter, DatabaseDelivery) or found is not None:
        # (A DatabaseDelivery follows its alias's database: it is asked again
        # when the settings dict of the alias changes, as in tests.)
        with _lock:
            if len(_queue_targets) > 256:
                _queue_targets.clear()
            _queue_targets[(id(submitter), alias)] = (submitter, sd, found)
    return found


def _queue_known(submitter: DbQueueSubmitter, queue: str) -> bool:
    known = _known_queues.get(submitter)
    return known is not None and queue in known


def _task_committed(submitter: DbQueueSubmitter, pending: PendingTask, queue: str) -> None:
    with _lock:
        _known_queues.setdefault(submitter, set()).add(queue)
    submitter.transaction_committed([pending.submission], [])


# The happy path.


def store_of(alias: str) -> DjangoStore:
    store = get_store(f"django:{alias}")
    if not isinstance(store, DjangoStore):
        raise ConfigError(
            f"no tq store for Django database {alias!r}: add 'tq.contrib.django' to "
            "INSTALLED_APPS (and the alias to settings.TQ['OUTBOX_DATABASES'] if you set it)"
        )
    return store


class _ConnectionStore:
    """The alias's store, deleting and parking through Django's connection.

    The happy path runs right after the commit in the thread that committed
    (or, under a test's `captureOnCommitCallbacks`, still inside the test's
    transaction, which a second connection could not see past).
    """

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self.store = store_of(alias)

    @property
    def name(self) -> str:
        return self.store.name

    @property
    def max_payload_size(self) -> int:
        return self.store.max_payload_size

    def delete_reminders(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        marks = ", ".join(["%s"] * len(ids))
        with connections[self.alias].cursor() as cursor:
            cursor.execute(f"DELETE FROM tq_reminders WHERE id IN ({marks})", list(ids))

    def park_reminder(self, reminder_id: str, extra: bytes) -> None:
        conn = connections[self.alias]
        parked: Any = True if conn.vendor != "sqlite" else 1
        with conn.cursor() as cursor:
            cursor.execute(
                "UPDATE tq_reminders SET parked = %s, extra = %s WHERE id = %s",
                [parked, extra, reminder_id],
            )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def happy_path(alias: str, pending: PendingTask) -> None:
    """Submits a committed reminder's task and deletes the reminder (never raises)."""
    _outbox.after_commit(_ConnectionStore(alias), [pending])
