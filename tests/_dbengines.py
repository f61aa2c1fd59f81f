"""One database queue per database kind: SQLite, PostgreSQL and MariaDB.

Test modules import `any_engine_fixture` (marked noqa F401) and take
`engine`: each test runs once per kind, on a fresh database with the
queue's schema. The servers start once per test session.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from tq import dbqueue

KINDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]


def engine_of(kind: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> sa.Engine:
    """A new engine on an empty database of `kind`."""
    if kind == "sqlite":
        return dbqueue.sqlite_engine(tmp_path / "queue.db")
    if kind == "postgres":
        return sa.create_engine(request.getfixturevalue("postgres_db_url"), pool_size=20)
    return dbqueue.mysql_engine(request.getfixturevalue("mariadb_db_url"), pool_size=20)


@pytest.fixture(name="engine", params=KINDS)
def any_engine_fixture(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> Iterator[sa.Engine]:
    """A database queue on SQLite, PostgreSQL or MariaDB (the test runs on each)."""
    e = engine_of(request.param, request, tmp_path)
    dbqueue.create_schema(e)
    yield e
    e.dispose()
