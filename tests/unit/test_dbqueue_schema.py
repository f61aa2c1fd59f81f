"""The database queue's schema: creation, versioning, the shipped DDL, supported engines."""

from __future__ import annotations

import pathlib
import sqlite3
from typing import Any

import pytest
import sqlalchemy as sa

import tq
from tests._dbqueue import engine_fixture  # noqa: F401
from tq import dbqueue
from tq.dbqueue._schema import meta

ROOT = pathlib.Path(__file__).resolve().parents[2]


def describe(engine: sa.Engine) -> dict[str, Any]:
    """Tables with their columns, indexes and unique constraints, comparable across DBs."""
    insp = sa.inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        if not table.startswith("tq_") or table in ("tq_reminders", "tq_leases"):
            continue
        out[table] = {
            "columns": [
                (c["name"], str(c["type"]).split("(")[0], c["nullable"])
                for c in insp.get_columns(table)
            ],
            "pk": insp.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"])) for i in insp.get_indexes(table)
            ),
            "unique": sorted(
                (u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(table)
            ),
        }
    return out


def test_create_schema_is_idempotent_and_records_the_version(engine: sa.Engine) -> None:
    dbqueue.create_schema(engine)
    dbqueue.create_schema(engine)
    assert dbqueue.schema_version(engine) == dbqueue.SCHEMA_VERSION
    assert {"tq_tasks", "tq_queues", "tq_dbqueue_meta"} <= set(sa.inspect(engine).get_table_names())


def test_schema_version_is_none_before_creation(tmp_path: pathlib.Path) -> None:
    e = dbqueue.sqlite_engine(tmp_path / "empty.db")
    try:
        assert dbqueue.schema_version(e) is None
    finally:
        e.dispose()


def test_a_newer_schema_is_refused(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(meta)
            .where(meta.c.key == "schema_version")
            .values(value=str(dbqueue.SCHEMA_VERSION + 1))
        )
    with pytest.raises(tq.ConfigError, match="newer"):
        dbqueue.create_schema(engine)


def test_shipped_sqlite_ddl_matches_create_schema(
    engine: sa.Engine, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "from-ddl.db"
    with sqlite3.connect(path) as raw:
        raw.executescript((ROOT / "deploy/sql/dbqueue-sqlite.sql").read_text())
        raw.executescript((ROOT / "deploy/sql/dbqueue-sqlite.sql").read_text())  # idempotent
    raw.close()
    from_ddl = dbqueue.sqlite_engine(path)
    try:
        assert describe(from_ddl) == describe(engine)
        assert dbqueue.schema_version(from_ddl) == dbqueue.SCHEMA_VERSION
    finally:
        from_ddl.dispose()


@pytest.mark.parametrize(
    ("dialect", "file"), [("postgresql", "postgres"), ("sqlite", "sqlite"), ("mysql", "mysql")]
)
def test_shipped_ddl_is_what_the_ddl_command_prints(dialect: str, file: str) -> None:
    shipped = (ROOT / f"deploy/sql/dbqueue-{file}.sql").read_text()
    assert shipped == dbqueue.schema_sql(dialect), (
        f"regenerate: python -m tq.dbqueue ddl {dialect} > deploy/sql/dbqueue-{file}.sql"
    )


def test_in_memory_sqlite_is_refused() -> None:
    e = sa.create_engine("sqlite://")
    try:
        with pytest.raises(tq.ConfigError, match="SQLite file"):
            dbqueue.DbQueueSubmitter(e)
    finally:
        e.dispose()


def test_sqlite_engine_turns_on_wal(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_import_tq_does_not_import_the_database_queue() -> None:
    import subprocess
    import sys

    code = "import sys, tq, tq.txn; tq.Dispatcher(); assert 'tq.dbqueue' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_leased_rows_are_read_by_position_in_field_order() -> None:
    import dataclasses

    from tq.dbqueue import _lease

    fields = [f.name for f in dataclasses.fields(_lease.Leased)]
    assert [c.name for c in _lease.LEASED_COLUMNS] == fields[:-1]
    assert fields[-1] == "config"
