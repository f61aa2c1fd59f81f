"""The SQL finder: the transaction `add_task` runs in, among those `_frames` noted.

Registered (scoped) with `tq.txn.register_finder` when `tq.txn.sql` is
imported. It looks at the open transactions of the current context,
newest first, and answers for the first that decides:

* a Session tq knows (a `SQLTransaction` in its `info`: `bind()` whose
  block ended before the commit, or one made here before): that one;
* a Session of an instrumented sessionmaker or engine: a new
  `SQLTransaction` attached to it;
* a Core transaction of an instrumented engine's connection: a new
  buffered `SQLTransaction` on the connection, unless a Session opened
  that connection for its own transaction (then the Session decides);
* any other Session whose transaction *counts*: an `UntoldTransaction`,
  so that `add_task` refuses. It counts when begun explicitly
  (`begin()`), or when autobegun and holding changes (objects added,
  modified or deleted) or having flushed some. A Session that autobegan only to
  read does not count, and the search goes on past it.

A Session joined to a connection of an instrumented engine (bound to the
Connection) leaves the answer to that connection's transaction.
"""

from __future__ import annotations

from sqlalchemy.engine import RootTransaction
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.session import SessionTransactionOrigin

from tq.txn._store import Transaction, UntoldTransaction, hidden_here, register_finder
from tq.txn.sql import _frames
from tq.txn.sql._instrument import (
    Instrumentation,
    TqConnection,
    engine_instrumentation,
    session_instrumentation,
)
from tq.txn.sql._transaction import INFO_KEY, SQLTransaction

FIX = (
    "Tell tq of it: make the sessionmaker (or engine) it comes from transaction-aware once "
    "at start-up with tq.txn.sql.instrument(...), or run this code inside "
    "tq.txn.sql.bind(session)"
)


def find_sql_transaction() -> Transaction | UntoldTransaction | None:
    """The SQLAlchemy transaction `add_task` runs in (see the module docstring)."""
    frames = _frames.current()
    if not frames:
        return None
    for i in range(len(frames) - 1, -1, -1):
        ref, stamp = frames[i]
        trans = ref()
        if trans is None or not _frames.is_open(trans) or hidden_here(stamp):
            continue
        if isinstance(trans, SessionTransaction):
            found = _session_answer(trans)
        else:
            found = _core_answer(trans, frames)  # type: ignore[arg-type]
        if found is not None:
            return found
    return None


def _session_answer(trans: SessionTransaction) -> Transaction | UntoldTransaction | None:
    session = trans.session
    txn: SQLTransaction | None = session.info.get(INFO_KEY)
    if txn is not None:
        return txn
    bind = session.bind
    if isinstance(bind, TqConnection):
        return None  # joined to an instrumented connection: its transaction answers
    inst = session_instrumentation(session)
    if inst is not None:
        return _attach(session, inst)
    how = _counts(session, trans)
    if how is None:
        return None
    where = f" on {bind.engine.url.render_as_string(hide_password=True)}" if bind else ""
    return UntoldTransaction(what=f"a SQLAlchemy Session's transaction ({how}{where})", fix=FIX)


def _counts(session: Session, trans: SessionTransaction) -> str | None:
    """Why the Session's open transaction counts as one, or None if it does not."""
    if trans.origin is not SessionTransactionOrigin.AUTOBEGIN:
        return "begun with begin()"
    if not session._is_clean():
        return "autobegun, with changes not flushed yet"
    if _frames.has_written(trans):
        return "autobegun, with changes flushed"
    return None


def _attach(session: Session, inst: Instrumentation) -> SQLTransaction:
    txn = SQLTransaction(inst.store, None, "sync", session=session)
    txn.detach = True  # let go of the session when this transaction ends
    t = session._transaction
    while t is not None and t._parent is not None:
        if t.nested:  # a savepoint open now: what it holds goes if it rolls back
            txn.savepoint_began(id(t))
        t = t._parent
    session.info[INFO_KEY] = txn
    return txn


def _core_answer(
    trans: RootTransaction, frames: tuple[_frames.Frame, ...]
) -> SQLTransaction | None:
    conn = trans.connection
    if not isinstance(conn, TqConnection) or conn._tq_ending is trans:
        return None
    for ref, _ in frames:
        owner = ref()
        if isinstance(owner, SessionTransaction) and _frames.is_open(owner):
            entry = owner._connections.get(conn)
            if entry is not None and entry[3]:  # the Session opened it: the Session answers
                return None
    inst = engine_instrumentation(conn.engine)
    if inst is None:
        return None  # uninstrumented since
    txn = conn._tq_txn
    if txn is None:
        txn = SQLTransaction(inst.store, None, "sync")
        nested = conn._nested_transaction
        while nested is not None:
            txn.savepoint_began(hash(nested._savepoint))
            nested = nested._previous_nested
        conn._tq_txn = txn
    return txn


register_finder(find_sql_transaction, scoped=True)
