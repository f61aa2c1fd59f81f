"""The transaction helpers: `transaction`, `transaction_async` and `bind`.

They find the store of a session's database, attach a `SQLTransaction`
(see `_transaction`) to the session or connection, make it ambient for the
block, and run the happy path after the commit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

from tq._errors import ConfigError, TransactionError
from tq.txn._store import ambient, stores
from tq.txn.sql._store import SQLStore, async_types, url_key
from tq.txn.sql._transaction import (
    INFO_KEY,
    Mode,
    SQLTransaction,
    committed_only,
    happy_path,
    happy_path_async,
)

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


# Finding the store of a session or engine.


def store_for(bind: Engine | Connection | Session | AsyncSession) -> SQLStore:
    """The registered SQLStore of the database `bind` talks to.

    Matches the engine itself first, then the database URL (whatever the
    driver). Raises ConfigError when no registered SQLStore matches.
    """
    target = cast("AsyncSession", bind).sync_session if _is_async_session(bind) else bind
    if isinstance(target, Session):
        try:
            engine = target.get_bind().engine
        except Exception as e:
            raise ConfigError(
                f"tq: cannot tell which database session {target!r} uses ({e}); pass store=..."
            ) from e
    else:
        engine = cast("Engine | Connection", target).engine
    candidates = [s for s in stores() if isinstance(s, SQLStore)]
    for s in candidates:
        if s.engine is engine:
            return s
    key = url_key(engine.url)
    for s in candidates:
        if s.url_key == key:
            return s
    raise ConfigError(
        f"no SQLStore registered for {engine.url!r}: create tq.txn.sql.SQLStore(engine) at "
        "start-up, or pass store=... to the transaction helper"
    )


def _is_async_session(obj: object) -> bool:
    kinds = async_types()
    return kinds is not None and isinstance(obj, kinds[1])


def _attach(session: Session, txn: SQLTransaction) -> None:
    if session.info.get(INFO_KEY) is not None:
        raise TransactionError("this session is in a tq transaction already")
    session.info[INFO_KEY] = txn


# The helpers.


_S = TypeVar("_S", bound=Session)
_AS = TypeVar("_AS", bound="AsyncSession")


@overload
def transaction(
    factory: Engine, *, store: SQLStore | None = None, deadline: dt.datetime | None = None
) -> contextlib.AbstractContextManager[Connection]: ...


@overload
def transaction(
    factory: Callable[[], _S],
    *,
    store: SQLStore | None = None,
    deadline: dt.datetime | None = None,
) -> contextlib.AbstractContextManager[_S]: ...


def transaction(
    factory: Callable[[], Session] | Engine,
    *,
    store: SQLStore | None = None,
    deadline: dt.datetime | None = None,
) -> contextlib.AbstractContextManager[Any]:
    """Runs the `with` block in a new transaction that `add_task` writes into.

    `factory` is a `sessionmaker` (or any callable returning a Session): the
    block gets the Session. Or an `Engine`: the block gets a Core
    `Connection`. The transaction commits when the block ends, and rolls
    back (re-raising) when it raises; the session or connection is closed
    either way. After a successful commit, the tasks added in the block are
    submitted (the happy path) before this returns; a submit failure is
    logged, never raised (the sweeper retries).

    `store` defaults to the registered SQLStore of the same database
    (ConfigError if none). `deadline` caps the reminders' `fresh_until`.
    Raises TransactionError when the session is in a tq transaction already.
    """
    if isinstance(factory, Engine):
        return _connection_transaction(factory, store, deadline)
    return _session_transaction(factory, store, deadline)


@contextlib.contextmanager
def _session_transaction(
    factory: Callable[[], Session], store: SQLStore | None, deadline: dt.datetime | None
) -> Iterator[Session]:
    session = factory()
    if not isinstance(session, Session):
        session.close()
        raise ConfigError(
            f"tq.txn.sql.transaction takes a sessionmaker or an Engine, got {factory!r} "
            "(for an async_sessionmaker use transaction_async)"
        )
    with session:
        txn = SQLTransaction(store or store_for(session), deadline, "collect", session=session)
        _attach(session, txn)
        try:
            with ambient(txn):
                yield session
            session.commit()
        except BaseException:
            txn.committed.clear()
            session.rollback()
            raise
        finally:
            session.info.pop(INFO_KEY, None)
    if txn.committed:
        happy_path(txn.store, txn.committed)


@contextlib.contextmanager
def _connection_transaction(
    engine: Engine, store: SQLStore | None, deadline: dt.datetime | None
) -> Iterator[Connection]:
    with engine.connect() as conn:
        txn = SQLTransaction(store or store_for(engine), deadline, "collect", conn=conn)
        try:
            with ambient(txn):
                yield conn
            txn.sort_core(conn.get_transaction())
            conn.commit()
        except BaseException:
            txn.committed.clear()
            conn.rollback()
            raise
        txn.commit_done()
    if txn.unverified:
        txn.committed[:0] = committed_only(txn.store, txn.unverified)
    if txn.committed:
        happy_path(txn.store, txn.committed)


@contextlib.asynccontextmanager
async def transaction_async(
    factory: async_sessionmaker[_AS] | Callable[[], _AS],
    *,
    store: SQLStore | None = None,
    deadline: dt.datetime | None = None,
) -> AsyncIterator[_AS]:
    """Like `transaction`, for an `async_sessionmaker`: the block gets an AsyncSession.

    The happy path runs without blocking the event loop (`after_commit_async`)
    before this returns.
    """
    session = factory()
    if not _is_async_session(session):
        raise ConfigError(
            f"tq.txn.sql.transaction_async takes an async_sessionmaker, got {factory!r}"
        )
    async with session:
        sync_session = session.sync_session
        txn = SQLTransaction(store or store_for(session), deadline, "collect", session=sync_session)
        _attach(sync_session, txn)
        try:
            with ambient(txn):
                yield session
            await session.commit()
        except BaseException:
            txn.committed.clear()
            await session.rollback()
            raise
        finally:
            session.sync_session.info.pop(INFO_KEY, None)
    if txn.committed:
        await happy_path_async(txn.store, txn.committed)


@contextlib.contextmanager
def bind(
    session: Session | AsyncSession,
    *,
    store: SQLStore | None = None,
    deadline: dt.datetime | None = None,
) -> Iterator[SQLTransaction]:
    """Makes a Session or AsyncSession you manage the ambient transaction in the block.

    You commit (or roll back) the session yourself, inside the block or
    after it: the reminders added in the block follow the session's
    transaction. After each commit the happy path runs inside the commit
    call, once the connection is given back (an AsyncSession's commit
    awaits it). A session whose open transaction tq knows already (an
    instrumented one, or bound by a block that ended before the commit)
    keeps that transaction. Raises TransactionError if the session is in a
    helper's transaction, ConfigError if no store matches (pass `store=`).
    """
    mode: Mode
    if _is_async_session(session):
        sync_session, mode = session.sync_session, "async"  # type: ignore[union-attr]
    elif isinstance(session, Session):
        sync_session, mode = session, "sync"
    else:
        raise ConfigError(
            f"tq.txn.sql.bind takes a Session or an AsyncSession, got {session!r} "
            "(for a Core connection use transaction(engine))"
        )
    told: SQLTransaction | None = sync_session.info.get(INFO_KEY)
    if told is not None and told.detach:
        # Its open transaction is told already (an instrumented session's, or
        # an earlier bind's with tasks waiting for the commit): the same one.
        with ambient(told):
            yield told
        return
    txn = SQLTransaction(store or store_for(sync_session), deadline, mode, session=sync_session)
    _attach(sync_session, txn)
    try:
        with ambient(txn):
            yield txn
    finally:
        if txn.pending:
            # Added but not committed yet: they follow the session's current (or
            # next) transaction, and the listeners let go when it ends.
            txn.detach = True
        else:
            sync_session.info.pop(INFO_KEY, None)
