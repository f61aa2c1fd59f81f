"""The outbox tables: their SQLAlchemy description and how to create them.

The DDL lives in `schema/<dialect>.sql` next to this module (copied to
deploy/sql/ for operators). The differences between the three databases
(PostgreSQL, SQLite, MySQL / MariaDB) are named here: `dialect_name`, how
times are stored (`MICROS_DIALECTS`), and the schema lock. `create_schema`
applies the DDL idempotently under that lock and records the version in
`tq_schema_version` (one row per component: the outbox is 'outbox'); later
versions append migrations to `_MIGRATIONS`.

Versions: 1 reminders and leases; 2 adds `tq_done`, the done markers of
effectively-once handlers (`tq.txn.sql.once`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.resources
from collections.abc import Iterator
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Dialect,
    Engine,
    LargeBinary,
    MetaData,
    Table,
    Text,
    text,
)
from sqlalchemy.types import BigInteger, DateTime, TypeDecorator, TypeEngine

from tq._errors import ConfigError

COMPONENT = "outbox"
SCHEMA_VERSION = 2
DIALECTS = ("postgresql", "sqlite", "mysql")
"""The databases of the outbox (MariaDB counts as "mysql")."""
MICROS_DIALECTS = frozenset({"sqlite", "mysql", "mariadb"})
"""Dialects whose times are integer microseconds since the epoch (see `Timestamp`)."""
_FILES = {"postgresql": "postgres.sql", "sqlite": "sqlite.sql", "mysql": "mysql.sql"}

# Migrations to version N (N > 1) per dialect, applied in order by
# create_schema after the schema file's statements (which create whatever
# is missing, idempotently): {N: {"postgresql": [...], "sqlite": [...], ...}}.
_MIGRATIONS: dict[int, dict[str, list[str]]] = {
    # tq_done and its index: new tables only, made by the file's CREATE ... IF NOT EXISTS.
    2: {"postgresql": [], "sqlite": [], "mysql": []},
}

# Serializes concurrent create_schema calls on PostgreSQL (a pg_advisory_xact_lock key).
_PG_LOCK_CLASS = 0x7471  # "tq"
_PG_SCHEMA_LOCK = 1

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def to_micros(value: dt.datetime) -> int:
    """A timezone-aware time as integer microseconds since the Unix epoch."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=value)


class Timestamp(TypeDecorator[dt.datetime]):
    """A UTC time: timestamptz on PostgreSQL, integer microseconds on SQLite and MySQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in MICROS_DIALECTS:
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"tq: naive datetime {value!r}; times must be timezone-aware")
        return to_micros(value) if dialect.name in MICROS_DIALECTS else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if dialect.name in MICROS_DIALECTS:
            return from_micros(int(value))
        assert isinstance(value, dt.datetime)
        return value.astimezone(dt.UTC)


metadata = MetaData()

reminders = Table(
    "tq_reminders",
    metadata,
    Column("id", Text, primary_key=True),
    Column("fresh_until", Timestamp, nullable=False),
    Column("parked", Boolean, nullable=False, default=False),
    Column("extra", LargeBinary, nullable=False, default=b""),
    Column("payload", LargeBinary, nullable=False),
)

done = Table(
    "tq_done",
    metadata,
    Column("id", Text, primary_key=True),
    Column("expires_at", Timestamp, nullable=False),
)

leases = Table(
    "tq_leases",
    metadata,
    Column("section", Text, primary_key=True),
    Column("lease_id", Text, primary_key=True),
    Column("ranges", Text, nullable=False),
    Column("expires_at", Timestamp, nullable=False),
)


def dialect_name(bind: Engine | Connection) -> str:
    """'postgresql', 'sqlite' or 'mysql' (MariaDB too); ConfigError for any other database."""
    name = bind.dialect.name
    if name == "mariadb":
        name = "mysql"
    if name not in DIALECTS:
        raise ConfigError(
            f"tq.txn.sql supports PostgreSQL, SQLite and MySQL / MariaDB, not {name!r} "
            f"({bind.engine.url!r})"
        )
    return name


def schema_sql(dialect: str) -> str:
    """The DDL of the current version for one of DIALECTS (deploy/sql/*.sql)."""
    if dialect not in DIALECTS:
        raise ConfigError(f"no tq schema for {dialect!r}; use one of {DIALECTS}")
    file = _FILES[dialect]
    return (importlib.resources.files(__package__) / "schema" / file).read_text("utf-8")


@contextlib.contextmanager
def schema_lock(conn: Connection, dialect: str) -> Iterator[None]:
    """Serializes schema changes across processes, for `conn`'s transaction.

    PostgreSQL: a transaction-scoped advisory lock; SQLite: the write lock
    (BEGIN IMMEDIATE); MySQL: a named lock, released on the way out.
    """
    if dialect == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield
    elif dialect == "mysql":
        conn.execute(text("SELECT GET_LOCK('tq_schema', 60)"))
        try:
            yield
        finally:
            conn.execute(text("SELECT RELEASE_LOCK('tq_schema')"))
    else:
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:c, :k)"),
            {"c": _PG_LOCK_CLASS, "k": _PG_SCHEMA_LOCK},
        )
        yield


def statements(sql: str) -> list[str]:
    """Splits a schema file into statements (no ';' inside a statement there)."""
    lines = [ln for ln in sql.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def create_schema(engine: Engine) -> int:
    """Creates the outbox tables if missing and migrates them; returns the version.

    Idempotent and safe to run from several processes at once (PostgreSQL:
    an advisory lock; SQLite: BEGIN IMMEDIATE). Refuses (ConfigError) a
    database whose recorded version is newer than this code knows.
    """
    dialect = dialect_name(engine)
    with engine.connect() as conn, schema_lock(conn, dialect):
        for stmt in statements(schema_sql(dialect)):
            conn.exec_driver_sql(stmt)
        version = conn.execute(
            text("SELECT version FROM tq_schema_version WHERE component = :c"),
            {"c": COMPONENT},
        ).scalar_one()
        if version > SCHEMA_VERSION:
            conn.rollback()
            raise ConfigError(
                f"the tq outbox schema in {engine.url!r} is version {version}, newer than "
                f"this tq knows ({SCHEMA_VERSION}); upgrade tq"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for stmt in _MIGRATIONS[target][dialect]:
                conn.exec_driver_sql(stmt)
            version = target
        conn.execute(
            text("UPDATE tq_schema_version SET version = :v WHERE component = :c"),
            {"v": version, "c": COMPONENT},
        )
        conn.commit()
    return int(version)
