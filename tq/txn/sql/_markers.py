"""Done markers in PostgreSQL, SQLite and MySQL: written in a transaction, counted, expired.

`mark_done` inserts the marker of the running task (see `tq.txn.marker_key`)
in the transaction of a Session or a Core Connection and says whether it is
new; `mark_done_async` is its twin for an AsyncSession or AsyncConnection.
The INSERT is the first statement of the handler's transaction, so on
PostgreSQL a concurrent duplicate delivery waits on the primary key until
the first commits (then finds the marker) or rolls back (then runs).

`expire_markers` deletes expired markers in bounded batches, each its own
short transaction; `count_markers` counts live and expired ones.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, bindparam, case, func, select
from sqlalchemy.orm import Session

from tq import _metrics, clock
from tq._errors import ConfigError
from tq.txn._markers import (
    DEFAULT_MARKER_RETENTION,
    check_key,
    check_retention,
    expiry,
    insert_marker_params,
    insert_marker_sql,
    marker_key,
)
from tq.txn.sql._schema import done
from tq.txn.sql._store import SQLStore, async_types

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

DEFAULT_EXPIRE_BATCH = 1000
"""Markers deleted per statement (and transaction) by `expire_markers`."""

_inserts: dict[tuple[str, str], str] = {}


def _statement(dialect: Any, key: str, expires_at: dt.datetime) -> tuple[str, Any]:
    """The marker INSERT in the driver's style and dialect, and its parameters."""
    paramstyle = dialect.paramstyle
    sql = _inserts.get((paramstyle, dialect.name))
    if sql is None:
        sql = _inserts[paramstyle, dialect.name] = insert_marker_sql(paramstyle, dialect.name)
    return sql, insert_marker_params(key, expires_at, dialect=dialect.name, paramstyle=paramstyle)


def write(conn: Connection, key: str, expires_at: dt.datetime) -> bool:
    """Inserts the marker in `conn`'s transaction (key and time checked); True if new."""
    sql, params = _statement(conn.dialect, key, expires_at)
    return bool(conn.exec_driver_sql(sql, params).rowcount == 1)


async def write_async(conn: AsyncConnection, key: str, expires_at: dt.datetime) -> bool:
    sql, params = _statement(conn.dialect, key, expires_at)
    result = await conn.exec_driver_sql(sql, params)
    return bool(result.rowcount == 1)


def _checked(key: str | None, retention: dt.timedelta) -> tuple[str, dt.datetime]:
    key = marker_key() if key is None else check_key(key)
    return key, expiry(check_retention(retention))


def connection_of(target: Session | Connection) -> Connection:
    """The Connection of a Session's transaction (begun if need be), or `target` itself."""
    conn = target.connection() if isinstance(target, Session) else target
    if not isinstance(conn, Connection):
        raise ConfigError(
            f"tq.txn.sql.mark_done takes a Session or a Connection, got {target!r} "
            "(for an AsyncSession use mark_done_async)"
        )
    return conn


async def connection_of_async(target: AsyncSession | AsyncConnection) -> AsyncConnection:
    """`connection_of` for an AsyncSession or an AsyncConnection."""
    kinds = async_types()
    if kinds is not None and isinstance(target, kinds[1]):
        conn = await target.connection()
    else:
        conn = target  # type: ignore[assignment]
    if not isinstance(getattr(conn, "sync_connection", None), Connection):
        raise ConfigError(
            f"tq.txn.sql.mark_done_async takes an AsyncSession or an AsyncConnection, got "
            f"{target!r} (for a Session use mark_done)"
        )
    return conn


def mark_done(
    target: Session | Connection,
    key: str | None = None,
    *,
    retention: dt.timedelta = DEFAULT_MARKER_RETENTION,
) -> bool:
    """Writes a done marker in the transaction of `target`; True if it is new.

    True: no committed marker had the key; the marker is written in the
    transaction (commit it with the handler's effects). False: the task is
    done already; do nothing more (the transaction holds no new marker).
    `key` defaults to the running task's (`tq.txn.marker_key()`); the marker
    expires `retention` after now (bounds: `tq.txn.MIN_MARKER_RETENTION` to
    `MAX_MARKER_RETENTION`). Write it first in the transaction, before the
    effects: on PostgreSQL a concurrent delivery of the same task then waits
    here for this transaction to end. Raises ConfigError for a task without
    a name (see `marker_key`) or a retention out of bounds.
    """
    return write(connection_of(target), *_checked(key, retention))


async def mark_done_async(
    target: AsyncSession | AsyncConnection,
    key: str | None = None,
    *,
    retention: dt.timedelta = DEFAULT_MARKER_RETENTION,
) -> bool:
    """Like `mark_done`, for an AsyncSession or an AsyncConnection."""
    return await write_async(await connection_of_async(target), *_checked(key, retention))


def _engine_of(bind: SQLStore | Engine) -> tuple[Engine, str]:
    if isinstance(bind, SQLStore):
        return bind.engine, bind.name
    if isinstance(bind, Engine):
        return bind, "sql"
    raise ConfigError(f"expected a SQLStore or an Engine, got {bind!r}")


_EXPIRED = select(done.c.id).where(done.c.expires_at <= bindparam("now"))


def expire_markers(
    bind: SQLStore | Engine,
    *,
    now: dt.datetime | None = None,
    batch_size: int = DEFAULT_EXPIRE_BATCH,
    max_batches: int | None = None,
) -> int:
    """Deletes the markers expired at `now` (default: the clock's now); returns how many.

    Oldest first, at most `batch_size` per statement, each batch in a
    transaction of its own (locks stay short, memory flat); stops when a
    batch finds fewer, or after `max_batches` batches (None: no limit).
    Safe to run from several processes at once.
    """
    if batch_size < 1 or (max_batches is not None and max_batches < 1):
        raise ConfigError("expire_markers needs batch_size >= 1 and max_batches >= 1")
    engine, name = _engine_of(bind)
    at = now if now is not None else clock.now()
    victims = _EXPIRED.order_by(done.c.expires_at).limit(batch_size).scalar_subquery()
    stmt = done.delete().where(done.c.id.in_(victims))
    oldest = _EXPIRED.order_by(done.c.expires_at).limit(batch_size)
    by_ids = done.delete().where(done.c.id.in_(bindparam("ids", expanding=True)))
    total = batches = 0
    while max_batches is None or batches < max_batches:
        with engine.begin() as conn:
            if conn.dialect.name in ("mysql", "mariadb"):
                # MySQL cannot delete with a LIMIT subquery of the same table.
                ids = list(conn.execute(oldest.with_for_update(), {"now": at}).scalars())
                n = conn.execute(by_ids, {"ids": ids}).rowcount if ids else 0
            else:
                n = conn.execute(stmt, {"now": at}).rowcount
        total += n
        batches += 1
        if n:
            _metrics.add("tq_markers_expired", n, store=name)
        if n < batch_size:
            break
    return total


_COUNT = select(
    func.count(),
    func.coalesce(func.sum(case((done.c.expires_at <= bindparam("now"), 1), else_=0)), 0),
).select_from(done)


def count_markers(bind: SQLStore | Engine, *, now: dt.datetime | None = None) -> tuple[int, int]:
    """(live, expired) markers at `now` (default: the clock's now); reads the whole table."""
    engine, _ = _engine_of(bind)
    at = now if now is not None else clock.now()
    with engine.connect() as conn:
        total, expired = conn.execute(_COUNT, {"now": at}).one()
    return int(total) - int(expired), int(expired)
