"""Database plumbing shared by the database queue's modules.

SQLite allows one writer at a time. Every write here either is a single
statement (atomic on its own) or runs in `write_txn`, which starts SQLite
transactions with BEGIN IMMEDIATE: the write lock is taken up front, so a
transaction that reads and then writes never fails half-way with
SQLITE_BUSY when another writer got in between (busy_timeout covers the
wait). PostgreSQL uses ordinary READ COMMITTED transactions with row locks.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from tq._errors import ConfigError

SQLITE_BUSY_TIMEOUT_S = 30.0
# WAL pages after which a commit checkpoints the WAL itself (SQLite's default:
# 1,000). Workers checkpoint about once a second off the hot path (`checkpoint`),
# so this is only the safety net when none runs.
SQLITE_AUTOCHECKPOINT_PAGES = 10_000


def is_sqlite(bind: sa.Engine | sa.Connection) -> bool:
    return bind.dialect.name == "sqlite"


def check_dialect(engine: sa.Engine) -> None:
    """Refuses engines of databases the queue does not support."""
    if engine.dialect.name not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"the database queue runs on SQLite or PostgreSQL, not {engine.dialect.name!r}"
        )
    if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
        raise ConfigError(
            "the database queue needs a SQLite file (workers and writers use several "
            "connections); use tq.dbqueue.sqlite_engine('path/to/file.db')"
        )


def insert(bind: sa.Engine | sa.Connection, table: sa.Table) -> Any:
    """An INSERT with ON CONFLICT support for the bind's dialect."""
    if is_sqlite(bind):
        return sqlite.insert(table)
    return postgresql.insert(table)


_writer_locks: dict[str, threading.Lock] = {}
_writer_locks_guard = threading.Lock()


def _writer_lock(engine: sa.Engine) -> threading.Lock | contextlib.nullcontext[None]:
    """On SQLite, the lock this process's writers take turns on.

    SQLite makes a writer that finds the database locked sleep in steps of
    up to 100 ms before trying again; queueing this process's own writers on
    a Python lock instead hands the database over at once.
    """
    if not is_sqlite(engine):
        return contextlib.nullcontext()
    key = str(engine.url.database)
    with _writer_locks_guard:
        return _writer_locks.setdefault(key, threading.Lock())


@contextlib.contextmanager
def write_txn(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that may read then write; commits on success."""
    with _writer_lock(engine), engine.connect() as conn:
        if is_sqlite(conn):
            raw = conn.connection.dbapi_connection
            if not getattr(raw, "in_transaction", False):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        conn.commit()


def sqlite_engine(path: str | os.PathLike[str], **kwargs: Any) -> sa.Engine:
    """A SQLAlchemy engine on a SQLite file, set up for the database queue.

    Turns on WAL (readers never block the writer), synchronous=NORMAL
    (durable across process crashes; a power loss may drop the last
    commits) and a 30 s busy timeout, and leaves checkpointing the WAL
    (which syncs the file) to the workers' background upkeep instead of
    the commit that crosses SQLite's 1,000-page threshold (raised to
    SQLITE_AUTOCHECKPOINT_PAGES as a safety net). `kwargs` go to
    `sqlalchemy.create_engine`.
    """
    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
    engine = sa.create_engine(f"sqlite:///{os.fspath(path)}", connect_args=connect_args, **kwargs)

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")
        finally:
            cur.close()

    return engine


def checkpoint(engine: sa.Engine) -> None:
    """On SQLite, copies the WAL's committed pages into the database file (PASSIVE:
    never waits for readers or writers); on PostgreSQL, nothing."""
    if is_sqlite(engine):
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
