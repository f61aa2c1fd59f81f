"""Database plumbing shared by the database queue's modules.

SQLite allows one writer at a time. Every write here either is a single
statement (atomic on its own) or runs in `write_txn`, which starts SQLite
transactions with BEGIN IMMEDIATE: the write lock is taken up front, so a
transaction that reads and then writes never fails half-way with
SQLITE_BUSY when another writer got in between (busy_timeout covers the
wait). PostgreSQL uses ordinary READ COMMITTED transactions with row locks;
MySQL / MariaDB (10.6 or later, InnoDB) the same: the engine must run READ
COMMITTED (`mysql_engine` does; InnoDB's default REPEATABLE READ takes gap
locks that make concurrent inserts and leases deadlock, and its snapshots
would hide rows other workers committed).

The differences between the three dialects' statements live here: inserts
that skip or update a conflicting row (`insert_ignore`, `upsert`), and
whether UPDATE can return rows (`returns_updated_rows`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from tq._errors import ConfigError

SQLITE_BUSY_TIMEOUT_S = 30.0
# WAL pages after which a commit checkpoints the WAL itself (SQLite's default:
# 1,000). Workers checkpoint about once a second off the hot path (`checkpoint`),
# so this is only the safety net when none runs.
SQLITE_AUTOCHECKPOINT_PAGES = 10_000


MYSQL_DIALECTS = ("mysql", "mariadb")
_checked_mysql: weakref.WeakSet[sa.Engine] = weakref.WeakSet()


def is_sqlite(bind: sa.Engine | sa.Connection) -> bool:
    return bind.dialect.name == "sqlite"


def is_mysql(bind: sa.Engine | sa.Connection) -> bool:
    return bind.dialect.name in MYSQL_DIALECTS


def returns_updated_rows(dialect: str) -> bool:
    """Whether UPDATE ... RETURNING works (not on MySQL / MariaDB)."""
    return dialect not in MYSQL_DIALECTS


def check_dialect(engine: sa.Engine) -> None:
    """Refuses engines of databases the queue does not support."""
    if engine.dialect.name not in ("sqlite", "postgresql", *MYSQL_DIALECTS):
        raise ConfigError(
            "the database queue runs on SQLite, PostgreSQL or MySQL / MariaDB, not "
            f"{engine.dialect.name!r}"
        )
    if is_mysql(engine) and engine not in _checked_mysql:
        with engine.connect() as conn:
            level = conn.get_isolation_level()
        if level != "READ COMMITTED":
            raise ConfigError(
                f"the database queue on MySQL / MariaDB needs READ COMMITTED transactions, "
                f"and this engine runs {level}: make it with tq.dbqueue.mysql_engine(url) "
                "or create_engine(url, isolation_level='READ COMMITTED')"
            )
        _checked_mysql.add(engine)
    if engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:"):
        raise ConfigError(
            "the database queue needs a SQLite file (workers and writers use several "
            "connections); use tq.dbqueue.sqlite_engine('path/to/file.db')"
        )


def insert_ignore(
    conn: sa.Connection, table: sa.Table, values: dict[str, Any], keys: list[str]
) -> None:
    """Inserts a row unless one with the same `keys` (its primary key) exists."""
    if is_mysql(conn):
        # ON DUPLICATE KEY UPDATE k = k, not INSERT IGNORE (which hides other errors).
        ins = mysql.insert(table).values(**values)
        conn.execute(ins.on_duplicate_key_update({keys[0]: table.c[keys[0]]}))
        return
    stmt = (sqlite.insert if is_sqlite(conn) else postgresql.insert)(table).values(**values)
    conn.execute(stmt.on_conflict_do_nothing(index_elements=[table.c[k] for k in keys]))


def upsert(
    conn: sa.Connection,
    table: sa.Table,
    values: dict[str, Any],
    keys: list[str],
    update: dict[str, Any] | list[str],
) -> None:
    """Inserts a row, or updates the one with the same `keys`: `update` maps columns
    to new values, or lists columns to take from `values`."""
    if isinstance(update, list):
        update = {k: values[k] for k in update}
    if is_mysql(conn):
        conn.execute(mysql.insert(table).values(**values).on_duplicate_key_update(update))
        return
    stmt = (sqlite.insert if is_sqlite(conn) else postgresql.insert)(table).values(**values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[table.c[k] for k in keys], set_=update))


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


def mysql_engine(url: str, **kwargs: Any) -> sa.Engine:
    """A SQLAlchemy engine on MySQL / MariaDB set up for the database queue and the outbox.

    `url` like `mysql+pymysql://user:pw@host/db`. Every transaction runs READ
    COMMITTED (see the module), connections are checked before use (MySQL
    drops idle ones) and speak utf8mb4. `kwargs` go to `sqlalchemy.create_engine`.
    """
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() not in MYSQL_DIALECTS:
        raise ConfigError(f"mysql_engine takes a mysql:// or mariadb:// URL, not {url!r}")
    if "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    kwargs.setdefault("isolation_level", "READ COMMITTED")
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(parsed, **kwargs)


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
