"""The SQL stores (SQLite, PostgreSQL, MariaDB) in the conformance suite (see harness.py).

Transactions go through `tq.txn.sql.transaction(sessionmaker)`, the path
most applications use; the other helpers (Core, AsyncSession, bind) have
their own tests in tests/integration/test_sql_txn.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

import tq.txn.sql
from tests.conformance.harness import ChildSpec, RowWriter
from tq.txn.sql import SQLStore

ROWS_DDL = "CREATE TABLE IF NOT EXISTS conformance_rows (k VARCHAR(200) PRIMARY KEY)"
_INSERT_ROW = text("INSERT INTO conformance_rows (k) VALUES (:key)")


def make_engine(url: str) -> Engine:
    """An engine as an application would make it (SQLite: WAL, waits for locks)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _wal(dbapi_conn: object, _record: object) -> None:
            cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # what WAL applications use
            cur.close()

        return engine
    if url.startswith(("mysql", "mariadb")):
        from tq.dbqueue import mysql_engine

        return mysql_engine(url, pool_size=10, max_overflow=10)
    return create_engine(url, pool_size=10, max_overflow=10)


class _Rows:
    def __init__(self, session: Session) -> None:
        self._session = session

    def insert_row(self, key: str) -> None:
        self._session.execute(_INSERT_ROW, {"key": key})


class SQLHarness:
    """A SQLStore over one database with a business table `conformance_rows`."""

    duplicate_key = IntegrityError

    def __init__(self, kind: str, url: str) -> None:
        self.kind = kind
        self.url = url
        self.engine = make_engine(url)
        self.store = SQLStore(self.engine, name=f"sql-conformance-{kind}")
        self.store.create_schema()
        with self.engine.begin() as conn:
            conn.execute(text(ROWS_DDL))
        self.sessions = sessionmaker(self.engine)

    def run_in_transaction(self, body: Callable[[RowWriter], None]) -> None:
        with tq.txn.sql.transaction(self.sessions, store=self.store) as session:
            body(_Rows(session))

    def row_keys(self) -> set[str]:
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(text("SELECT k FROM conformance_rows"))}

    def child_spec(self) -> ChildSpec:
        return ChildSpec(
            factory=f"{__name__}:open_child_harness",
            arg=json.dumps({"kind": self.kind, "url": self.url}),
        )

    def close(self) -> None:
        self.store.close()
        self.engine.dispose()


def open_child_harness(arg: str) -> SQLHarness:
    spec = json.loads(arg)
    return SQLHarness(spec["kind"], spec["url"])


@pytest.fixture
def sqlite_harness(tmp_path: object) -> Iterator[SQLHarness]:
    h = SQLHarness("sqlite", f"sqlite:///{tmp_path}/outbox.db")
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def postgres_harness(postgres_db_url: str) -> Iterator[SQLHarness]:
    h = SQLHarness("postgres", postgres_db_url)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def mariadb_harness(mariadb_db_url: str) -> Iterator[SQLHarness]:
    h = SQLHarness("mariadb", mariadb_db_url)
    try:
        yield h
    finally:
        h.close()
