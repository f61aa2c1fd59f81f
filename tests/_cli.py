"""The tq command run in process for tests, through click's CliRunner, with the
exit code a script would see; the databases its tests run on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from tq.cli._databases import sql_engine
from tq.cli._main import cli


def run(*args: str, code: int = 0) -> Result:
    """`tq ARGS`; asserts that it exits with `code`."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, f"tq {' '.join(args)}: {result.output}"
    return result


def rows(*args: str, code: int = 0) -> list[dict[str, Any]]:
    """The rows `tq ARGS --json` prints."""
    return [json.loads(line) for line in run(*args, "--json", code=code).stdout.splitlines()]


# Fixtures: import the `*_fixture` names a module uses (pytest knows them by
# their `name`), each marked noqa F401.


@pytest.fixture(
    name="db_url", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def db_url_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """What `--db` is given: a SQLite file path, or a new PostgreSQL database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "tq.db")
    url: str = request.getfixturevalue("postgres_db_url")
    return url


@pytest.fixture(name="engine")
def engine_fixture(db_url: str) -> Iterator[sa.Engine]:
    """An engine on `db_url` after `tq db init`."""
    run("db", "init", "--db", db_url)
    e = sql_engine(db_url)
    yield e
    e.dispose()
