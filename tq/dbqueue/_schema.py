"""The database queue's tables, and creating them.

Times are stored as integer microseconds since the Unix epoch (UTC), read
from `tq.clock.now()` and never from the database's clock, so that a fake
clock in tests drives ETAs, backoff, leases and tombstones alike, and so
that SQLite and PostgreSQL compare them the same way.

`deploy/sql/dbqueue-postgres.sql` and `deploy/sql/dbqueue-sqlite.sql` hold
the same schema as DDL for operators who manage schemas themselves; a test
keeps them in step with the tables below.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from tq._errors import ConfigError

SCHEMA_VERSION = 5
"""The version of the tables below; `create_schema` records it.

1: tasks, queues, recurring. 2: adds `tq_cron` (the cron schedules of task
classes). 3: adds `tq_subscriptions` (topics' subscriptions, see
`tq.dbqueue._topics`). Creating the missing table is each whole migration.
4: adds the columns `priority`, `rank_us`, `tag`, `progress`, `result`,
`failure` to `tq_tasks` and `max_pending` to `tq_recurring`, and the indexes
`ix_tq_tasks_priority` and `ix_tq_tasks_tag` (`create_schema` adds what is
missing with ALTER TABLE / CREATE INDEX). 5: the lease and finished indexes
become partial where the database has partial indexes (PostgreSQL, SQLite):
`ix_tq_tasks_leased` (leased rows only) and `ix_tq_tasks_finished_us`
(finished rows only) replace `ix_tq_tasks_lease` and `ix_tq_tasks_finished`,
which are dropped; MySQL / MariaDB keep full indexes, renamed.
"""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class State(enum.StrEnum):
    """The life of a task row.

    * `PENDING`: waiting for its ETA (or for a worker).
    * `LEASED`: a worker is delivering it; its lease ends at `lease_expires_us`.
    * `DONE`: delivered with a 2xx response.
    * `FAILED`: gave up after the queue's retry limits.
    * `DELETED`: deleted by an operator (or a queue purge) before it ran.

    The last three are finished: the row stays as the tombstone of its name.
    """

    PENDING = "pending"
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"
    DELETED = "deleted"


LIVE_STATES = (State.PENDING.value, State.LEASED.value)
FINISHED_STATES = (State.DONE.value, State.FAILED.value, State.DELETED.value)

metadata = sa.MetaData()

# SQLite aliases only "INTEGER PRIMARY KEY" to the rowid.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# MySQL's BLOB and TEXT hold 64 KiB; a task (body, headers) may be 1 MiB.
_BYTES = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
# MySQL's FLOAT is single precision.
_FLOAT = sa.Float().with_variant(mysql.DOUBLE(asdecimal=False), "mysql", "mariadb")
# Names compare byte for byte ("A" is not "a"), as on SQLite and PostgreSQL.
_MYSQL: dict[str, Any] = {
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
    "mysql_engine": "InnoDB",
}

tasks = sa.Table(
    "tq_tasks",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    # The short queue ID ("emails"), the last part of the request's parent.
    sa.Column("queue", sa.String(100), nullable=False),
    # The task ID, the last part of the task name (given or generated).
    sa.Column("name", sa.String(500), nullable=False),
    sa.Column("task_class", sa.String(100), nullable=False),
    # The request: an absolute URL (HTTP targets) or a relative URI (App Engine).
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("headers", _TEXT, nullable=False),  # a JSON object
    sa.Column("body", _BYTES, nullable=False),
    sa.Column("oidc_email", sa.String(320)),
    sa.Column("oidc_audience", sa.Text()),
    sa.Column("app_engine", sa.Boolean(), nullable=False),
    sa.Column("dispatch_deadline_s", _FLOAT),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("eta_us", sa.BigInteger(), nullable=False),
    # Dispatch attempts so far; the retry count of the running attempt is attempts - 1.
    sa.Column("attempts", sa.Integer(), nullable=False),
    # Attempts that got a response other than 5xx (Cloud Tasks' execution count).
    sa.Column("executions", sa.Integer(), nullable=False),
    sa.Column("lease_owner", sa.String(100)),
    sa.Column("lease_expires_us", sa.BigInteger()),
    sa.Column("last_status", sa.Integer()),  # HTTP status of the last attempt, if any
    sa.Column("last_error", sa.Text()),  # why the last attempt failed (the retry reason)
    sa.Column("first_attempt_us", sa.BigInteger()),
    sa.Column("last_attempt_us", sa.BigInteger()),
    sa.Column("created_us", sa.BigInteger(), nullable=False),
    sa.Column("finished_us", sa.BigInteger()),
    # How long the name stays taken after the task finishes; NULL for generated names.
    sa.Column("reserve_us", sa.BigInteger()),
    # Version 4. Higher runs first; 0 for most tasks (see _lease: priorities).
    sa.Column("priority", sa.Integer(), nullable=False, server_default=sa.text("0")),
    # Set when priority != 0: eta_us less the priority's head start. Tasks of
    # priority 0 rank by eta_us.
    sa.Column("rank_us", sa.BigInteger()),
    sa.Column("tag", sa.String(500)),  # pull consumers lease by tag
    sa.Column("progress", _TEXT),  # the holder's last report (heartbeat), as it gave it
    sa.Column("result", _BYTES),  # what the task produced (size-limited)
    sa.Column("failure", _BYTES),  # what the last failed attempt said (size-limited)
    sa.UniqueConstraint("queue", "name", name="uq_tq_tasks_queue_name"),
    sa.Index("ix_tq_tasks_due", "queue", "state", "eta_us"),
    # Partial where the database has them, so that a task costs an entry only
    # while it is leased (the reclaim of expired leases), finished (retention,
    # history), of a priority other than 0, or tagged. A query meant for one
    # must imply its predicate: for the lease index, say the state with
    # IS_LEASED (a literal; a generic plan cannot prove `state = $1`).
    sa.Index(
        "ix_tq_tasks_leased",
        "state",
        "lease_expires_us",
        sqlite_where=sa.text(f"state = '{State.LEASED.value}'"),
        postgresql_where=sa.text(f"state = '{State.LEASED.value}'"),
    ),
    sa.Index(
        "ix_tq_tasks_finished_us",
        "finished_us",
        sqlite_where=sa.text("finished_us IS NOT NULL"),
        postgresql_where=sa.text("finished_us IS NOT NULL"),
    ),
    sa.Index(
        "ix_tq_tasks_priority",
        "queue",
        "state",
        "rank_us",
        sqlite_where=sa.text("priority <> 0"),
        postgresql_where=sa.text("priority <> 0"),
    ),
    sa.Index(
        "ix_tq_tasks_tag",
        "queue",
        "tag",
        "state",
        "eta_us",
        sqlite_where=sa.text("tag IS NOT NULL"),
        postgresql_where=sa.text("tag IS NOT NULL"),
    ),
    sqlite_autoincrement=True,  # never reuse an ID a stale lease may still name
    **_MYSQL,
)

IS_LEASED: sa.ColumnElement[bool] = tasks.c.state == sa.literal_column(
    f"'{State.LEASED.value}'", sa.String()
)
"""`state = 'leased'` with the state as a literal, which implies the partial
lease index's predicate (a bound parameter does not, in a generic plan)."""

# Version 5's indexes that replaced older ones: {old name: new name}.
_REPLACED_INDEXES = {
    "ix_tq_tasks_lease": "ix_tq_tasks_leased",
    "ix_tq_tasks_finished": "ix_tq_tasks_finished_us",
}

queues = sa.Table(
    "tq_queues",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("rate_per_s", _FLOAT, nullable=False),
    sa.Column("bucket_size", sa.Integer(), nullable=False),
    sa.Column("max_concurrent", sa.Integer(), nullable=False),  # 0: unlimited
    sa.Column("max_attempts", sa.Integer(), nullable=False),  # -1: unlimited
    sa.Column("max_retry_duration_s", _FLOAT, nullable=False),  # 0: unlimited
    sa.Column("min_backoff_s", _FLOAT, nullable=False),
    sa.Column("max_backoff_s", _FLOAT, nullable=False),
    sa.Column("max_doublings", sa.Integer(), nullable=False),
    sa.Column("pull", sa.Boolean(), nullable=False),  # a pull queue: never pushed
    sa.Column("paused", sa.Boolean(), nullable=False),
    # The token bucket, shared by every worker: tokens as of tokens_at_us.
    sa.Column("tokens", _FLOAT, nullable=False),
    sa.Column("tokens_at_us", sa.BigInteger(), nullable=False),
    sa.Column("created_us", sa.BigInteger(), nullable=False),
    sa.Column("updated_us", sa.BigInteger(), nullable=False),
    **_MYSQL,
)

recurring = sa.Table(
    "tq_recurring",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("queue", sa.String(100), nullable=False),
    sa.Column("task_class", sa.String(100), nullable=False),
    sa.Column("request", _BYTES, nullable=False),  # a serialized CreateTaskRequest
    sa.Column("every_us", sa.BigInteger(), nullable=False),
    sa.Column("next_run_us", sa.BigInteger(), nullable=False),
    sa.Column("last_run_us", sa.BigInteger()),
    sa.Column("created_us", sa.BigInteger(), nullable=False),
    sa.Column("updated_us", sa.BigInteger(), nullable=False),
    # Version 4: no new run while this many earlier ones are live (NULL: no limit).
    sa.Column("max_pending", sa.Integer()),
    sa.Index("ix_tq_recurring_next", "next_run_us"),
    **_MYSQL,
)

# One row per cron-scheduled task class (see _cron): the next tick to fire.
cron = sa.Table(
    "tq_cron",
    metadata,
    # The class ID, prefixed with "<namespace>:" when the dispatcher has one.
    sa.Column("name", sa.String(160), primary_key=True),
    sa.Column("schedule", sa.String(200), nullable=False),
    sa.Column("time_zone", sa.String(100), nullable=False),
    sa.Column("next_tick_us", sa.BigInteger(), nullable=False),
    sa.Column("last_tick_us", sa.BigInteger()),  # the last tick fired, if any
    sa.Column("last_fired_us", sa.BigInteger()),  # when it was fired
    sa.Column("created_us", sa.BigInteger(), nullable=False),
    sa.Column("updated_us", sa.BigInteger(), nullable=False),
    **_MYSQL,
)

# One row per subscription of a topic (see _topics): where its messages go.
subscriptions = sa.Table(
    "tq_subscriptions",
    metadata,
    # The subscription ID, also the name of the queue its messages wait in.
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("topic", sa.String(255), nullable=False),  # the topic ID
    sa.Column("push_endpoint", sa.Text()),  # NULL: a pull subscription
    sa.Column("oidc_email", sa.String(320)),
    sa.Column("oidc_audience", sa.Text()),
    sa.Column("created_us", sa.BigInteger(), nullable=False),
    sa.Column("updated_us", sa.BigInteger(), nullable=False),
    sa.Index("ix_tq_subscriptions_topic", "topic"),
    **_MYSQL,
)

meta = sa.Table(
    "tq_dbqueue_meta",
    metadata,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text(), nullable=False),
    **_MYSQL,
)


def to_us(when: dt.datetime) -> int:
    """Microseconds since the epoch of a timezone-aware datetime."""
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> dt.datetime:
    """The UTC datetime of microseconds since the epoch."""
    return _EPOCH + dt.timedelta(microseconds=us)


def create_schema(engine: sa.Engine) -> None:
    """Creates the database queue's tables and indexes if missing; idempotent.

    Records SCHEMA_VERSION in `tq_dbqueue_meta`, upgrading an older
    recorded version (the migrations add tables, columns and indexes, and
    replace the indexes version 5 replaced; each step tolerates another
    process taking it at the same time). Refuses (ConfigError) a database whose
    recorded version is newer than this code knows.
    """
    found = schema_version(engine)
    if found is not None and found > SCHEMA_VERSION:
        raise ConfigError(
            f"the database queue schema is version {found}, newer than this tq "
            f"(version {SCHEMA_VERSION}); upgrade tq"
        )
    metadata.create_all(engine, checkfirst=True)
    if found is not None and found < SCHEMA_VERSION:
        _rename_replaced_indexes(engine)
        _add_missing_columns(engine)
        _drop_replaced_indexes(engine)
    found = schema_version(engine)
    if found is None:
        try:
            with engine.begin() as conn:
                conn.execute(
                    sa.insert(meta).values(key="schema_version", value=str(SCHEMA_VERSION))
                )
        except sa.exc.IntegrityError:
            found = schema_version(engine)  # another process recorded it first
    if found is not None and found < SCHEMA_VERSION:
        with engine.begin() as conn:
            conn.execute(
                sa.update(meta)
                .where(meta.c.key == "schema_version", meta.c.value == str(found))
                .values(value=str(SCHEMA_VERSION))
            )
        found = SCHEMA_VERSION
    if found is not None and found > SCHEMA_VERSION:
        raise ConfigError(
            f"the database queue schema is version {found}, newer than this tq "
            f"(version {SCHEMA_VERSION}); upgrade tq"
        )


_DDL_HEAD = """\
-- tq database queue: tables for {db} (schema version {v}).
-- The same schema as tq.dbqueue.create_schema(engine) makes; generated by
--   python -m tq.dbqueue ddl {dialect} > deploy/sql/dbqueue-{file}.sql
-- Apply it with
--   {apply}
-- Times are integer microseconds since the Unix epoch (UTC), written by the
-- application's clock, never the database's.{extra}
"""


def schema_sql(dialect: str) -> str:
    """The schema as idempotent DDL for "postgresql", "sqlite" or "mysql" (MySQL /
    MariaDB; deploy/sql/ holds them)."""
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.schema import CreateIndex, CreateTable

    if dialect == "postgresql":
        d: sa.Dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
        head = {"db": "PostgreSQL", "file": "postgres", "extra": "",
                "apply": 'psql "$DATABASE_URL" -f deploy/sql/dbqueue-postgres.sql'}  # fmt: skip
        version = (
            "INSERT INTO tq_dbqueue_meta (key, value) VALUES ('schema_version', '{v}')\n"
            "  ON CONFLICT (key) DO NOTHING;\n"
        )
    elif dialect == "sqlite":
        d = sqlite.dialect()
        head = {"db": "SQLite", "file": "sqlite",
                "apply": "sqlite3 tasks.db < deploy/sql/dbqueue-sqlite.sql",
                "extra": "\n-- Run the database in WAL mode (tq.dbqueue.sqlite_engine does):\n"
                         "--   PRAGMA journal_mode=WAL;"}  # fmt: skip
        version = (
            'INSERT OR IGNORE INTO tq_dbqueue_meta ("key", value) '
            "VALUES ('schema_version', '{v}');\n"
        )
    elif dialect == "mysql":
        d = mysql.dialect()
        head = {"db": "MySQL / MariaDB (10.6 or later)", "file": "mysql",
                "apply": 'mariadb "$DATABASE" < deploy/sql/dbqueue-mysql.sql',
                "extra": "\n-- Run tq's transactions READ COMMITTED "
                         "(tq.dbqueue.mysql_engine does)."}  # fmt: skip
        version = (
            "INSERT IGNORE INTO tq_dbqueue_meta (`key`, value) VALUES ('schema_version', '{v}');\n"
        )
    else:
        raise ConfigError(f"no DDL for {dialect!r}: use 'postgresql', 'sqlite' or 'mysql'")
    out = [_DDL_HEAD.format(v=SCHEMA_VERSION, dialect=dialect, **head)]
    for t in metadata.sorted_tables:
        ddl = str(CreateTable(t, if_not_exists=True).compile(dialect=d)).strip()
        out.append("\n".join(line.rstrip().replace("\t", "  ") for line in ddl.splitlines()) + ";")
        for i in sorted(t.indexes, key=lambda i: str(i.name)):
            out.append(str(CreateIndex(i, if_not_exists=True).compile(dialect=d)) + ";")
        if t is tasks:
            out.append("-- Replaced in version 5 (an older database drops them):")
            on = " ON tq_tasks" if dialect == "mysql" else ""
            out.extend(f"DROP INDEX IF EXISTS {old}{on};" for old in _REPLACED_INDEXES)
        out.append("")
    out.append(version.format(v=SCHEMA_VERSION))
    return "\n".join(out)


def _add_missing_columns(engine: sa.Engine) -> None:
    """Adds the columns and indexes of this version that an older schema lacks."""
    from sqlalchemy.schema import CreateColumn

    insp = sa.inspect(engine)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in insp.get_columns(table.name)}
        indexes = {i["name"] for i in insp.get_indexes(table.name)}
        for col in table.columns:
            if col.name in have:
                continue
            spec = CreateColumn(col).compile(dialect=engine.dialect)
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {spec}")
            except sa.exc.DBAPIError:  # another process added it first
                if col.name not in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}:
                    raise
        for index in table.indexes:
            if index.name not in indexes:
                try:
                    index.create(engine, checkfirst=True)
                except sa.exc.DBAPIError:  # another process created it first
                    if index.name not in _index_names(engine, table.name):
                        raise


def _index_names(engine: sa.Engine, table: str) -> set[str]:
    return {str(i["name"]) for i in sa.inspect(engine).get_indexes(table)}


def _is_mysql(engine: sa.Engine) -> bool:
    return engine.dialect.name in ("mysql", "mariadb")


def _rename_replaced_indexes(engine: sa.Engine) -> None:
    """MySQL / MariaDB (no partial indexes): renames the replaced indexes, which
    have the columns of their replacements, rather than building those anew."""
    if not _is_mysql(engine):
        return
    for old, new in _REPLACED_INDEXES.items():
        have = _index_names(engine, tasks.name)
        if old not in have or new in have:
            continue
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE {tasks.name} RENAME INDEX {old} TO {new}")
        except sa.exc.DBAPIError:  # another process renamed it first
            if new not in _index_names(engine, tasks.name):
                raise


def _drop_replaced_indexes(engine: sa.Engine) -> None:
    """Drops the indexes that version 5's replaced (once their replacements exist)."""
    for old, new in _REPLACED_INDEXES.items():
        have = _index_names(engine, tasks.name)
        if old not in have or new not in have:
            continue
        if _is_mysql(engine):
            drop = f"ALTER TABLE {tasks.name} DROP INDEX {old}"
        else:
            drop = f"DROP INDEX IF EXISTS {old}"
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(drop)
        except sa.exc.DBAPIError:  # another process dropped it first
            if old in _index_names(engine, tasks.name):
                raise


def schema_version(engine: sa.Engine) -> int | None:
    """The recorded schema version, or None if the schema was never created."""
    if not sa.inspect(engine).has_table(meta.name):
        return None
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(meta.c.value).where(meta.c.key == "schema_version")
        ).scalar_one_or_none()
    return None if found is None else int(found)
