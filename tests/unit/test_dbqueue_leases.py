"""Leases on SQLite: exclusive while held, returned when expired (a dead or stuck worker),
several workers and writers at once, and the background loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import pathlib
import signal
import sys
import threading
from typing import Any

import pytest
import sqlalchemy as sa

import tq
from tests import _dbqueue_apps
from tests._dbqueue import (
    RecordingApp,
    clock_fixture,  # noqa: F401
    fidelity_engine_fixture,  # noqa: F401
    only_sqlite,
    submission,
    submitter_fixture,  # noqa: F401
    task_state,
    wait_for,
)
from tq import dbqueue
from tq.dbqueue import State
from tqtesting import FakeClock

ROOT = pathlib.Path(__file__).resolve().parents[2]
Sub = dbqueue.DbQueueSubmitter
LEASE = dbqueue.DEFAULT_DISPATCH_DEADLINE + dt.timedelta(seconds=30)  # deadline + grace


async def test_a_held_lease_is_exclusive_until_it_expires(
    engine: sa.Engine, submitter: Sub, clock: FakeClock
) -> None:
    submitter.submit(submission(name="t1"))
    stuck, other = RecordingApp(), RecordingApp()
    stuck.hold = asyncio.Event()
    async with dbqueue.Worker(engine, app=stuck) as w1, dbqueue.Worker(engine, app=other) as w2:
        first = asyncio.create_task(w1.run_once())
        await stuck.arrived.wait()
        assert await w2.run_once() == 0
        clock.advance(LEASE - dt.timedelta(microseconds=1))
        assert await w2.run_once() == 0  # still within the lease
        clock.advance(dt.timedelta(microseconds=1))
        await w2.run_once()  # reclaims: retried after the first backoff (0.1 s)
        clock.advance(1)
        assert await w2.run_once() == 1
        (push,) = other.pushes
        assert push.retry_count == 1
        assert push.headers["x-cloudtasks-taskretryreason"].startswith("lease expired")
        stuck.hold.set()  # the first worker answers at last: too late to count
        await first
    info = task_state(engine, "t1")
    assert (info.state, info.attempts, info.executions) == (State.DONE, 2, 1)
    assert info.lease_owner is None


async def test_an_expired_lease_counts_against_max_attempts(
    engine: sa.Engine, submitter: Sub, clock: FakeClock
) -> None:
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("q", max_attempts=1)])
    submitter.submit(submission(name="t1"))
    stuck = RecordingApp()
    stuck.hold = asyncio.Event()
    async with dbqueue.Worker(engine, app=stuck) as w1, dbqueue.Worker(engine) as w2:
        first = asyncio.create_task(w1.run_once())
        await stuck.arrived.wait()
        clock.advance(LEASE)
        assert await w2.run_once() == 0
        stuck.hold.set()
        await first
    assert task_state(engine, "t1").state is State.FAILED


async def test_several_workers_push_each_task_once(engine: sa.Engine, submitter: Sub) -> None:
    names = [f"t{i}" for i in range(300)]
    for n in names:
        submitter.submit(submission(name=n))
    app = RecordingApp()
    workers = [dbqueue.Worker(engine, app=app, concurrency=8, batch_size=8) for _ in range(4)]
    for w in workers:
        await w.start()
    admin = dbqueue.Admin(engine)
    try:
        await wait_for(lambda: admin.count_tasks(state=State.DONE) == len(names), 60)
    finally:
        for w in workers:
            await w.aclose()
    assert sorted(app.names()) == sorted(names)  # each exactly once
    assert sum(w.delivered for w in workers) == len(names)
    assert all(w.delivered > 0 for w in workers)


async def test_concurrent_writers_and_workers_lose_nothing(engine: sa.Engine) -> None:
    app = RecordingApp()
    errors: list[BaseException] = []

    def write(prefix: str) -> None:
        sub = dbqueue.DbQueueSubmitter(engine)  # one per thread, like separate requests
        try:
            for i in range(50):
                sub.submit(submission(name=f"{prefix}-{i}", queue=f"q{i % 3}"))
        except BaseException as e:
            errors.append(e)

    workers = [dbqueue.Worker(engine, app=app, concurrency=4) for _ in range(2)]
    for w in workers:
        await w.start()
    threads = [threading.Thread(target=write, args=(f"w{k}",)) for k in range(4)]
    try:
        for t in threads:
            t.start()
        await asyncio.to_thread(lambda: [t.join() for t in threads])
        assert errors == []
        admin = dbqueue.Admin(engine)
        await wait_for(lambda: admin.count_tasks(state=State.DONE) == 200, 60)
    finally:
        for w in workers:
            await w.aclose()
    assert len(app.names()) == len(set(app.names())) == 200


async def test_a_background_worker_wakes_up_for_a_new_task(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = RecordingApp()
    # A long poll interval: only the wakeup can bring the task in time.
    worker = dbqueue.Worker(engine, app=app, poll_interval=3600)
    waiting = asyncio.Event()
    idle = worker._idle

    async def idle_and_say_so(*args: Any, **kwargs: Any) -> None:
        waiting.set()
        await idle(*args, **kwargs)

    monkeypatch.setattr(worker, "_idle", idle_and_say_so)
    await worker.start()
    try:
        # The first round found nothing and the worker waits for an hour:
        # a task now arrives in time only if its commit wakes the worker.
        await asyncio.wait_for(waiting.wait(), 30)
        dbqueue.DbQueueSubmitter(engine).submit(submission(name="now"))
        await asyncio.wait_for(app.arrived.wait(), 30)
    finally:
        await worker.aclose()
    assert app.names() == ["now"]


async def test_stop_waits_for_pushes_in_flight(engine: sa.Engine, submitter: Sub) -> None:
    submitter.submit(submission(name="t1"))
    app = RecordingApp()
    app.hold = asyncio.Event()
    worker = dbqueue.Worker(engine, app=app)
    await worker.start()
    await asyncio.wait_for(app.arrived.wait(), 30)
    stopping = asyncio.create_task(worker.aclose())
    await asyncio.sleep(0.01)
    assert not stopping.done()
    app.hold.set()
    await stopping
    assert task_state(engine, "t1").state is State.DONE


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
async def test_a_killed_worker_process_task_is_redelivered_after_its_lease(
    engine: sa.Engine, submitter: Sub, tmp_path: pathlib.Path
) -> None:
    only_sqlite(
        engine, "the worker process opens the SQLite file (test_dbqueue_postgres covers servers)"
    )
    submitter.submit(submission(name="doomed"))
    marks = str(tmp_path / "pushes")
    env = {**os.environ, "TQ_TEST_PUSHES": marks, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tq.dbqueue", "--db", str(engine.url.database), "worker",
        "--app", "tests._dbqueue_apps:hanging",
        cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_for(lambda: bool(_dbqueue_apps.pushes(marks)), 60)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        _, err = await proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err
    ((_, dead_pid),) = _dbqueue_apps.pushes(marks)
    assert dead_pid == proc.pid
    info = task_state(engine, "doomed")
    assert info.state is State.LEASED
    assert info.lease_expires is not None

    app = RecordingApp()
    fake = FakeClock(info.lease_expires - dt.timedelta(seconds=1))
    with tq.clock.use_clock(fake):
        async with dbqueue.Worker(engine, app=app) as w:
            assert await w.run_once() == 0  # the dead worker's lease still holds
            fake.advance(2)
            await w.run_once()  # reclaimed
            fake.advance(1)
            assert await w.run_once() == 1
    (push,) = app.pushes
    assert (push.task, push.retry_count, push.execution_count) == ("doomed", 1, 0)
    assert task_state(engine, "doomed").state is State.DONE


async def test_cancelling_a_worker_leaves_its_leases_to_expire(
    engine: sa.Engine, submitter: Sub, clock: FakeClock
) -> None:
    submitter.submit(submission(name="t1"))
    app = RecordingApp()
    app.hold = asyncio.Event()
    worker = dbqueue.Worker(engine, app=app)
    async with worker:
        run = asyncio.create_task(worker.run())
        await asyncio.wait_for(app.arrived.wait(), 30)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    assert task_state(engine, "t1").state is State.LEASED
    clock.advance(LEASE + dt.timedelta(seconds=1))
    async with dbqueue.Worker(engine, app=RecordingApp()) as w:
        await w.run_once()
    assert task_state(engine, "t1").state is State.PENDING


def test_run_workers_runs_until_stopped(engine: sa.Engine, submitter: Sub) -> None:
    app = RecordingApp()
    for i in range(5):
        submitter.submit(submission(name=f"t{i}"))

    async def main() -> None:
        stop = asyncio.Event()
        admin = dbqueue.Admin(engine)
        runner = asyncio.create_task(dbqueue.run_workers(engine, count=2, stop=stop, app=app))
        await wait_for(lambda: admin.count_tasks(state=State.DONE) == 5, 30)
        stop.set()
        await runner

    asyncio.run(main())
    assert sorted(app.names()) == [f"t{i}" for i in range(5)]


WRITER = """
import sys
from tq import dbqueue
from tests._dbqueue import submission
engine = dbqueue.sqlite_engine(sys.argv[1])
sub = dbqueue.DbQueueSubmitter(engine)
for i in range(int(sys.argv[3])):
    sub.submit(submission(name=f"{sys.argv[2]}-{i}"))
engine.dispose()
"""


async def test_writer_processes_and_a_worker_share_a_sqlite_file(engine: sa.Engine) -> None:
    only_sqlite(engine, "writers share a SQLite file")
    app = RecordingApp()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = dbqueue.Worker(engine, app=app, concurrency=8)
    await worker.start()
    try:
        writers = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", WRITER, str(engine.url.database), f"p{k}", "100",
                cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE,
            )
            for k in range(3)
        ]  # fmt: skip
        errs = [(await w.communicate())[1] for w in writers]
        assert [w.returncode for w in writers] == [0, 0, 0], errs
        admin = dbqueue.Admin(engine)
        await wait_for(lambda: admin.count_tasks(state=State.DONE) == 300, 60)
    finally:
        await worker.aclose()
    assert sorted(app.names()) == sorted(f"p{k}-{i}" for k in range(3) for i in range(100))
