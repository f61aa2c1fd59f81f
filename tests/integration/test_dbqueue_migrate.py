"""Schema 3 to 4 on SQLite, PostgreSQL and MariaDB: `create_schema` adds the new
columns and indexes to existing tables, and the tasks already there keep working."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from tests._dbengines import any_engine_fixture  # noqa: F401
from tests._dbqueue import clock_fixture, submission  # noqa: F401
from tq import dbqueue
from tq.dbqueue._schema import meta
from tqtesting import FakeClock

NEW_COLUMNS = {
    "tq_tasks": ["priority", "rank_us", "tag", "progress", "result", "failure"],
    "tq_recurring": ["max_pending"],
}
NEW_INDEXES = ["ix_tq_tasks_priority", "ix_tq_tasks_tag"]


def downgrade_to_version_3(engine: sa.Engine) -> None:
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

    assert dbqueue.schema_version(engine) == dbqueue.SCHEMA_VERSION == 4
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
