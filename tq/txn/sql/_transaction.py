"""Making a SQLAlchemy transaction ambient, so `add_task` writes reminders into it.

How reminders get into the caller's transaction:

* Session and AsyncSession: `add_task` buffers reminders on the transaction
  object kept in `session.info`; a class-level `before_commit` listener
  inserts them (one statement for the lot) just before the session commits.
  Session events run in SQLAlchemy's sync greenlet, so this works for an
  AsyncSession too. Savepoints (`begin_nested`) are followed: a rolled-back
  savepoint drops the reminders added inside it.
* Core Connection: each reminder is inserted when added, and remembers the
  database transaction it went into (and whether a savepoint was open).
  No listener is registered: a listener on an engine would tax every
  transaction of that engine (SQLAlchemy dispatches events per
  connection). When the helper commits, a reminder added in an earlier
  transaction of the block (ended by a commit or rollback inside it) or
  under a savepoint is read back from the table before its happy path, so
  only what committed is submitted; the rest are known to be in the commit.
* Core Connection of an instrumented engine (`_instrument`): reminders are
  buffered as in a Session and written by the connection's commit hook.

Every root Session transaction is noted in the context (`_frames`) when it
begins, so that the finder (`_finder`) sees transactions tq was not told
about, and those of instrumented sessionmakers.

After the commit, the happy path (`tq._outbox`) submits the reminders and
deletes them. It never raises into the caller, and runs nowhere after a
rollback or a failed commit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal

from sqlalchemy import Connection, event
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.session import SessionTransactionOrigin

from tq import _outbox
from tq._errors import ConfigError
from tq._submitter import Submitter
from tq.txn._store import PendingTask
from tq.txn.sql import _frames
from tq.txn.sql._schema import MICROS_DIALECTS, to_micros
from tq.txn.sql._store import SQLStore

log = logging.getLogger("tq.txn.sql")

INFO_KEY = "tq.txn.sql"
# The reminder INSERT goes to the driver as written (`exec_driver_sql`, in
# the driver's parameter style), values converted by hand: a Core insert or
# a text() statement costs a statement-cache lookup and per-parameter
# processing that on SQLite add up to more than the statement itself.
# `exec_driver_sql` keeps the rest (autobegin, events, error wrapping); a
# single row goes straight to the driver's cursor where nothing watches the
# connection (`_driver_execute`). `parked` takes the column default (false).
_COLUMNS = ("id", "fresh_until", "extra", "payload")
_MARKS: dict[str, Callable[[int, str], str]] = {
    "qmark": lambda i, c: "?",
    "format": lambda i, c: "%s",
    "numeric": lambda i, c: f":{i}",
    "numeric_dollar": lambda i, c: f"${i}",
    "named": lambda i, c: f":{c}",
    "pyformat": lambda i, c: f"%({c})s",
}
_NAMED_STYLES = frozenset({"named", "pyformat"})
_inserts: dict[str, str] = {}


def _insert_sql(paramstyle: str) -> str:
    sql = _inserts.get(paramstyle)
    if sql is None:
        mark = _MARKS.get(paramstyle)
        if mark is None:
            raise ConfigError(f"tq.txn.sql: unsupported driver parameter style {paramstyle!r}")
        values = ", ".join(mark(i, c) for i, c in enumerate(_COLUMNS, 1))
        sql = _inserts[paramstyle] = (
            f"INSERT INTO tq_reminders ({', '.join(_COLUMNS)}) VALUES ({values})"
        )
    return sql


def _insert(conn: Connection, pending: Sequence[PendingTask]) -> None:
    """Inserts the reminders of `pending` in `conn`'s transaction."""
    dialect = conn.dialect
    micros = dialect.name in MICROS_DIALECTS
    rows: list[Any] = []
    for p in pending:
        r = p.reminder
        # SQLite and MySQL keep times as integer microseconds (see _schema.Timestamp).
        fu: Any = to_micros(r.fresh_until) if micros else r.fresh_until
        rows.append((r.id, fu, r.extra, r.payload))
    if dialect.paramstyle in _NAMED_STYLES:
        rows = [dict(zip(_COLUMNS, row, strict=True)) for row in rows]
    sql = _insert_sql(dialect.paramstyle)
    if len(rows) > 1:
        conn.exec_driver_sql(sql, rows)
    elif not _driver_execute(conn, sql, rows[0]):
        conn.exec_driver_sql(sql, rows[0])


def _driver_execute(conn: Connection, sql: str, params: Any) -> bool:
    """Runs one statement on the driver's cursor, as `exec_driver_sql` would; False if it did not.

    `exec_driver_sql` builds an execution context and a result for a
    statement that returns nothing: on SQLite that cost about as much as
    the INSERT itself (docs/benchmarks.md, section 1). Where nothing watches
    the connection (no event listener on it, its engine or its dialect; no
    `echo`) and its transaction is open and usable, the same statement goes
    straight to a driver cursor, as SQLAlchemy's own default execution does
    (`cursor.execute`); a driver error goes through the connection's
    error handling (wrapped in `sqlalchemy.exc.DBAPIError`, a disconnect
    invalidating the connection). Anything else, or a SQLAlchemy without
    these internals, takes `exec_driver_sql`.
    """
    try:
        if conn._has_events or conn._echo or conn.dialect._has_events or conn.engine._has_events:
            return False
        trans, nested, ctx = (
            conn._transaction, conn._nested_transaction, conn._trans_context_manager
        )  # fmt: skip
        dbapi_conn = conn._dbapi_connection
    except AttributeError:  # pragma: no cover - another SQLAlchemy
        return False
    if (
        dbapi_conn is None
        or trans is None
        or not trans.is_active
        or (nested is not None and not nested.is_active)
        or (ctx is not None and not ctx._transaction_is_active())
    ):
        return False  # exec_driver_sql begins, or raises what SQLAlchemy raises
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute(sql, params)
    except BaseException as e:  # closes the cursor, raises the wrapped error
        conn._handle_dbapi_exception(e, sql, params, cursor, None)
    cursor.close()
    return True


# "collect": the helper runs the happy path after the commit returns;
# "sync" / "async": `finish()` runs it when the committed transaction ends
# (awaited in SQLAlchemy's async bridge; "async" outside it: as a task).
Mode = Literal["collect", "sync", "async"]

# Happy paths scheduled from a bound AsyncSession's commit, kept referenced
# until done (the event loop keeps only weak references to tasks).
_background: set[asyncio.Task[None]] = set()


class SQLTransaction:
    """The ambient transaction of a Session, an AsyncSession or a Connection."""

    __slots__ = (
        "_deadline",
        "_store",
        "committed",
        "conn",
        "detach",
        "marks",
        "mode",
        "pending",
        "scopes",
        "session",
        "unsure_direct",
        "unverified",
        "written",
    )  # fmt: skip

    def __init__(
        self,
        store: SQLStore,
        deadline: dt.datetime | None,
        mode: Mode,
        *,
        session: Session | None = None,
        conn: Connection | None = None,
    ) -> None:
        self._store = store
        self._deadline = deadline
        self.mode = mode
        self.session = session  # reminders buffered until its commit
        self.conn = conn  # Core: reminders go in at once
        self.pending: list[PendingTask] = []  # saved in the open database transaction
        self.written = 0  # how many of `pending` are inserted already
        self.committed: list[PendingTask] = []  # committed, waiting for the happy path
        self.marks: dict[int, int] = {}  # savepoint -> len(pending) when it began
        self.detach = False  # bind() ended with reminders still uncommitted
        # Core: for each of `pending`, the database transaction it went into,
        # or None if a savepoint was open then (it may have been rolled back).
        self.scopes: list[object | None] = []
        self.unverified: list[PendingTask] = []  # Core: to read back after the commit
        self.unsure_direct: list[PendingTask] = []  # Core: the same, written by submitters

    @property
    def store(self) -> SQLStore:
        return self._store

    @property
    def deadline(self) -> dt.datetime | None:
        return self._deadline

    def writes_tasks_of(self, submitter: Submitter) -> bool:
        """Whether `submitter` writes its tasks into this transaction itself (no reminder)."""
        return _writes_itself(submitter)

    def save_reminder(self, pending: PendingTask) -> None:
        conn = self.conn
        if conn is not None:
            if _writes_in_transaction(pending):
                _write_task(conn, pending)
            else:
                _insert(conn, (pending,))
            self.written += 1
            nested = conn.get_nested_transaction() is not None
            self.scopes.append(None if nested else conn.get_transaction())
        elif self.session is not None and not self.session.in_transaction():
            # The reminder belongs to the session's transaction: open it now (no
            # I/O yet) so the rollback or commit that follows covers it.
            self.session.begin()
        self.pending.append(pending)

    def save_reminders(self, pending: Sequence[PendingTask]) -> None:
        """`save_reminder` for a batch: on a Connection, one INSERT for the lot."""
        conn = self.conn
        if conn is None:
            for p in pending:
                self.save_reminder(p)
            return
        _write_all(conn, pending)
        self.written += len(pending)
        nested = conn.get_nested_transaction() is not None
        scope = None if nested else conn.get_transaction()
        self.scopes.extend([scope] * len(pending))
        self.pending.extend(pending)

    def write(self, conn: Connection) -> None:
        _write_all(conn, self.pending[self.written :])
        self.written = len(self.pending)

    def savepoint_began(self, key: int) -> None:
        self.marks[key] = len(self.pending)

    def savepoint_rolled_back(self, key: int) -> None:
        mark = self.marks.pop(key, None)
        if mark is not None:
            del self.pending[mark:]
            self.written = min(self.written, mark)

    def rolled_back(self) -> None:
        self.pending.clear()
        self.marks.clear()
        self.scopes.clear()
        self.unsure_direct.clear()
        self.written = 0

    def sort_core(self, current: object) -> None:
        """Core, before the helper's commit: which reminders are surely in it.

        Those saved in `current` (the connection's transaction now) outside
        any savepoint commit with it. The others went into a transaction
        that ended inside the block, or under a savepoint that may have been
        rolled back: they move to `unverified`, to be read back after the
        commit. Tasks written into the transaction by their submitter have
        no happy path: the unsure ones go to `unsure_direct`, for the
        submitter to hear of (`_report_direct`).
        """
        sure: list[PendingTask] = []
        for p, scope in zip(self.pending, self.scopes, strict=True):
            if scope is current:
                sure.append(p)
            elif _writes_in_transaction(p):
                self.unsure_direct.append(p)
            else:
                self.unverified.append(p)
        self.pending = sure
        self.scopes = []

    def commit_done(self) -> None:
        done, self.pending = self.pending, []
        unsure, self.unsure_direct = self.unsure_direct, []
        self.marks.clear()
        self.scopes.clear()
        self.written = 0
        # Tasks written straight into the transaction exist already: no happy
        # path, only a word to their submitters.
        direct, done = _split_direct(done)
        if direct or unsure:
            _report_direct(direct, unsure)
        # The happy path runs after the transaction ended: the helper runs it
        # ("collect"); for the others, `finish()` does, once the connection is
        # given back (a Session's after_transaction_end, a Core commit).
        self.committed.extend(done)

    def finish(self) -> None:
        """Runs the happy path of what committed (`bind` and instrumented transactions).

        Inside SQLAlchemy's async bridge (the commit of an AsyncSession or an
        AsyncConnection) it awaits the async happy path there, so that the
        awaited commit returns after it; otherwise a Session bound in "async"
        mode (committed outside the bridge) schedules it as a task, and the
        rest run it in place.
        """
        done, self.committed = self.committed, []
        if not done:
            return
        if in_async_bridge():
            await_in_bridge(happy_path_async(self._store, done))
        elif self.mode == "async":
            _schedule_happy_path(self._store, done)
        else:
            happy_path(self._store, done)


def _writes_in_transaction(p: PendingTask) -> bool:
    """Whether the task's submitter writes it into the transaction itself.

    The database queue's submitter (`tq.dbqueue.WritesInTransaction`) inserts
    the task row in the caller's transaction: no reminder, no happy path.
    """
    return _writes_itself(p.submitter)


def _writes_itself(submitter: Submitter) -> bool:
    return callable(getattr(submitter, "write_in_transaction", None))


def _split_direct(
    pending: Sequence[PendingTask],
) -> tuple[list[PendingTask], list[PendingTask]]:
    """(tasks whose submitter writes them into the transaction itself, the reminders).

    The submitter is asked once per run of tasks with the same one (a batch
    has one): this runs for every task of every transaction.
    """
    direct: list[PendingTask] = []
    reminders: list[PendingTask] = []
    last: object = None
    writes = False
    for p in pending:
        submitter = p.submitter
        if submitter is not last:
            last, writes = submitter, _writes_itself(submitter)
        (direct if writes else reminders).append(p)
    return direct, reminders


def _hears_of_commits(submitter: Submitter) -> bool:
    """Whether the submitter takes its commits from the helper (see `WritesInTransaction`)."""
    return callable(getattr(submitter, "insert_in_transaction", None)) and callable(
        getattr(submitter, "transaction_committed", None)
    )


def _write_all(conn: Connection, pending: Sequence[PendingTask]) -> None:
    """Writes tasks and reminders on `conn`: one call per submitter's batch, one for reminders."""
    direct: dict[int, list[PendingTask]] = {}
    tasks, reminders = _split_direct(pending)
    for p in tasks:
        direct.setdefault(id(p.submitter), []).append(p)
    for batch in direct.values():
        submitter = batch[0].submitter
        insert_batch = getattr(submitter, "insert_batch_in_transaction", None)
        if len(batch) > 1 and callable(insert_batch) and _hears_of_commits(submitter):
            insert_batch(conn, [p.submission for p in batch])
        else:
            for p in batch:
                _write_task(conn, p)
    if reminders:
        _insert(conn, reminders)


def _write_task(conn: Connection, p: PendingTask) -> None:
    """Has the submitter write its task on `conn`; the commit is reported by `_report_direct`."""
    if _hears_of_commits(p.submitter):
        p.submitter.insert_in_transaction(conn, p.submission)  # type: ignore[attr-defined]
    else:  # a submitter that follows the commit itself
        p.submitter.write_in_transaction(conn, p.submission)  # type: ignore[attr-defined]


def _report_direct(sure: list[PendingTask], unsure: list[PendingTask]) -> None:
    """Tells each submitter which of its tasks the commit holds (`sure`) or may not."""
    by: dict[int, tuple[Any, list[Any], list[Any]]] = {}
    hears: dict[int, list[list[Any]] | None] = {}  # by submitter: a batch has one or a few
    for group, i in ((sure, 0), (unsure, 1)):
        for p in group:
            key = id(p.submitter)
            if key in hears:
                lists = hears[key]
            else:
                lists = None
                if _hears_of_commits(p.submitter):
                    entry = by[key] = (p.submitter, [], [])
                    lists = [entry[1], entry[2]]
                hears[key] = lists
            if lists is not None:
                lists[i].append(p.submission)
    for submitter, s, u in by.values():
        try:
            submitter.transaction_committed(s, u)
        except Exception:  # a wakeup is an optimisation: never fail the commit's caller
            log.exception("tq: %r failed to hear of a commit", submitter)


def happy_path(store: SQLStore, pending: Sequence[PendingTask]) -> None:
    try:
        _outbox.after_commit(store, pending)
    except Exception:  # after_commit never raises; this guards the guarantee
        log.exception("tq: happy path failed; the sweeper will submit the reminders")


async def happy_path_async(store: SQLStore, pending: Sequence[PendingTask]) -> None:
    try:
        await _outbox.after_commit_async(store, pending)
    except Exception:
        log.exception("tq: happy path failed; the sweeper will submit the reminders")


def in_async_bridge() -> bool:
    """Whether this runs in a greenlet of SQLAlchemy's async bridge (`greenlet_spawn`).

    Without greenlet loaded nothing can run there (and sync users need not
    install it).
    """
    gl = sys.modules.get("greenlet")
    return gl is not None and bool(
        getattr(gl.getcurrent(), "__sqlalchemy_greenlet_provider__", False)
    )


def await_in_bridge(coro: Coroutine[Any, Any, None]) -> None:
    """Awaits `coro` from sync code running in SQLAlchemy's async bridge."""
    from sqlalchemy import util

    wait = getattr(util, "await_", None) or util.await_only  # await_only: before 2.1
    wait(coro)


def _schedule_happy_path(store: SQLStore, pending: list[PendingTask]) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # an AsyncSession committed outside a loop: cannot await
        happy_path(store, pending)
        return
    task = loop.create_task(happy_path_async(store, pending))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def drain() -> None:
    """Waits for the happy paths started as tasks on this loop.

    An AsyncSession's commit awaits its happy path in SQLAlchemy's async
    bridge; only a Session bound with `bind(async_session)` and committed
    outside the bridge (its sync_session committed by hand) leaves it to a
    task. Call this before shutting down (and in tests) to wait for those.
    """
    loop = asyncio.get_running_loop()
    while True:
        mine = [t for t in _background if t.get_loop() is loop and not t.done()]
        if not mine:
            return
        await asyncio.gather(*mine)


# Session listeners, once for the Session class (so for every session and
# every AsyncSession's sync_session). Sessions without a tq transaction in
# their info pay one dict lookup per event.


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    txn = session.info.get(INFO_KEY)
    if txn is not None and txn.written < len(txn.pending):
        txn.write(session.connection())


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    txn = session.info.get(INFO_KEY)
    if txn is not None and not session.in_nested_transaction():
        txn.commit_done()


@event.listens_for(Session, "after_transaction_create")
def _after_transaction_create(session: Session, trans: SessionTransaction) -> None:
    if trans._parent is None:
        # Every Session's transaction is noted in this context, told or not:
        # the finder (`_finder`) writes into it or refuses on its account.
        _frames.note(trans)
        return
    if trans.origin is SessionTransactionOrigin.SUBTRANSACTION:
        # Only a flush with work to do (or a bulk save) begins one: the root
        # transaction has written (the finder's rule for untold sessions).
        _frames.note_written(trans)
        return
    txn = session.info.get(INFO_KEY)
    if txn is not None and trans.nested:
        txn.savepoint_began(id(trans))


@event.listens_for(Session, "after_soft_rollback")
def _after_soft_rollback(session: Session, previous: SessionTransaction) -> None:
    txn = session.info.get(INFO_KEY)
    if txn is not None and previous.nested:
        txn.savepoint_rolled_back(id(previous))


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    # An explicit rollback of the root transaction (a savepoint's is followed
    # by after_soft_rollback): its tasks are dropped, as asked.
    txn = session.info.get(INFO_KEY)
    trans = session._transaction
    if txn is not None and trans is not None and trans._parent is None:
        txn.rolled_back()


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, trans: SessionTransaction) -> None:
    if trans._parent is not None:
        return
    _frames.forget(trans)
    # A root transaction that ends without after_commit rolled back (or was
    # closed): what it saved is gone. After a commit, what it saved waits in
    # `committed`, and the connection has been given back: the happy path
    # runs now (the helpers run their own after the block).
    txn = session.info.get(INFO_KEY)
    if txn is not None:
        if txn.pending and txn.mode != "collect":
            warn_dropped(txn.pending, "its Session was closed")
        txn.rolled_back()
        if txn.detach:
            session.info.pop(INFO_KEY, None)
        if txn.committed and txn.mode != "collect":
            txn.finish()


def warn_dropped(pending: Sequence[PendingTask], why: str) -> None:
    """Logs tasks dropped with a transaction that ended neither committed nor rolled back."""
    classes = sorted({p.submission.task_class for p in pending})
    log.warning(
        "tq: %d task(s) of class %s dropped: added in a transaction that ended without a "
        "commit (%s). Commit the transaction, or add tasks that must go out regardless "
        "inside tq.txn.outside_transaction()",
        len(pending),
        ", ".join(classes),
        why,
    )


def committed_only(store: SQLStore, pending: list[PendingTask]) -> list[PendingTask]:
    try:
        found = {r.id for r in store.fetch_reminders([p.reminder.id for p in pending])}
    except Exception:
        log.exception("tq: could not read back reminders; the sweeper will submit them")
        return []
    return [p for p in pending if p.reminder.id in found]
