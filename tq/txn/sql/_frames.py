"""Which SQLAlchemy transactions are open in the current context.

A *frame* is noted when a transaction begins and dropped when it ends: a
root `SessionTransaction` of any Session (from the Session-class listeners
in `_transaction`, so every Session and every AsyncSession's sync_session),
and a root Core `RootTransaction` of a connection of an instrumented engine
(`_instrument`). Connections of other engines are not seen: seeing them
would take listeners on their engine, which tax every transaction on it.

Frames live in a context variable, like tq's ambient transaction: a frame
noted in a thread or asyncio task is seen there and in the contexts copied
from it while it is open (tasks created, `asyncio.to_thread` called, inside
the transaction), never in another thread or task. Each frame is a weak
reference (an abandoned session is not kept alive) with a stamp that
tells whether an `outside_transaction()` block hides it. A frame whose transaction
ended in another context is dead there: the finder skips it, and the next
frame noted in that context drops it.
"""

from __future__ import annotations

import contextvars
import weakref
from collections.abc import Callable

from sqlalchemy.engine import RootTransaction
from sqlalchemy.orm import SessionTransaction
from sqlalchemy.orm.session import SessionTransactionState

from tq.txn._store import transaction_stamp

Frame = tuple[Callable[[], object], int]
"""A weak reference to a root transaction, and its stamp (`tq.txn.transaction_stamp`)."""

_open: contextvars.ContextVar[tuple[Frame, ...]] = contextvars.ContextVar("tq_sql_open", default=())
_ENDED = (SessionTransactionState.COMMITTED, SessionTransactionState.CLOSED)
# Set on a root SessionTransaction that a flush wrote in. The ORM's own
# records of flushed objects hold them weakly: an object no longer
# referenced drops out of them, its row still written.
_WROTE = "_tq_wrote"


def is_open(trans: object) -> bool:
    """Whether a root Session or Core transaction is still open (not committed or ended)."""
    if isinstance(trans, SessionTransaction):
        return trans._state not in _ENDED
    if isinstance(trans, RootTransaction):
        return trans.is_active and trans.connection._transaction is trans
    return False


def note(trans: SessionTransaction | RootTransaction) -> None:
    """Notes that `trans` began in the current context."""
    frames = _open.get()
    if frames:
        frames = tuple(f for f in frames if _alive(f))
    _open.set((*frames, (weakref.ref(trans), transaction_stamp())))


def note_written(trans: SessionTransaction) -> None:
    """Notes that the root transaction of `trans` (a flush's) has written."""
    root = trans
    while root._parent is not None:
        root = root._parent
    root.__dict__[_WROTE] = True


def has_written(trans: SessionTransaction) -> bool:
    """Whether a flush wrote in the root transaction `trans` (see `note_written`)."""
    return trans.__dict__.get(_WROTE, False) is True


def forget(trans: SessionTransaction | RootTransaction) -> None:
    """Drops `trans` (and dead frames) from the current context's frames."""
    frames = _open.get()
    if not frames:
        return
    if len(frames) == 1 and frames[0][0]() is trans:
        _open.set(())  # the usual case: one transaction at a time
        return
    _open.set(tuple(f for f in frames if f[0]() is not trans and _alive(f)))


def current() -> tuple[Frame, ...]:
    """The frames of the current context, oldest first (some may be dead)."""
    return _open.get()


def _alive(frame: Frame) -> bool:
    trans = frame[0]()
    return trans is not None and is_open(trans)
