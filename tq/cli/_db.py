"""`tq db init` and `tq db migrate`: create and upgrade tq's tables."""

from __future__ import annotations

from typing import Any

import click

from tq.cli import _databases, _output
from tq.cli._errors import CONFIG, fail
from tq.cli._options import Config, json_lines, settings_options

PARTS = ("outbox", "dbqueue")


@click.group("db")
def db() -> None:
    """Create or upgrade tq's tables (outbox and database queue; Spanner: outbox)."""


def _parts(only: tuple[str, ...]) -> tuple[str, ...]:
    return only or PARTS


def _sql_versions(engine: Any) -> dict[str, int | None]:
    import sqlalchemy as sa

    from tq.dbqueue import schema_version

    out: dict[str, int | None] = {"outbox": None, "dbqueue": schema_version(engine)}
    if sa.inspect(engine).has_table("tq_schema_version"):
        with engine.connect() as conn:
            out["outbox"] = conn.execute(
                sa.text("SELECT version FROM tq_schema_version WHERE component = 'outbox'")
            ).scalar_one_or_none()
    return out


def _run(cfg: Config, only: tuple[str, ...], verb: str, as_json: bool) -> None:
    if not cfg.database_url and not cfg.spanner_database:
        raise fail("no database: give --db URL or --spanner NAME", CONFIG)
    rows: list[dict[str, Any]] = []
    if cfg.database_url:
        from tq.dbqueue import SCHEMA_VERSION as DBQ_VERSION
        from tq.dbqueue import create_schema as create_dbqueue
        from tq.txn.sql import SCHEMA_VERSION as OUTBOX_VERSION
        from tq.txn.sql import create_schema as create_outbox

        engine = _databases.sql_engine(cfg.database_url)
        try:
            before = _sql_versions(engine)
            for part in _parts(only):
                if part == "outbox":
                    create_outbox(engine)
                else:
                    create_dbqueue(engine)
            after = _sql_versions(engine)
        finally:
            engine.dispose()
        latest = {"outbox": OUTBOX_VERSION, "dbqueue": DBQ_VERSION}
        for part in _parts(only):
            rows.append(
                {"database": engine.url.render_as_string(hide_password=True), "part": part,
                 "before": before[part], "after": after[part], "latest": latest[part]}
            )  # fmt: skip
    if cfg.spanner_database:
        if only and "outbox" not in only:
            raise fail("Spanner holds the outbox only: use --only outbox", CONFIG)
        from tq.txn.spanner import SCHEMA_VERSION as SPANNER_VERSION
        from tq.txn.spanner import create_schema as create_spanner
        from tq.txn.spanner import schema_version as spanner_version

        database = _databases.spanner_database(cfg.spanner_database)
        try:
            found = spanner_version(database)
            create_spanner(database)
        finally:
            database.close()
        rows.append(
            {"database": cfg.spanner_database, "part": "outbox",
             "before": found, "after": SPANNER_VERSION, "latest": SPANNER_VERSION}
        )  # fmt: skip
    _output.table(rows, ["database", "part", "before", "after", "latest"], as_json=as_json)
    if not as_json:
        _output.say(f"[green]schema {verb}[/green]")


_only = click.option(
    "--only",
    type=click.Choice(PARTS),
    multiple=True,
    help="Only these parts (repeatable); default: both on SQL, the outbox on Spanner.",
)


@db.command("init")
@settings_options("database_url", "spanner_database")
@_only
@json_lines
def init(only: tuple[str, ...], as_json: bool, **kwargs: Any) -> None:
    """Create the tables that are missing (idempotent, safe to run concurrently)."""
    _run(Config.take(kwargs), only, "ready", as_json)


@db.command("migrate")
@settings_options("database_url", "spanner_database")
@_only
@json_lines
def migrate(only: tuple[str, ...], as_json: bool, **kwargs: Any) -> None:
    """Upgrade the tables to this tq's schema versions (creating missing ones).

    Prints each part's version before and after. Refuses (exit 3) a database
    whose schema is newer than this tq.
    """
    _run(Config.take(kwargs), only, "up to date", as_json)
