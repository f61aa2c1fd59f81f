"""An application's SQL database for the tests of tq.txn.sql's transactions, on
SQLite and PostgreSQL alike: its `rows` table (and a small ORM model on it),
its engines, a registered store, and a dispatcher whose submissions are
recorded.

Fixtures: import the `*_fixture` names a module (or conftest) uses; pytest
knows them by their `name`. Mark each import noqa F401.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, String, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import tq
from tests.conformance.harness_sql import make_engine
from tests.conformance.support import RecordingSubmitter, make_dispatcher
from tests.testpb import payloads_pb2 as pb
from tq.txn.sql import SQLStore

ROWS = "CREATE TABLE IF NOT EXISTS rows (key TEXT PRIMARY KEY)"


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "rows"
    key: Mapped[str] = mapped_column(String, primary_key=True)


class Boom(Exception):
    pass


def rows(engine: Engine) -> set[str]:
    """The keys in the `rows` table."""
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(text("SELECT key FROM rows"))}


def insert(conn: object, key: str) -> None:
    """Inserts `key` into `rows` through a Session or a Connection."""
    conn.execute(text("INSERT INTO rows (key) VALUES (:k)"), {"k": key})  # type: ignore[attr-defined]


def greet(name: str) -> tq.Task:
    """A TRANSACTIONAL task."""
    return tq.Task(payload=pb.Greet(name=name))


def count(n: int) -> tq.Task:
    """A FOLLOWS_CONTEXT task."""
    return tq.Task(payload=pb.Count(n=n))


def names(sub: RecordingSubmitter) -> list[str]:
    """What was submitted: Greet names, and Count numbers as strings."""
    out = []
    for s in sub.submitted:
        p = s.payload
        out.append(p.name if isinstance(p, pb.Greet) else str(p.n))  # type: ignore[union-attr]
    return out


def async_url(db_url: str) -> str:
    """The URL of the same database for SQLAlchemy's asyncio extension."""
    return db_url.replace("sqlite:///", "sqlite+aiosqlite:///", 1)


@pytest.fixture(
    name="db_url", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def db_url_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file's URL, or a new PostgreSQL database's."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/app.db"
    url: str = request.getfixturevalue("postgres_db_url")
    return url


@pytest.fixture(name="engine")
def engine_fixture(db_url: str) -> Iterator[Engine]:
    """An engine on `db_url`, with the `rows` table."""
    eng = make_engine(db_url)
    with eng.begin() as conn:
        conn.execute(text(ROWS))
    yield eng
    eng.dispose()


@pytest.fixture(name="async_engine")
async def async_engine_fixture(db_url: str, engine: Engine) -> AsyncIterator[AsyncEngine]:
    """An asyncio engine on the same database (once `engine` made the table)."""
    eng = create_async_engine(async_url(db_url))
    yield eng
    await eng.dispose()


@pytest.fixture(name="store")
def store_fixture(engine: Engine) -> Iterator[SQLStore]:
    """A registered store on `engine` ("sql-test"), its tables made."""
    s = SQLStore(engine, name="sql-test")
    s.create_schema()
    yield s
    s.close()


@pytest.fixture(name="sub")
def sub_fixture() -> RecordingSubmitter:
    return RecordingSubmitter()


@pytest.fixture(name="disp")
def disp_fixture(sub: RecordingSubmitter) -> tq.Dispatcher:
    """A dispatcher submitting to `sub` (see tests.conformance.support.make_dispatcher)."""
    return make_dispatcher(sub)
