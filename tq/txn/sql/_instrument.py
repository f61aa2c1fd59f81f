"""`instrument()`: ordinary SQLAlchemy transactions that `add_task` writes into.

Instrumenting a sessionmaker (sync or async, or a scoped session's
factory) marks the sessions it makes: an `Instrumentation` in their `info`
(sessionmaker's `info` is copied into every Session). Their transactions
are noted like every Session's (`_frames`), and the finder (`_finder`)
attaches a `SQLTransaction` to the one `add_task` runs in: the reminders
are written by the Session-class `before_commit` listener, the happy path
runs when the committed transaction ends.

Instrumenting an Engine (or an AsyncEngine's sync engine) gives its
connections a class of tq's, their Connection class with hooks on the
points every Core transaction passes (begin, commit, rollback, savepoint,
rollback to savepoint, close); Sessions bound to it count as instrumented
too. An engine listener would do the same through public events, but
SQLAlchemy then dispatches events on every statement of every connection
of that engine: about 150,000 CPU instructions per transaction, against
about 16,000 for these hooks and the frame (docs/benchmarks.md, 11).
The hooks are SQLAlchemy's private `Connection._*_impl` methods and
`Engine._connection_cls`: `instrument` checks that they exist and refuses
with ConfigError if not.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import RootTransaction
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from tq._errors import ConfigError
from tq.txn.sql import _frames
from tq.txn.sql._helpers import store_for
from tq.txn.sql._store import SQLStore, async_types
from tq.txn.sql._transaction import warn_dropped

if TYPE_CHECKING:
    from tq.txn.sql._transaction import SQLTransaction

MARK = "tq.txn.sql.instrumented"
"""The key of a Session's `info` that holds its `Instrumentation`."""

_HOOKS = (
    "_begin_impl",
    "_commit_impl",
    "_rollback_impl",
    "_savepoint_impl",
    "_rollback_to_savepoint_impl",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Instrumentation:
    """How transactions of an instrumented sessionmaker or engine reach the outbox."""

    store: SQLStore
    # An engine's own Connection class attribute before instrumenting, if it had one.
    connection_cls: type[Connection] | None = None


# Instrumented engines (sync engines; an AsyncEngine's is its sync_engine).
_engines: dict[Engine, Instrumentation] = {}


def engine_instrumentation(engine: object) -> Instrumentation | None:
    """The Instrumentation of an instrumented Engine, else None."""
    try:
        return _engines.get(engine)  # type: ignore[call-overload, no-any-return]
    except TypeError:  # unhashable: not an engine of ours
        return None


def session_instrumentation(session: Session) -> Instrumentation | None:
    """How `session` is instrumented: by its sessionmaker, else by its Engine.

    A Session bound to a Connection (joined to a transaction you began)
    follows that connection instead: see `_finder`.
    """
    inst = session.info.get(MARK)
    if inst is not None:
        return inst  # type: ignore[no-any-return]
    bind = session.bind
    if bind is None or isinstance(bind, Connection):
        return None
    return engine_instrumentation(bind)


class TqConnection:
    """What an instrumented engine's connections add to their Connection class.

    `_tq_txn` is the SQLTransaction of the connection's current database
    transaction, made by the finder when `add_task` first runs in it (most
    transactions never get one). Reminders are buffered, as in a Session,
    and written just before the commit: an AsyncConnection cannot do I/O
    from `add_task`, and a rolled-back savepoint drops what it buffered.
    `_tq_ending` is the root transaction being committed or rolled back:
    SQLAlchemy calls it active until the commit call returns (the happy
    path runs inside that call), and the finder takes no task into it.
    """

    _tq_txn: SQLTransaction | None = None
    _tq_ending: RootTransaction | None = None


def _hooks_for(base: type[Connection]) -> type[Connection]:
    """A subclass of `base` with tq's hooks.

    The hooks call `base`'s methods directly rather than through `super()`:
    they run on every transaction of an instrumented engine, and the
    zero-argument `super()` lookup costs as much as the rest of a hook.
    """
    begin, commit, rollback, close = (
        base._begin_impl, base._commit_impl, base._rollback_impl, base.close,
    )  # fmt: skip
    savepoint, rollback_to = base._savepoint_impl, base._rollback_to_savepoint_impl
    note, forget = _frames.note, _frames.forget

    class Hooked(TqConnection, base):  # type: ignore[misc, valid-type]
        def _begin_impl(self, transaction: RootTransaction) -> None:
            begin(self, transaction)
            self._tq_txn = self._tq_ending = None
            note(transaction)

        def _commit_impl(self) -> None:
            txn, root = self._tq_txn, self._transaction
            if txn is not None and txn.written < len(txn.pending):
                txn.write(self)
            self._tq_ending = root
            commit(self)
            if root is not None:
                forget(root)
            if txn is not None:
                self._tq_txn = None
                txn.commit_done()
                txn.finish()

        def _rollback_impl(self) -> None:
            txn, root = self._tq_txn, self._transaction
            self._tq_txn, self._tq_ending = None, root
            if txn is not None:
                txn.rolled_back()
            if root is not None:
                forget(root)
            rollback(self)

        def close(self) -> None:
            txn = self._tq_txn
            if txn is not None and txn.pending:
                root = self._transaction
                if root is not None and root.is_active:
                    warn_dropped(txn.pending, "its connection was closed")
            close(self)

        def _savepoint_impl(self, name: str | None = None) -> str:
            name = savepoint(self, name)
            txn = self._tq_txn
            if txn is not None:
                txn.savepoint_began(hash(name))
            return name

        def _rollback_to_savepoint_impl(self, name: str) -> None:
            rollback_to(self, name)
            txn = self._tq_txn
            if txn is not None:
                txn.savepoint_rolled_back(hash(name))

    Hooked.__name__ = Hooked.__qualname__ = base.__name__
    Hooked.__module__ = __name__
    return Hooked


_classes: dict[type[Connection], type[Connection]] = {}


def _hooked(cls: type[Connection]) -> type[Connection]:
    """`cls` with tq's hooks (one class per Connection class, made once)."""
    if issubclass(cls, TqConnection):
        return cls
    hooked = _classes.get(cls)
    if hooked is None:
        hooked = _classes[cls] = _hooks_for(cls)
    return hooked


def _check_hooks() -> None:
    missing = [h for h in _HOOKS if not callable(getattr(Connection, h, None))]
    if missing or not isinstance(getattr(Engine, "_connection_cls", None), type):
        raise ConfigError(
            f"tq.txn.sql.instrument(engine) does not work with SQLAlchemy "
            f"{sqlalchemy.__version__} (missing {', '.join(missing) or '_connection_cls'}): "
            "instrument a sessionmaker, or use the transaction helpers"
        )


# The public calls.


def instrument(target: Any, *, store: SQLStore | None = None) -> None:
    """Makes every transaction begun from `target` one that `add_task` writes into.

    Call it once at start-up, after creating the `SQLStore` and after
    configuring `target`. `target` is:

    * a `sessionmaker` or `async_sessionmaker` (or a `scoped_session` /
      `async_scoped_session`, for its factory): every Session it makes
      (e.g. `with Session.begin():`, `session.begin()`, autobegin then
      `session.commit()`, `async with AsyncSession.begin():`);
    * an `Engine` or `AsyncEngine`: every transaction of its connections
      (`engine.begin()`, `conn.begin()`, autobegin then `conn.commit()`,
      `async with async_engine.begin():`), and every Session bound to it.

    Afterwards `add_task` inside such a transaction behaves as inside
    `tq.txn.sql.transaction(...)`: its reminders (or the database queue's
    task rows) are written in the transaction just before it commits, the
    happy path runs after the commit (inside `commit()`, once the
    connection is given back; an AsyncSession's or AsyncConnection's commit
    awaits it), and a rollback, or a rolled-back savepoint, drops them.
    Transactions of targets not instrumented cost nothing more.

    `store` defaults to the registered SQLStore of the target's database
    (ConfigError if none, or if a sessionmaker has no bind). Instrumenting
    again with the same store does nothing; with another, ConfigError.
    Refuses a Session or a Connection (use `bind(session)` or
    `transaction(engine)` for those) and anything else with ConfigError.
    """
    kinds = async_types()
    if isinstance(target, scoped_session) or _is_async_scoped(target):
        instrument(target.session_factory, store=store)
    elif isinstance(target, sessionmaker) or _is_async_sessionmaker(target):
        bind = target.kw.get("bind")
        if store is None:
            if bind is None:
                raise ConfigError(f"tq.txn.sql.instrument: {target!r} has no bind; pass store=...")
            store = store_for(_sync_engine(bind))
        info = dict(target.kw.get("info") or {})
        _same_or_refuse(info.get(MARK), store, target)
        info[MARK] = Instrumentation(store)
        target.kw["info"] = info
    elif isinstance(target, Engine) or (kinds is not None and isinstance(target, kinds[0])):
        engine = _sync_engine(target)
        _check_hooks()
        if store is None:
            store = store_for(engine)
        old = _engines.get(engine)
        _same_or_refuse(old, store, target)
        if old is None:
            own = engine.__dict__.get("_connection_cls")
            engine._connection_cls = _hooked(engine._connection_cls)
            _engines[engine] = Instrumentation(store, own)
    elif isinstance(target, Session | Connection) or (
        kinds is not None and isinstance(target, kinds[1])
    ):
        raise ConfigError(
            "tq.txn.sql.instrument takes a sessionmaker or an engine, made once at start-up; "
            f"for one session use tq.txn.sql.bind(session), got {target!r}"
        )
    else:
        raise ConfigError(
            "tq.txn.sql.instrument takes a sessionmaker, an async_sessionmaker, a "
            f"scoped_session, an Engine or an AsyncEngine, got {target!r}"
        )


def uninstrument(target: Any) -> None:
    """Undoes `instrument(target)` (does nothing if it was not instrumented).

    Transactions open at the time keep what they were given.
    """
    kinds = async_types()
    if isinstance(target, scoped_session) or _is_async_scoped(target):
        uninstrument(target.session_factory)
    elif isinstance(target, sessionmaker) or _is_async_sessionmaker(target):
        info = target.kw.get("info")
        if info and MARK in info:
            target.kw["info"] = {k: v for k, v in info.items() if k != MARK}
    elif isinstance(target, Engine) or (kinds is not None and isinstance(target, kinds[0])):
        engine = _sync_engine(target)
        inst = _engines.pop(engine, None)
        if inst is not None:
            if inst.connection_cls is None:
                del engine._connection_cls
            else:
                engine._connection_cls = inst.connection_cls


def is_instrumented(target: Any) -> bool:
    """Whether `instrument(target)` is in effect (for a Session: by its maker or engine)."""
    kinds = async_types()
    if isinstance(target, scoped_session) or _is_async_scoped(target):
        return is_instrumented(target.session_factory)
    if isinstance(target, sessionmaker) or _is_async_sessionmaker(target):
        return MARK in (target.kw.get("info") or {})
    if isinstance(target, Engine) or (kinds is not None and isinstance(target, kinds[0])):
        return _sync_engine(target) in _engines
    if kinds is not None and isinstance(target, kinds[1]):
        target = target.sync_session
    if isinstance(target, Session):
        return session_instrumentation(target) is not None
    return False


def _same_or_refuse(old: Instrumentation | None, store: SQLStore, target: object) -> None:
    if old is not None and old.store is not store:
        raise ConfigError(
            f"tq.txn.sql.instrument: {target!r} is instrumented already for store "
            f"{old.store.name!r}; uninstrument it first"
        )


def _sync_engine(bind: Any) -> Any:
    """The sync Engine of an AsyncEngine; anything else as it is."""
    kinds = async_types()
    if kinds is not None and isinstance(bind, kinds[0]):
        return bind.sync_engine
    return bind


def _is_async_sessionmaker(obj: object) -> bool:
    mod = _asyncio_module()
    return mod is not None and isinstance(obj, mod.async_sessionmaker)


def _is_async_scoped(obj: object) -> bool:
    mod = _asyncio_module()
    return mod is not None and isinstance(obj, mod.async_scoped_session)


def _asyncio_module() -> Any:
    import sys

    return sys.modules.get("sqlalchemy.ext.asyncio")
