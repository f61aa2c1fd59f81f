"""Reaching the databases from settings: engines, the database queue's tables, Spanner,
the outbox stores a command acts on."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from tq.cli import _settings
from tq.cli._errors import CONFIG, fail
from tq.cli._options import Config

if TYPE_CHECKING:
    import sqlalchemy as sa

    from tq.txn import ReminderStore


def normalize_url(url: str) -> str:
    """A SQLAlchemy URL for `url` (`tq.cli.database_url`: file paths become SQLite)."""
    return _settings.database_url(url)


def sql_engine(url: str) -> sa.Engine:
    """An engine for the database queue and admin commands (SQLite gets WAL and a busy
    timeout; MySQL / MariaDB READ COMMITTED).

    A URL no installed dialect takes is a configuration error naming `--db`.
    """
    import sqlalchemy as sa

    url = normalize_url(url)
    if url.startswith("sqlite:///"):
        from tq.dbqueue import sqlite_engine

        return sqlite_engine(url[len("sqlite:///") :])
    if url.startswith(("mysql", "mariadb")):
        from tq.dbqueue import mysql_engine

        return mysql_engine(url)
    try:
        return sa.create_engine(url, pool_pre_ping=True)
    except sa.exc.ArgumentError as e:
        shown = _shown_url(url)
        raise fail(
            f"--db {shown}: {e}; give a SQLAlchemy URL (postgresql+psycopg://user@host/db, "
            "sqlite:///file.db) or a SQLite file path",
            CONFIG,
        ) from e


def _shown_url(url: str) -> str:
    import sqlalchemy as sa

    try:
        return repr(sa.engine.make_url(url).render_as_string(hide_password=True))
    except sa.exc.ArgumentError:
        return repr(url.split("@", 1)[-1]) if "@" in url else repr(url)


def require_queue_tables(engine: sa.Engine) -> None:
    """Refuses a database without the database queue's tables, saying how to make them."""
    from tq.dbqueue import schema_version

    if schema_version(engine) is None:
        shown = engine.url.render_as_string(hide_password=True)
        raise fail(
            f"database: tq's tables are missing (no database queue in {shown}): run "
            "`tq db init --db URL`",
            CONFIG,
        )


def require_db(cfg: Config) -> str:
    if not cfg.database_url:
        raise fail("no database: give --db URL (or set TQ_DATABASE_URL)", CONFIG)
    return str(cfg.database_url)


def spanner_database(name: str) -> Any:
    """The Spanner `Database` named `projects/P/instances/I/databases/D`.

    With SPANNER_EMULATOR_HOST set, the client talks to the emulator.
    """
    parts = name.split("/")
    if (
        len(parts) != 6
        or parts[0] != "projects"
        or parts[2] != "instances"
        or parts[4] != ("databases")
    ):
        raise fail(f"--spanner must be 'projects/P/instances/I/databases/D', not {name!r}", CONFIG)
    try:
        from google.cloud import spanner
    except ImportError as e:
        raise fail("--spanner needs the spanner extra: pip install 'tq[spanner]'", CONFIG) from e
    # Multiplexed sessions can make Database.close() block for minutes after
    # a read-only query; a short-lived command does not need them.
    os.environ.setdefault("GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS", "false")
    os.environ.setdefault("GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS_FOR_RW", "false")
    kwargs: dict[str, Any] = {"project": parts[1]}
    if os.environ.get("SPANNER_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        kwargs["credentials"] = AnonymousCredentials()  # type: ignore[no-untyped-call]
        kwargs["client_options"] = {"api_endpoint": os.environ["SPANNER_EMULATOR_HOST"]}
        kwargs["disable_builtin_metrics"] = True
    client = spanner.Client(**kwargs)
    return client.instance(parts[3]).database(parts[5])  # type: ignore[no-untyped-call]


def outbox_stores(cfg: Config, *, registered: bool = False) -> tuple[list[ReminderStore], bool]:
    """The outbox stores to act on, and whether the caller owns (must close) them.

    With `registered` (an app was loaded), the stores the app registered, if
    any; otherwise stores on `--db` / `--spanner`, made here and not
    registered (the caller passes them on explicitly).
    """
    import tq.txn

    if registered and tq.txn.stores():
        return tq.txn.stores(), False
    found: list[ReminderStore] = []
    if cfg.database_url:
        from tq.txn.sql import SQLStore

        found.append(SQLStore(sql_engine(cfg.database_url), register=False))
    if cfg.spanner_database:
        from tq.txn.spanner import SpannerStore

        store = SpannerStore(spanner_database(cfg.spanner_database), name="cli-spanner")
        tq.txn.unregister_store(store.name)  # SpannerStore registers itself
        found.append(store)
    if not found:
        raise fail(
            "no outbox store: give --db URL or --spanner NAME (or --app of an app that "
            "registers its store)",
            CONFIG,
        )
    return found, True


def close_stores(stores: list[ReminderStore]) -> None:
    """Closes stores made by `outbox_stores` (and their engines or databases)."""
    for s in stores:
        close = getattr(s, "close", None)
        if callable(close):
            close()
            engine = getattr(s, "engine", None)
            if engine is not None:
                engine.dispose()  # the store does not own an engine it was given
        database = getattr(s, "database", None)
        if database is not None:
            database.close()


def apply_queue_yaml(engine: sa.Engine, path: str) -> int:
    from tq.dbqueue import apply_queues, load_queue_yaml

    try:
        configs = load_queue_yaml(path)
    except OSError as e:
        raise fail(f"--queue-yaml {path}: {e}", CONFIG) from e
    apply_queues(engine, configs)
    return len(configs)
