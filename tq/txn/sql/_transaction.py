"""Making a SQLAlchemy transaction ambient, so `add_task` writes reminders into it.

How reminders get into the caller's transaction:

* Session and AsyncSession: `add_task` buffers reminders on the transaction
  object kept in `session.info`; a class-level `before_commit` listener
  inserts them (one statement for the lot) just before the session commits.
  Session events run in SQLAlchemy's sync greenlet, so this works for an
  AsyncSession too. Savepoints (`begin_nested`) are followed: a rolled-back
  savepoint drops the reminders added inside it.
* Core Connection: each reminder is inserted when added; listeners on the
  connection's engine (registered once) follow commits, rollbacks and
  savepoints.

After the commit, the happy path (`tq._outbox`) submits the reminders and
deletes them. It never raises into the caller, and runs nowhere after a
rollback or a failed commit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Literal

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, SessionTransaction

from tq import _outbox
from tq._errors import ConfigError
from tq._submitter import Submitter
from tq.txn._store import PendingTask
from tq.txn.sql._schema import to_micros
from tq.txn.sql._store import SQLStore

log = logging.getLogger("tq.txn.sql")

INFO_KEY = "tq.txn.sql"
# The reminder INSERT goes to the driver as written (`exec_driver_sql`, in
# the driver's parameter style), values converted by hand: a Core insert or
# a text() statement costs a statement-cache lookup and per-parameter
# processing that on SQLite add up to more than the statement itself.
# `exec_driver_sql` keeps the rest (autobegin, events, error wrapping).
# `parked` takes the column default (false).
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
    sqlite = dialect.name == "sqlite"
    rows: list[Any] = []
    for p in pending:
        r = p.reminder
        # SQLite keeps times as integer microseconds (see _schema.Timestamp).
        fu: Any = to_micros(r.fresh_until) if sqlite else r.fresh_until
        rows.append((r.id, fu, r.extra, r.payload))
    if dialect.paramstyle in _NAMED_STYLES:
        rows = [dict(zip(_COLUMNS, row, strict=True)) for row in rows]
    conn.exec_driver_sql(_insert_sql(dialect.paramstyle), rows[0] if len(rows) == 1 else rows)


# "collect": the helper runs the happy path after the commit returns;
# "sync" / "async": bind() runs it from the commit listener (async: as a task).
Mode = Literal["collect", "sync", "async"]

# Happy paths scheduled from a bound AsyncSession's commit, kept referenced
# until done (the event loop keeps only weak references to tasks).
_background: set[asyncio.Task[None]] = set()


class SQLTransaction:
    """The ambient transaction of a Session, an AsyncSession or a Connection."""

    __slots__ = (
        "_deadline",
        "_store",
        "closing",
        "committed",
        "conn",
        "detach",
        "marks",
        "mode",
        "pending",
        "session",
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
        self.closing = False  # Core: the helper's own commit is under way
        self.unverified: list[PendingTask] = []  # Core: committed inside the block

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
        if self.conn is not None:
            if _writes_in_transaction(pending):
                pending.submitter.write_in_transaction(self.conn, pending.submission)  # type: ignore[attr-defined]
            else:
                _insert(self.conn, (pending,))
            self.written += 1
        elif self.session is not None and not self.session.in_transaction():
            # The reminder belongs to the session's transaction: open it now (no
            # I/O yet) so the rollback or commit that follows covers it.
            self.session.begin()
        self.pending.append(pending)

    def write(self, conn: Connection) -> None:
        todo = self.pending[self.written :]
        for p in todo:
            if _writes_in_transaction(p):
                p.submitter.write_in_transaction(conn, p.submission)  # type: ignore[attr-defined]
        reminders = [p for p in todo if not _writes_in_transaction(p)]
        if reminders:
            _insert(conn, reminders)
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
        self.written = 0

    def commit_done(self) -> None:
        done, self.pending = self.pending, []
        self.marks.clear()
        self.written = 0
        # Tasks written straight into the transaction exist already: no happy path.
        done = [p for p in done if not _writes_in_transaction(p)]
        if not done:
            return
        if self.mode == "collect":
            self.committed.extend(done)
        elif self.mode == "sync":
            happy_path(self._store, done)
        else:
            _schedule_happy_path(self._store, done)


def _writes_in_transaction(p: PendingTask) -> bool:
    """Whether the task's submitter writes it into the transaction itself.

    The database queue's submitter (`tq.dbqueue.WritesInTransaction`) inserts
    the task row in the caller's transaction: no reminder, no happy path.
    """
    return _writes_itself(p.submitter)


def _writes_itself(submitter: Submitter) -> bool:
    return callable(getattr(submitter, "write_in_transaction", None))


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
    """Waits for the happy paths that bound AsyncSessions started on this loop.

    `bind(async_session)` cannot await the happy path from inside the commit,
    so it runs as a task; call this before shutting down (and in tests).
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
    txn = session.info.get(INFO_KEY)
    if txn is not None and trans.nested:
        txn.savepoint_began(id(trans))


@event.listens_for(Session, "after_soft_rollback")
def _after_soft_rollback(session: Session, previous: SessionTransaction) -> None:
    txn = session.info.get(INFO_KEY)
    if txn is not None and previous.nested:
        txn.savepoint_rolled_back(id(previous))


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, trans: SessionTransaction) -> None:
    # A root transaction that ends without after_commit rolled back (or was
    # closed): what it saved is gone.
    txn = session.info.get(INFO_KEY)
    if txn is not None and trans.parent is None:
        txn.rolled_back()
        if txn.detach:
            session.info.pop(INFO_KEY, None)


# Core connections. Listeners registered once per engine (registering and
# removing five listeners on each Connection cost more than the transaction's
# own SQLAlchemy work); they find the helper's transaction by connection.
# Connections of the engine outside a helper pay one dict lookup per event.


class _Core:
    __slots__ = ("savepoints", "txn")

    def __init__(self, txn: SQLTransaction) -> None:
        self.txn = txn
        self.savepoints: list[int] = []


_core: dict[Connection, _Core] = {}
_hooked: weakref.WeakSet[Engine] = weakref.WeakSet()
_hook_lock = threading.Lock()


def _on_commit(conn: Connection) -> None:
    c = _core.get(conn)
    if c is None:
        return
    txn = c.txn
    # Fires before the database commits. The helper's own commit: a failure
    # raises into the helper, which then drops everything. A commit inside
    # the block may fail and be swallowed by the caller, so its reminders
    # are checked against the table before their happy path.
    if txn.closing:
        txn.commit_done()
    else:
        txn.unverified.extend(p for p in txn.pending if not _writes_in_transaction(p))
        txn.rolled_back()


def _on_rollback(conn: Connection) -> None:
    c = _core.get(conn)
    if c is not None:
        c.txn.rolled_back()


def _on_savepoint(conn: Connection, _name: str | None) -> None:
    c = _core.get(conn)
    if c is not None:
        c.savepoints.append(len(c.savepoints))
        c.txn.savepoint_began(c.savepoints[-1])


def _on_rollback_savepoint(conn: Connection, _name: str, _ctx: Any) -> None:
    c = _core.get(conn)
    if c is not None and c.savepoints:
        c.txn.savepoint_rolled_back(c.savepoints.pop())


def _on_release_savepoint(conn: Connection, _name: str, _ctx: Any) -> None:
    c = _core.get(conn)
    if c is not None and c.savepoints:
        c.txn.marks.pop(c.savepoints.pop(), None)


_LISTENERS: list[tuple[str, Callable[..., None]]] = [
    ("commit", _on_commit),
    ("rollback", _on_rollback),
    ("savepoint", _on_savepoint),
    ("rollback_savepoint", _on_rollback_savepoint),
    ("release_savepoint", _on_release_savepoint),
]


def _hook(engine: Engine) -> None:
    # A Connection's events join its engine's at every event point, so a
    # connection made before the engine was hooked is followed too.
    if engine in _hooked:  # the common case, without the lock
        return
    with _hook_lock:
        if engine in _hooked:
            return
        for name, fn in _LISTENERS:
            event.listen(engine, name, fn)
        _hooked.add(engine)


def listen_connection(conn: Connection, txn: SQLTransaction) -> Connection:
    """Follows `conn`'s commits, rollbacks and savepoints into `txn` until unlistened."""
    _hook(conn.engine)
    _core[conn] = _Core(txn)
    return conn


def unlisten_connection(conn: Connection, _token: Connection | None = None) -> None:
    _core.pop(conn, None)


def committed_only(store: SQLStore, pending: list[PendingTask]) -> list[PendingTask]:
    try:
        found = {r.id for r in store.fetch_reminders([p.reminder.id for p in pending])}
    except Exception:
        log.exception("tq: could not read back reminders; the sweeper will submit them")
        return []
    return [p for p in pending if p.reminder.id in found]
