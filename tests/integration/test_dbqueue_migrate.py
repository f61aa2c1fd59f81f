"""Older schemas on SQLite, PostgreSQL and MariaDB: `create_schema` brings them to
this version, and the tasks already there keep working.

3 to 4 adds columns and indexes to existing tables; 4 to 5 replaces the lease
and finished indexes with partial ones (renamed full ones on MariaDB)."""

from __future__ import annotations

import datetime as dt
import threading

import sqlalchemy as sa

from tests._dbengines import any_engine_fixture  # noqa: F401
from tests._dbqueue import clock_fixture, submission  # noqa: F401
from tq import dbqueue
from tq.dbqueue._reclaim import reclaim_expired
from tq.dbqueue._schema import meta, to_us
from tqtesting import FakeClock

NEW_COLUMNS = {
    "tq_tasks": ["priority", "rank_us", "tag", "progress", "result", "failure"],
    "tq_recurring": ["max_pending"],
}
NEW_INDEXES = ["ix_tq_tasks_priority", "ix_tq_tasks_tag"]
# Version 4's full indexes, and the partial ones of version 5 that replace them.
VERSION_4_INDEXES = {
    "ix_tq_tasks_lease": ("state, lease_expires_us", "ix_tq_tasks_leased"),
    "ix_tq_tasks_finished": ("finished_us", "ix_tq_tasks_finished_us"),
}


def index_names(engine: sa.Engine) -> set[str]:
    return {str(i["name"]) for i in sa.inspect(engine).get_indexes("tq_tasks")}


def index_sql(engine: sa.Engine, name: str) -> str:
    """The index's definition as the database reports it, without casts and parentheses."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            q = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :n"
        else:
            q = "SELECT indexdef FROM pg_indexes WHERE indexname = :n"
        sql = str(conn.execute(sa.text(q), {"n": name}).scalar_one())
    return sql.replace("::text", "").replace("(", "").replace(")", "")


def downgrade_to_version_4(engine: sa.Engine) -> None:
    on = "" if engine.dialect.name != "mysql" else " ON tq_tasks"
    with engine.begin() as conn:
        for old, (columns, new) in VERSION_4_INDEXES.items():
            conn.exec_driver_sql(f"DROP INDEX {new}{on}")
            conn.exec_driver_sql(f"CREATE INDEX {old} ON tq_tasks ({columns})")
        conn.execute(sa.update(meta).values(value="4"))


def downgrade_to_version_3(engine: sa.Engine) -> None:
    downgrade_to_version_4(engine)
    with engine.begin() as conn:
        for index in NEW_INDEXES:
            on = "" if engine.dialect.name != "mysql" else " ON tq_tasks"
            conn.exec_driver_sql(f"DROP INDEX {index}{on}")
        for table, columns in NEW_COLUMNS.items():
            for column in columns:
                conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute(sa.update(meta).values(value="3"))


def test_a_version_3_queue_gains_the_new_columns_and_keeps_its_tasks(
    engine: sa.Engine, clock: FakeClock
) -> None:
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("q", pull=True)])
    dbqueue.DbQueueSubmitter(engine).submit(submission(name="old"))
    downgrade_to_version_3(engine)
    assert "priority" not in {c["name"] for c in sa.inspect(engine).get_columns("tq_tasks")}

    dbqueue.create_schema(engine)
    dbqueue.create_schema(engine)  # idempotent

    assert dbqueue.schema_version(engine) == dbqueue.SCHEMA_VERSION == 5
    insp = sa.inspect(engine)
    for table, columns in NEW_COLUMNS.items():
        assert set(columns) <= {c["name"] for c in insp.get_columns(table)}
    assert set(NEW_INDEXES) <= {i["name"] for i in insp.get_indexes("tq_tasks")}
    puller = dbqueue.PullQueue(engine, "q")
    (t,) = puller.lease(duration=dt.timedelta(minutes=1))
    assert (t.name, t.priority, t.tag) == ("old", 0, None)
    assert puller.complete(t, result=b"fine")
    info = dbqueue.Admin(engine).get_task("q", "old")
    assert info is not None
    assert info.result == b"fine"


def test_a_version_4_queue_gets_the_partial_indexes_and_keeps_its_tasks(
    engine: sa.Engine, clock: FakeClock
) -> None:
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("q", pull=True)])
    submitter = dbqueue.DbQueueSubmitter(engine)
    for _ in range(2):  # generated names: no tombstone keeps the finished row
        submitter.submit(submission())
    puller = dbqueue.PullQueue(engine, "q")
    leased, finished = puller.lease(duration=dt.timedelta(minutes=1), max_tasks=2)
    assert puller.complete(finished)
    downgrade_to_version_4(engine)
    assert set(VERSION_4_INDEXES) <= index_names(engine)

    dbqueue.create_schema(engine)
    dbqueue.create_schema(engine)  # idempotent

    assert dbqueue.schema_version(engine) == dbqueue.SCHEMA_VERSION == 5
    have = index_names(engine)
    assert not set(VERSION_4_INDEXES) & have
    assert {new for _, new in VERSION_4_INDEXES.values()} <= have
    # The old rows are in the new indexes: the expired lease is reclaimed, and
    # retention drops the finished task.
    clock.advance(dt.timedelta(minutes=5))
    assert reclaim_expired(engine, now_us=to_us(clock.now())) == 1
    assert dbqueue.Admin(engine).delete_finished(dt.timedelta(minutes=1)) == 1
    assert dbqueue.Admin(engine).get_task("q", finished.name) is None
    info = dbqueue.Admin(engine).get_task("q", leased.name)
    assert info is not None
    assert info.state == "pending"


def test_the_lease_and_finished_indexes_are_partial_where_the_database_has_them(
    engine: sa.Engine,
) -> None:
    if engine.dialect.name == "mysql":  # no partial indexes: full ones, of the same columns
        columns = {
            str(i["name"]): i["column_names"] for i in sa.inspect(engine).get_indexes("tq_tasks")
        }
        assert columns["ix_tq_tasks_leased"] == ["state", "lease_expires_us"]
        assert columns["ix_tq_tasks_finished_us"] == ["finished_us"]
        return
    assert "WHERE state = 'leased'" in index_sql(engine, "ix_tq_tasks_leased")
    assert "WHERE finished_us IS NOT NULL" in index_sql(engine, "ix_tq_tasks_finished_us")


def test_two_processes_migrating_version_4_at_once_both_succeed(engine: sa.Engine) -> None:
    downgrade_to_version_4(engine)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def migrate() -> None:
        start.wait()
        try:
            dbqueue.create_schema(engine)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=migrate) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert dbqueue.schema_version(engine) == dbqueue.SCHEMA_VERSION
    assert not set(VERSION_4_INDEXES) & index_names(engine)
