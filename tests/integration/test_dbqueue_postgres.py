"""The database queue on real database servers, PostgreSQL and MariaDB: names,
transactional add_task, SKIP LOCKED leasing with many workers and worker
processes, a killed worker's lease, and limits shared by every worker; and
PostgreSQL's shipped DDL."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import pathlib
import signal
import sys
from collections.abc import Iterator

import grpc
import psycopg
import pytest
import sqlalchemy as sa

import tq
import tq.txn.sql
from tests import _dbqueue_apps
from tests._dbqueue import RecordingApp, submission, task_state, wait_for
from tests.testpb import payloads_pb2 as pb
from tests.unit.test_dbqueue_schema import describe
from tq import dbqueue
from tq.dbqueue import State
from tqtesting import FakeClock

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(
    params=[
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def db_url(request: pytest.FixtureRequest) -> str:
    """A new database on a server: PostgreSQL or MariaDB."""
    url: str = request.getfixturevalue(f"{request.param}_db_url")
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    if db_url.startswith("mysql"):
        e = dbqueue.mysql_engine(db_url, pool_size=20)
    else:
        e = sa.create_engine(db_url, pool_size=20)
    dbqueue.create_schema(e)
    yield e
    e.dispose()


@pytest.fixture
def submitter(engine: sa.Engine) -> dbqueue.DbQueueSubmitter:
    return dbqueue.DbQueueSubmitter(engine)


@pytest.mark.postgres
def test_shipped_postgres_ddl_matches_create_schema(
    postgres_url: str, postgres_db_url: str
) -> None:
    engine = sa.create_engine(postgres_db_url)
    dbqueue.create_schema(engine)
    name = postgres_db_url.rsplit("/", 1)[1] + "_ddl"
    admin_url = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        ddl = (ROOT / "deploy/sql/dbqueue-postgres.sql").read_text()
        url = admin_url.rsplit("/", 1)[0] + "/" + name
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(ddl)
            conn.execute(ddl)  # idempotent
        from_ddl = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            assert describe(from_ddl) == describe(engine)
            assert dbqueue.schema_version(from_ddl) == dbqueue.SCHEMA_VERSION
        finally:
            from_ddl.dispose()
    finally:
        engine.dispose()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_names_are_deduplicated_within_the_tombstone_window(engine: sa.Engine) -> None:
    clock = FakeClock()
    with tq.clock.use_clock(clock):
        sub = dbqueue.DbQueueSubmitter(engine, tombstone_window=dt.timedelta(minutes=10))
        sub.submit(submission(name="n"))
        with pytest.raises(tq.SubmitError) as e:
            sub.submit(submission(name="n"))
        assert e.value.code == grpc.StatusCode.ALREADY_EXISTS
        dbqueue.Admin(engine).delete_task("q", "n")
        clock.advance(dt.timedelta(minutes=10))
        sub.submit(submission(name="n"))
        assert task_state(engine, "n").state is State.PENDING


def test_a_taken_name_does_not_abort_the_callers_transaction(engine: sa.Engine) -> None:
    clock = FakeClock()
    with tq.clock.use_clock(clock):
        sub = dbqueue.DbQueueSubmitter(engine, tombstone_window=dt.timedelta(minutes=10))
        sub.submit(submission(name="live"))
        sub.submit(submission(name="old"))
        dbqueue.Admin(engine).delete_task("q", "old")
        clock.advance(dt.timedelta(minutes=10))
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE business (n integer)")
            with pytest.raises(tq.SubmitError) as e:
                sub.write_in_transaction(conn, submission(name="live"))
            assert e.value.code == grpc.StatusCode.ALREADY_EXISTS
            sub.write_in_transaction(conn, submission(name="old", body=b"new"))
            conn.exec_driver_sql("INSERT INTO business VALUES (1)")  # not aborted
        assert task_state(engine, "old").state is State.PENDING
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM business").scalar_one() == 1
            assert conn.exec_driver_sql("SELECT count(*) FROM tq_tasks").scalar_one() == 2


def test_transactional_add_task_commits_with_the_callers_transaction(
    engine: sa.Engine, submitter: dbqueue.DbQueueSubmitter
) -> None:
    store = tq.txn.sql.SQLStore(engine, name="dbqueue-pg")
    store.create_schema()
    try:
        disp = tq.Dispatcher(
            cloud_project="p", cloud_region="r", default_target_host="h", submitter=submitter
        )
        disp.register_task_class(
            tq.TaskClass(id="c", prototype=pb.Count, kind=tq.Kind.TRANSACTIONAL, queue="q")
        )
        with tq.txn.sql.transaction(engine):
            disp.add_task(tq.Task(pb.Count(n=1)))
        with pytest.raises(RuntimeError, match="abort"):
            add_then_abort(disp, engine, tq.Task(pb.Count(n=2)))
        admin = dbqueue.Admin(engine)
        assert admin.count_tasks() == 1
        assert store.count_reminders() == (0, 0)
    finally:
        store.close()


def add_then_abort(disp: tq.Dispatcher, engine: sa.Engine, task: tq.Task) -> None:
    with tq.txn.sql.transaction(engine):
        disp.add_task(task)
        raise RuntimeError("abort")


async def test_many_workers_push_each_task_once(
    engine: sa.Engine, submitter: dbqueue.DbQueueSubmitter
) -> None:
    names = [f"t{i}" for i in range(400)]
    for i, n in enumerate(names):
        submitter.submit(submission(name=n, queue=f"q{i % 2}"))
    app = RecordingApp()
    workers = [dbqueue.Worker(engine, app=app, concurrency=8, batch_size=4) for _ in range(6)]
    for w in workers:
        await w.start()
    admin = dbqueue.Admin(engine)
    try:
        await wait_for(lambda: admin.count_tasks(state=State.DONE) == len(names), 120)
    finally:
        for w in workers:
            await w.aclose()
    assert sorted(app.names()) == sorted(names)


async def test_worker_processes_push_each_task_once(
    engine: sa.Engine, db_url: str, tmp_path: pathlib.Path
) -> None:
    marks = str(tmp_path / "pushes")
    env = {**os.environ, "TQ_TEST_PUSHES": marks, "PYTHONPATH": str(ROOT)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tq.dbqueue", "--db", db_url, "worker",
            "--app", "tests._dbqueue_apps:recording", "--poll-interval", "0.02",
            cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]  # fmt: skip
    # A worker stops cleanly on SIGTERM once it serves; before that (still
    # importing) it would just die. Wait until every worker says it serves.
    started = [await _read_until(p, "serving", 120) for p in procs]
    names = [f"t{i}" for i in range(300)]
    sub = dbqueue.DbQueueSubmitter(engine)
    for n in names:
        sub.submit(submission(name=n))
    admin = dbqueue.Admin(engine)
    try:
        await wait_for(lambda: admin.count_tasks(state=State.DONE) == len(names), 120)
        delivered = True
    except AssertionError:
        delivered = False
    for p in procs:
        if p.returncode is None:
            p.send_signal(signal.SIGTERM)
    errs = [
        (head + (await p.communicate())[1].decode(errors="replace"))[-3000:]
        for head, p in zip(started, procs, strict=True)
    ]
    assert delivered, errs
    assert [p.returncode for p in procs] == [0, 0, 0], errs  # SIGTERM: a clean stop
    pushed = _dbqueue_apps.pushes(marks)
    assert sorted(n for n, _ in pushed) == sorted(names)  # each exactly once


async def test_a_killed_worker_process_task_is_redelivered(
    engine: sa.Engine, db_url: str, tmp_path: pathlib.Path
) -> None:
    dbqueue.DbQueueSubmitter(engine).submit(submission(name="doomed"))
    marks = str(tmp_path / "pushes")
    env = {**os.environ, "TQ_TEST_PUSHES": marks, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tq.dbqueue", "--db", db_url, "worker",
        "--app", "tests._dbqueue_apps:hanging",
        cwd=ROOT, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_for(lambda: bool(_dbqueue_apps.pushes(marks)), 60)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.communicate()
    info = task_state(engine, "doomed")
    assert info.state is State.LEASED
    assert info.lease_expires is not None
    clock = FakeClock(info.lease_expires)
    app = RecordingApp()
    with tq.clock.use_clock(clock):
        async with dbqueue.Worker(engine, app=app) as w:
            await w.run_once()  # reclaims the dead worker's lease
            clock.advance(1)
            assert await w.run_once() == 1
    assert [(p.task, p.retry_count) for p in app.pushes] == [("doomed", 1)]


async def test_the_token_bucket_is_shared_by_all_workers(
    engine: sa.Engine, submitter: dbqueue.DbQueueSubmitter
) -> None:
    clock = FakeClock()
    with tq.clock.use_clock(clock):
        dbqueue.apply_queues(engine, [dbqueue.QueueConfig("q", rate_per_s=1, bucket_size=3)])
        for i in range(10):
            submitter.submit(submission(name=f"t{i}"))
        app = RecordingApp()
        async with dbqueue.Worker(engine, app=app) as w1, dbqueue.Worker(engine, app=app) as w2:
            got = await asyncio.gather(w1.run_once(), w2.run_once())
            assert sum(got) == 3
            assert await w2.run_once() == 0
            clock.advance(2)
            assert await w1.run_once() + await w2.run_once() == 2
        (stats,) = dbqueue.Admin(engine).queue_stats("q")
        assert (stats.tasks, stats.done, stats.executed_last_minute) == (5, 5, 5)


async def test_recurring_slots_fire_once_among_racing_workers(engine: sa.Engine) -> None:
    clock = FakeClock()
    disp = tq.Dispatcher(cloud_project="p", cloud_region="r", default_target_host="h")
    disp.register_task_class(
        tq.TaskClass(id="tick", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue="cron")
    )
    app = RecordingApp()
    with tq.clock.use_clock(clock):
        dbqueue.Recurring(engine).put(
            "tick", every=dt.timedelta(minutes=1), dispatcher=disp, task=tq.Task(pb.Count())
        )
        workers = [dbqueue.Worker(engine, app=app) for _ in range(4)]
        for w in workers:
            await w.__aenter__()
        try:
            for _ in range(3):
                await asyncio.gather(*(w.run_once() for w in workers))
                await asyncio.gather(*(w.run_once() for w in workers))
                clock.advance(60)
        finally:
            for w in workers:
                await w.aclose()
    assert len(app.names()) == len(set(app.names())) == 3


def test_pull_consumers_share_a_pull_queue(
    engine: sa.Engine, submitter: dbqueue.DbQueueSubmitter
) -> None:
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("pq", pull=True)])
    for i in range(10):
        submitter.submit(submission(queue="pq", name=f"t{i}"))
    a, b = dbqueue.PullQueue(engine, "pq"), dbqueue.PullQueue(engine, "pq")
    got_a = a.lease(6, dt.timedelta(minutes=1))
    got_b = b.lease(6, dt.timedelta(minutes=1))
    assert len(got_a) == 6
    assert len(got_b) == 4
    assert {t.name for t in got_a}.isdisjoint({t.name for t in got_b})
    assert all(a.complete(t) for t in got_a)
    assert all(b.fail(t) for t in got_b)
    admin = dbqueue.Admin(engine)
    assert admin.count_tasks(queue="pq", state=State.DONE) == 6
    assert admin.count_tasks(queue="pq", state=State.PENDING) == 4


async def _read_until(proc: asyncio.subprocess.Process, text: str, timeout_s: float) -> str:
    """The process's stderr up to the first line containing `text`."""
    assert proc.stderr is not None
    seen = ""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while text not in seen:
        left = deadline - asyncio.get_running_loop().time()
        line = await asyncio.wait_for(proc.stderr.readline(), max(left, 0.01))
        if not line:
            raise AssertionError(f"worker exited before {text!r}: {seen}")
        seen += line.decode(errors="replace")
    return seen
