"""What the tests of ambient SQL transactions (instrumented, and untold) share:
a database (SQLite or PostgreSQL), its engines, a registered store, a
recording dispatcher and a small ORM model on the `rows` table."""

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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/app.db"
    url: str = request.getfixturevalue("postgres_db_url")
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    with eng.begin() as conn:
        conn.execute(text(ROWS))
    yield eng
    eng.dispose()


@pytest.fixture
async def async_engine(db_url: str, engine: Engine) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(db_url.replace("sqlite:///", "sqlite+aiosqlite:///", 1))
    yield eng
    await eng.dispose()


@pytest.fixture
def store(engine: Engine) -> Iterator[SQLStore]:
    s = SQLStore(engine, name="sql-test")
    s.create_schema()
    yield s
    s.close()


@pytest.fixture
def sub() -> RecordingSubmitter:
    return RecordingSubmitter()


@pytest.fixture
def disp(sub: RecordingSubmitter) -> tq.Dispatcher:
    return make_dispatcher(sub)


def rows(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(text("SELECT key FROM rows"))}


def insert(conn: object, key: str) -> None:
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


class Boom(Exception):
    pass
