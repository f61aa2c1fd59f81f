"""The worker's lease rounds: limits over racing workers, priorities, lost connections.

On PostgreSQL the worker takes its own path (`tq.dbqueue._lease_pg`: a
round in few round trips); these hold it to the semantics of the others.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa

from tests._dbengines import any_engine_fixture  # noqa: F401
from tests._dbqueue import RecordingApp, submission, wait_for
from tq import dbqueue
from tq._task import PRIORITY_HEADER


class CountingApp(RecordingApp):
    """Records pushes and the most that were in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.peak = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            for _ in range(5):  # let the other workers lease meanwhile
                await asyncio.sleep(0)
            await super().__call__(scope, receive, send)
        finally:
            self.in_flight -= 1


async def test_racing_workers_never_exceed_max_concurrent(engine: sa.Engine) -> None:
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("q", max_concurrent=3, rate_per_s=1e6)])
    sub = dbqueue.DbQueueSubmitter(engine)
    names = [f"t{i}" for i in range(60)]
    for n in names:
        sub.submit(submission(name=n))
    app = CountingApp()
    workers = [dbqueue.Worker(engine, app=app, concurrency=4, batch_size=4) for _ in range(4)]
    for w in workers:
        await w.start()
    try:
        await wait_for(lambda: len(app.pushes) >= len(names), timeout_s=120)
    finally:
        for w in workers:
            await w.aclose()
    assert sorted(p.task.rsplit("/", 1)[-1] for p in app.pushes) == sorted(names)
    assert app.peak <= 3


async def test_a_worker_pushes_higher_priorities_first(engine: sa.Engine) -> None:
    sub = dbqueue.DbQueueSubmitter(engine)
    for n in ("low1", "low2"):
        sub.submit(submission(name=n))
    sub.submit(
        submission(name="high", headers={"Content-Type": "text/plain", PRIORITY_HEADER: "5"})
    )
    app = RecordingApp()
    async with dbqueue.Worker(engine, app=app, concurrency=1, batch_size=1) as w:
        assert await w.run_until_idle() == 3
    assert [p.task.rsplit("/", 1)[-1] for p in app.pushes] == ["high", "low1", "low2"]


@pytest.mark.postgres
async def test_a_worker_goes_on_after_its_connections_were_killed(
    postgres_db_url: str,
) -> None:
    engine = sa.create_engine(postgres_db_url, pool_size=5)
    dbqueue.create_schema(engine)
    writer = sa.create_engine(postgres_db_url, pool_pre_ping=True)  # survives the killing
    sub = dbqueue.DbQueueSubmitter(writer)
    app = RecordingApp()
    worker = dbqueue.Worker(engine, app=app, poll_interval=0.05)
    try:
        sub.submit(submission(name="before"))
        await worker.start()
        await wait_for(lambda: _state(writer, "before") is dbqueue.State.DONE, 60)
        with engine.connect() as conn:  # every other connection of this database
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        sub.submit(submission(name="after"))
        await wait_for(lambda: _state(writer, "after") is dbqueue.State.DONE, 60)
    finally:
        await worker.aclose()
        engine.dispose()
        writer.dispose()
    assert [p.task.rsplit("/", 1)[-1] for p in app.pushes] == ["before", "after"]


@pytest.mark.postgres
async def test_a_worker_whose_engine_url_cannot_connect_goes_through_the_engine(
    postgres_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    real = postgres_db_url.replace("postgresql+psycopg://", "postgresql://", 1)
    # The URL names a closed port; the engine connects through its creator.
    engine = sa.create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:9/none", creator=lambda: psycopg.connect(real)
    )
    dbqueue.create_schema(engine)
    sub = dbqueue.DbQueueSubmitter(engine)
    for n in ("a", "b"):
        sub.submit(submission(name=n))
    app = RecordingApp()
    try:
        async with dbqueue.Worker(engine, app=app, listen=False) as w:
            assert await w.run_until_idle() == 2
    finally:
        engine.dispose()
    assert sorted(p.task.rsplit("/", 1)[-1] for p in app.pushes) == ["a", "b"]
    assert "cannot connect to PostgreSQL from the engine's URL alone" in caplog.text


@pytest.mark.postgres
def test_a_worker_stepped_from_two_event_loops_delivers_in_each(postgres_db_url: str) -> None:
    engine = sa.create_engine(postgres_db_url)
    dbqueue.create_schema(engine)
    sub = dbqueue.DbQueueSubmitter(engine)
    app = RecordingApp()
    worker = dbqueue.Worker(engine, app=app, listen=False)
    try:
        for n in ("first", "second"):
            sub.submit(submission(name=n))
            assert asyncio.run(worker.run_once()) == 1  # a new event loop each time
    finally:
        asyncio.run(worker.aclose())
        engine.dispose()
    assert [p.task.rsplit("/", 1)[-1] for p in app.pushes] == ["first", "second"]


def _state(engine: sa.Engine, name: str) -> dbqueue.State | None:
    """The state of task `name` of queue q (None before it exists)."""
    task = dbqueue.Admin(engine).get_task("q", name)
    return None if task is None else task.state
