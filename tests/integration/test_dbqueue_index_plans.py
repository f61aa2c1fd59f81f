"""The queries meant for the partial lease and finished indexes can use them.

Each query is captured as the queue runs it, then explained: on SQLite as it
is, on PostgreSQL as a prepared statement's generic plan (what psycopg's
prepared statements get after a few runs, whose parameters the planner
cannot see), with sequential scans priced out so that the plan names the
index exactly when the query implies the index's predicate.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests._dbengines import engine_of
from tests._dbqueue import clock_fixture, submission  # noqa: F401
from tq import dbqueue
from tq.dbqueue._reclaim import reclaim_expired
from tq.dbqueue._schema import to_us
from tq.dbqueue._stats import history
from tqtesting import FakeClock


@pytest.fixture(
    name="engine",
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ],
)
def partial_index_engine_fixture(
    request: pytest.FixtureRequest, tmp_path: Any
) -> Iterator[sa.Engine]:
    """A database queue on each database with partial indexes."""
    e = engine_of(request.param, request, tmp_path)
    dbqueue.create_schema(e)
    yield e
    e.dispose()


def captured(engine: sa.Engine, run: Callable[[], object], marker: str) -> tuple[str, Any]:
    """The first statement `run` sends that contains `marker`, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def listen(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if marker in statement:
            seen.append((statement, params))

    sa.event.listen(engine, "before_cursor_execute", listen)
    try:
        run()
    finally:
        sa.event.remove(engine, "before_cursor_execute", listen)
    assert seen, f"no statement with {marker!r}"
    return seen[0]


def plan(engine: sa.Engine, statement: str, params: Any, index: str) -> str:
    """The plan of the statement; on PostgreSQL with `index` the only index left on
    tq_tasks but its keys (dropped in a transaction rolled back), so that the plan
    shows whether the index can serve it rather than which one an empty table
    favours."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", tuple(params))
            return "\n".join(str(r[-1]) for r in rows)
        names: list[str] = []

        def number(m: re.Match[str]) -> str:
            if m.group(1) not in names:
                names.append(m.group(1))
            return f"${names.index(m.group(1)) + 1}"

        numbered = re.sub(r"%\((\w+)\)s", number, statement)
        args = ", ".join(
            str(params[n]) if isinstance(params[n], int) else f"'{params[n]}'" for n in names
        )
        for other in sa.inspect(engine).get_indexes("tq_tasks"):
            if other["name"] != index and not other.get("unique"):
                conn.exec_driver_sql(f"DROP INDEX {other['name']}")
        conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        conn.exec_driver_sql(f"PREPARE explained AS {numbered}")
        rows = conn.exec_driver_sql(f"EXPLAIN EXECUTE explained ({args})")
        text = "\n".join(str(r[0]) for r in rows)
        conn.exec_driver_sql("DEALLOCATE explained")
        conn.rollback()
        return text


def test_the_reclaim_of_expired_leases_uses_the_lease_index(
    engine: sa.Engine, clock: FakeClock
) -> None:
    now = to_us(clock.now())
    statement, params = captured(
        engine, lambda: reclaim_expired(engine, now_us=now), "lease_expires_us <="
    )
    assert "ix_tq_tasks_leased" in plan(engine, statement, params, "ix_tq_tasks_leased")


def test_retention_uses_the_finished_index(engine: sa.Engine, clock: FakeClock) -> None:
    admin = dbqueue.Admin(engine)
    statement, params = captured(
        engine, lambda: admin.delete_finished(dt.timedelta(days=1)), "finished_us <="
    )
    assert "ix_tq_tasks_finished_us" in plan(engine, statement, params, "ix_tq_tasks_finished_us")


def test_the_history_of_finished_tasks_uses_the_finished_index(
    engine: sa.Engine, clock: FakeClock
) -> None:
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("q", pull=True)])
    dbqueue.DbQueueSubmitter(engine).submit(submission())
    statement, params = captured(engine, lambda: history(engine), "finished_us >")
    assert "ix_tq_tasks_finished_us" in plan(engine, statement, params, "ix_tq_tasks_finished_us")
