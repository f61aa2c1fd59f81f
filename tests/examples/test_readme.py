"""The README is a landing page that works as written.

Its quick start is checked by test_quickstart.py; here: its size, its map
of docs/, its two commands, and its transactional examples, run as printed
(the SQL one on SQLite, the Spanner one on the emulator).
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import tq
import tq.txn
import tqtesting
from examples.quickstart import app as quickstart
from examples.quickstart import tasks_pb2 as pb

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    """The README's text under the heading `title`, up to the next heading of its level."""
    m = re.search(rf"^(#+) {re.escape(title)}\n(.*?)(?=^\1 |\Z)", README, re.S | re.M)
    assert m, f"README.md has no section {title!r}"
    return m.group(2)


def _python_block(title: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", _section(title), re.S)
    assert len(blocks) == 1, f"README.md's section {title!r} should show one Python block"
    return str(blocks[0])


def test_readme_is_a_short_landing_page() -> None:
    assert len(README) < 15_000, f"README.md has {len(README)} characters: move details to docs/"


def test_readme_links_every_page_of_docs_with_one_line() -> None:
    map_lines = _section("Where to read next").strip().splitlines()
    linked = {}
    for line in map_lines:
        m = re.match(r"- \[docs/([\w.-]+\.md)\]\(docs/\1\): \S", line)
        assert m, f"not a map line (- [docs/X.md](docs/X.md): what it says): {line!r}"
        linked[m.group(1)] = line
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert sorted(pages - linked.keys()) == [], "pages of docs/ missing from the README's map"
    assert sorted(linked.keys() - pages) == [], "the README's map links pages that do not exist"


def test_readme_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README.md links {target}, which does not exist"


def test_the_two_commands_exist_and_ci_runs_the_test_command() -> None:
    block = _section("Two commands")
    commands = re.findall(r"^(scripts/\w+) +#", block, re.M)
    assert commands == ["scripts/demo", "scripts/test"]
    for c in commands:
        assert os.access(ROOT / c, os.X_OK), f"{c} is not executable"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec scripts/test\b", ci, re.M), ".ci/run must run scripts/test"


@pytest.fixture
def tq_dispatcher() -> tq.Dispatcher:
    return quickstart.disp


class _Base(DeclarativeBase):
    pass


class User(_Base):
    __tablename__ = "users"
    name: Mapped[str] = mapped_column(primary_key=True)


@pytest.fixture
def sql_engine(tmp_path: pathlib.Path) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    _Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def _run(code: str, namespace: dict[str, Any]) -> dict[str, Any]:
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_readme_sql_example_commits_the_user_and_greets_once(
    tq_scheduler: tqtesting.Scheduler, sql_engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    ns = _run(_python_block("PostgreSQL or SQLite (SQLAlchemy)"), {
        "engine": sql_engine, "User": User, "disp": quickstart.disp, "pb": pb, "tq": tq,
    })  # fmt: skip
    try:
        ns["sign_up"]("Ada")
        # A rolled-back sign-up (the same user again) greets nobody.
        with pytest.raises(sa.exc.IntegrityError):
            ns["sign_up"]("Ada")
        tq_scheduler.run(tqtesting.stop_when_drained())
        assert tq_scheduler.tasks().finished().payloads() == [pb.Greet(name="Ada")]
        assert capsys.readouterr().out.count("hello, Ada!") == 1
        with sql_engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(User)).scalar() == 1
        assert ns["store"].count_reminders() == (0, 0)
    finally:
        ns["store"].close()


def test_readme_spanner_example_commits_the_user_and_greets_once(
    tq_scheduler: tqtesting.Scheduler, spanner_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    database = spanner_emulator.create_database(
        ["CREATE TABLE Users (Name STRING(MAX) NOT NULL) PRIMARY KEY (Name)"]
    )
    ns: dict[str, Any] = {"database": database, "disp": quickstart.disp, "pb": pb, "tq": tq}
    try:
        _run(_python_block("Cloud Spanner"), ns)
        tq_scheduler.run(tqtesting.stop_when_drained())
        assert tq_scheduler.tasks().finished().payloads() == [pb.Greet(name="Ada")]
        assert capsys.readouterr().out.count("hello, Ada!") == 1
        with database.snapshot() as snap:
            assert list(snap.execute_sql("SELECT Name FROM Users")) == [["Ada"]]
        assert ns["store"].count_reminders() == (0, 0)
    finally:
        if "store" in ns:
            tq.txn.unregister_store(ns["store"].name)
        spanner_emulator.drop_database(database)
