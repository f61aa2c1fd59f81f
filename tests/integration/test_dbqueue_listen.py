"""Workers wake when another process commits a task: LISTEN/NOTIFY on PostgreSQL, inotify on SQLite.

The worker polls only once an hour here, so a task committed by a child
process reaches it within the test's wait only if the database told it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

import tq
from tests._dbengines import engine_of
from tests._dbqueue import RecordingApp, submission, wait_for
from tq import dbqueue

PRODUCER = """
import sys
import sqlalchemy as sa
from tq import dbqueue
from tests._dbqueue import submission
engine = sa.create_engine(sys.argv[1])
dbqueue.DbQueueSubmitter(engine).submit(submission(name="from-afar"))
engine.dispose()
"""


@pytest.fixture(
    params=[pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]
)
def engine(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[sa.Engine]:
    e = engine_of(request.param, request, tmp_path)  # type: ignore[arg-type]
    dbqueue.create_schema(e)
    yield e
    e.dispose()


async def test_a_task_committed_by_another_process_wakes_an_idle_worker(
    engine: sa.Engine,
) -> None:
    if sys.platform != "linux" and engine.dialect.name == "sqlite":
        pytest.skip("inotify is Linux's")
    app = RecordingApp()
    here = dbqueue.DbQueueSubmitter(engine)
    async with dbqueue.Worker(engine, app=app, poll_interval=3600) as worker:
        await worker.start()
        listener = worker._listener
        assert listener is not None
        await wait_for(lambda: listener.active, 60)
        here.submit(submission(name="warm-up"))  # wakes it in-process; then it idles again
        await wait_for(lambda: app.names() == ["warm-up"], 60)
        url = engine.url.render_as_string(hide_password=False)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PRODUCER, url, env={**os.environ, "PYTHONPATH": os.getcwd()}
        )
        assert await child.wait() == 0
        await wait_for(lambda: app.names() == ["warm-up", "from-afar"], 60)
    assert tq.clock.now()  # the worker closed cleanly


@pytest.mark.postgres
async def test_a_worker_serving_other_queues_is_not_woken_on_postgres(
    request: pytest.FixtureRequest, tmp_path: object
) -> None:
    from tq.dbqueue._listen import Listener

    e = engine_of("postgres", request, tmp_path)  # type: ignore[arg-type]
    try:
        dbqueue.create_schema(e)
        told: list[str] = []
        listener = Listener(e, told.append, ["mail"])
        await listener.start()
        await wait_for(lambda: listener.active, 60)
        dbqueue.DbQueueSubmitter(e).submit(submission(queue="other", name="x"))
        dbqueue.DbQueueSubmitter(e).submit(submission(queue="mail", name="y"))
        await wait_for(lambda: "mail" in told, 60)
        assert told == ["", "mail"]  # notifications come in commit order: "other" was dropped
        await listener.aclose()
    finally:
        e.dispose()
