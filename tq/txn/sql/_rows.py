"""Reading a store's rows straight from the driver, as the sweeper does thousands a second."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import CursorResult


def driver_rows(res: CursorResult[Any]) -> list[tuple[Any, ...]]:
    """A statement's rows as the driver returns them (then closes `res`).

    The sweeper reads thousands of rows per second through `scan_reminders`
    (and `fetch_reminder_keys`, `fetch_reminders`): SQLAlchemy's Row objects and the Timestamp
    type's per-value conversion cost more than the rest of the read, so
    these take the driver's tuples and convert times themselves
    (`SQLStore._times`, `pg_times`). The statement still runs through SQLAlchemy
    (compilation cache, parameters, events).
    """
    try:
        return list(res.cursor.fetchall())
    finally:
        res.close()


def pg_utc_session(conn: Connection) -> None:
    """Has the driver return this transaction's timestamptz values in `dt.UTC`.

    psycopg returns them in the session's time zone: in any other than "UTC"
    (even "Etc/UTC", a ZoneInfo) each value would need converting (~2 us),
    or cost ~1 us in every comparison with tq's UTC times. SET LOCAL lasts
    until the transaction ends: the connection goes back to the pool as it
    came. Without effect outside a transaction (`pg_times` converts then).
    """
    info = getattr(conn.connection.dbapi_connection, "info", None)
    status = getattr(info, "parameter_status", None)
    if status is not None and status("TimeZone") != "UTC":
        conn.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")


_BINARY_CURSORS: dict[type, type] = {}


@contextlib.contextmanager
def pg_binary_rows(conn: Connection) -> Iterator[None]:
    """Has psycopg (3) return the rows of statements run in the block in binary.

    A sweep's pages are mostly payloads: as bytea text, psycopg decodes the
    hex of every payload (~1 us a row of 350 bytes); in binary it takes the
    bytes as they come. SQLAlchemy makes the statement's cursor with the
    connection's `cursor_factory`: for the block, a subclass whose cursors
    start binary (values load to the same types). Other drivers, and
    psycopg's client-side cursors (which cannot), go on in text.
    """
    dbapi: Any = conn.connection.dbapi_connection
    factory = getattr(dbapi, "cursor_factory", None)
    if not isinstance(factory, type) or type(dbapi).__module__.partition(".")[0] != "psycopg":
        yield
        return
    binary = _BINARY_CURSORS.get(factory)
    if binary is None:
        binary = _BINARY_CURSORS[factory] = _binary_cursor(factory)
    if binary is factory:
        yield
        return
    dbapi.cursor_factory = binary
    try:
        yield
    finally:
        dbapi.cursor_factory = factory


def _binary_cursor(factory: type) -> type:
    """A subclass of psycopg cursor class `factory` whose cursors start binary (or itself)."""
    import psycopg  # loaded already: `factory` is one of its cursors

    if not issubclass(factory, psycopg.Cursor) or issubclass(factory, psycopg.ClientCursor):
        return factory

    class BinaryCursor(factory):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.format = psycopg.pq.Format.BINARY

    return BinaryCursor


def _pg_utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC)


def pg_times(rows: list[tuple[Any, ...]], col: int) -> Callable[[Any], dt.datetime] | None:
    """How to turn column `col` of PostgreSQL rows into UTC times; None: as they are."""
    utc = dt.UTC
    if all(r[col].tzinfo is utc for r in rows):
        return None
    return _pg_utc
