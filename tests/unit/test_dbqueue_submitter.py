"""DbQueueSubmitter: task rows, name deduplication with a tombstone window, queues,
and transactional add_task writing the row in the caller's transaction."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy import orm

import tq
import tq.txn.sql
from tests._dbqueue import (
    PROJECT,
    REGION,
    URL,
    clock_fixture,  # noqa: F401
    fidelity_engine_fixture,  # noqa: F401
    only_sqlite,
    parent,
    submission,
    submitter_fixture,  # noqa: F401
    task_state,
)
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue
from tq.dbqueue import _wakeup
from tq.dbqueue._schema import tasks
from tqtesting import FakeClock


def rows(engine: sa.Engine) -> list[sa.Row[tuple[object, ...]]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(tasks).order_by(tasks.c.id)))


def code_of(excinfo: pytest.ExceptionInfo[tq.SubmitError]) -> grpc.StatusCode:
    return excinfo.value.code


def test_submit_stores_the_request_as_a_pending_row(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine, clock: FakeClock
) -> None:
    submitter.submit(
        submission(
            name="t1", body=b'{"a":1}', headers={"Content-Type": "application/json", "X-A": "b"}
        )
    )
    (row,) = rows(engine)
    assert (row.queue, row.name, row.task_class, row.state) == ("q", "t1", "greet", "pending")
    assert (row.url, row.method, bytes(row.body)) == (URL, "POST", b'{"a":1}')
    assert json.loads(row.headers) == {"Content-Type": "application/json", "X-A": "b"}
    info = task_state(engine, "t1")
    assert info.eta == info.created == clock.now()  # no schedule time: due now
    assert (info.attempts, info.executions, info.last_status) == (0, 0, None)


def test_header_values_keep_quotes_backslashes_and_non_ascii(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine
) -> None:
    headers = {"X-Quote": 'say "hi"\\', "X-Accent": "café ☕", "X-Ctl": "a\tb"}
    submitter.submit(submission(name="h", headers=headers))
    (row,) = rows(engine)
    assert json.loads(row.headers) == headers


def test_schedule_time_deadline_and_oidc_token_are_kept(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine, clock: FakeClock
) -> None:
    eta = clock.now() + dt.timedelta(minutes=5)
    submitter.submit(
        submission(name="t1", eta=eta, deadline_s=30, oidc=("sa@p.iam", "https://aud"))
    )
    (row,) = rows(engine)
    assert task_state(engine, "t1").eta == eta
    assert (row.dispatch_deadline_s, row.oidc_email, row.oidc_audience) == (
        30,
        "sa@p.iam",
        "https://aud",
    )


def test_a_live_name_raises_already_exists(submitter: dbqueue.DbQueueSubmitter) -> None:
    submitter.submit(submission(name="dup"))
    with pytest.raises(tq.SubmitError) as e:
        submitter.submit(submission(name="dup"))
    assert code_of(e) == grpc.StatusCode.ALREADY_EXISTS
    assert e.value.already_exists


def test_the_same_name_in_another_queue_is_another_task(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine
) -> None:
    submitter.submit(submission(name="dup", queue="a"))
    submitter.submit(submission(name="dup", queue="b"))
    assert [(r.queue, r.name) for r in rows(engine)] == [("a", "dup"), ("b", "dup")]


def test_a_finished_name_stays_taken_for_the_tombstone_window(
    engine: sa.Engine, clock: FakeClock
) -> None:
    sub = dbqueue.DbQueueSubmitter(engine, tombstone_window=dt.timedelta(hours=1))
    sub.submit(submission(name="once"))
    assert dbqueue.Admin(engine).delete_task("q", "once")
    clock.advance(dt.timedelta(minutes=59))
    with pytest.raises(tq.SubmitError) as e:
        sub.submit(submission(name="once"))
    assert code_of(e) == grpc.StatusCode.ALREADY_EXISTS
    clock.advance(dt.timedelta(minutes=1))
    sub.submit(submission(name="once"))  # the window is over: a new task
    info = task_state(engine, "once")
    assert (info.state, info.attempts, info.finished) == (dbqueue.State.PENDING, 0, None)
    assert len(rows(engine)) == 1


def test_a_zero_tombstone_window_frees_the_name_at_once(engine: sa.Engine) -> None:
    sub = dbqueue.DbQueueSubmitter(engine, tombstone_window=dt.timedelta(0))
    sub.submit(submission(name="n"))
    dbqueue.Admin(engine).delete_task("q", "n")
    sub.submit(submission(name="n"))
    assert task_state(engine, "n").state is dbqueue.State.PENDING


def test_unnamed_tasks_get_unique_generated_names(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine
) -> None:
    for _ in range(20):
        submitter.submit(submission())
    names = [r.name for r in rows(engine)]
    assert len(set(names)) == 20
    assert all(len(n) == 32 for n in names)


def test_an_unknown_queue_is_created_with_the_defaults(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine
) -> None:
    submitter.submit(submission(queue="fresh"))
    (q,) = dbqueue.Admin(engine).list_queues()
    assert q.config == dbqueue.QueueConfig("fresh")
    assert not q.paused


def test_an_unknown_queue_is_not_found_without_auto_create(engine: sa.Engine) -> None:
    sub = dbqueue.DbQueueSubmitter(engine, auto_create_queues=False)
    with pytest.raises(tq.SubmitError) as e:
        sub.submit(submission(queue="nope"))
    assert code_of(e) == grpc.StatusCode.NOT_FOUND
    assert not e.value.transient
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("nope")])
    sub.submit(submission(queue="nope"))
    assert len(rows(engine)) == 1


@pytest.mark.parametrize(("method", "stored"), [(0, "POST"), (2, "GET"), (4, "PUT"), (6, "PATCH")])
def test_the_http_method_is_stored_by_name(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine, method: int, stored: str
) -> None:
    sub = submission(name="t")
    sub.request.task.http_request.http_method = method  # type: ignore[attr-defined]
    submitter.submit(sub)
    (row,) = rows(engine)
    assert row.method == stored


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: setattr(r, "parent", "queues/q"),
        lambda r: setattr(r.task, "name", "projects/x/locations/y/queues/other/tasks/t"),
        lambda r: setattr(r.task, "name", parent("q") + "/tasks/has space"),
        lambda r: r.task.ClearField("http_request"),
        lambda r: setattr(r.task.http_request, "http_method", 99),
    ],
)
def test_malformed_requests_are_invalid_arguments(
    submitter: dbqueue.DbQueueSubmitter, mutate: object
) -> None:
    sub = submission(name="t")
    mutate(sub.request)  # type: ignore[operator]
    with pytest.raises(tq.SubmitError) as e:
        submitter.submit(sub)
    assert code_of(e) == grpc.StatusCode.INVALID_ARGUMENT


async def test_submit_async_inserts_without_blocking(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine
) -> None:
    await asyncio.gather(*(submitter.submit_async(submission(name=f"t{i}")) for i in range(5)))
    assert sorted(r.name for r in rows(engine)) == [f"t{i}" for i in range(5)]


async def test_a_submit_wakes_workers_of_the_same_database(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine
) -> None:
    waiter = _wakeup.subscribe(_wakeup.key_of(engine))
    try:
        submitter.submit(submission())
        assert waiter.event.is_set()
    finally:
        _wakeup.unsubscribe(_wakeup.key_of(engine), waiter)


# Through a dispatcher.


def dispatcher(sub: dbqueue.DbQueueSubmitter) -> tq.Dispatcher:
    disp = tq.Dispatcher(
        cloud_project=PROJECT,
        cloud_region=REGION,
        default_target_host="app.example.com",
        submitter=sub,
    )
    disp.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, queue="q")
    )
    disp.register_task_class(
        tq.TaskClass(id="count", prototype=pb.Count, kind=tq.Kind.TRANSACTIONAL, queue="q")
    )
    return disp


def test_a_repeated_deduplication_key_creates_one_task(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine
) -> None:
    disp = dispatcher(submitter)
    disp.add_task(tq.Task(pb.Greet(name="a"), deduplication_key="k"))
    disp.add_task(tq.Task(pb.Greet(name="b"), deduplication_key="k"))  # absorbed
    (row,) = rows(engine)
    assert row.name == tq._task.deduplicated_task_id("", "greet", "k")


@pytest.fixture
def sql_store(engine: sa.Engine) -> Iterator[tq.txn.sql.SQLStore]:
    store = tq.txn.sql.SQLStore(engine, name="dbqueue-test")
    store.create_schema()
    yield store
    store.close()


def add_then_abort(disp: tq.Dispatcher, engine: sa.Engine, task: tq.Task) -> None:
    with tq.txn.sql.transaction(engine):
        disp.add_task(task)
        raise RuntimeError("abort")


def reminder_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM tq_reminders").scalar_one())


@pytest.mark.usefixtures("sql_store")
def test_transactional_add_task_writes_the_row_in_the_callers_transaction(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine
) -> None:
    disp = dispatcher(submitter)
    with tq.txn.sql.transaction(engine) as conn:
        disp.add_task(tq.Task(pb.Count(n=1)))
        # Visible inside the transaction, not outside it yet.
        assert conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar_one() == 1
        assert rows(engine) == []
    (row,) = rows(engine)
    assert row.task_class == "count"
    assert len(row.name) == 32  # the reminder ID names the task
    assert reminder_count(engine) == 0  # no reminder: the row is the task


def test_a_taken_name_in_the_callers_transaction_leaves_it_usable(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine, clock: FakeClock
) -> None:
    submitter.submit(submission(name="live"))
    submitter.submit(submission(name="old"))
    assert dbqueue.Admin(engine).delete_task("q", "old")
    clock.advance(submitter.tombstone_window)
    with engine.begin() as conn:
        with pytest.raises(tq.SubmitError) as e:
            submitter.write_in_transaction(conn, submission(name="live", body=b"again"))
        assert code_of(e) == grpc.StatusCode.ALREADY_EXISTS
        # The finished name past its window is taken over in place, in the same transaction.
        submitter.write_in_transaction(conn, submission(name="old", body=b"new"))
        submitter.write_in_transaction(conn, submission(name="fresh"))
    assert {r.name: bytes(r.body) for r in rows(engine)} == {
        "live": b"{}", "old": b"new", "fresh": b"{}",
    }  # fmt: skip
    assert task_state(engine, "old").state is dbqueue.State.PENDING


def test_the_reminder_size_limit_does_not_apply_to_rows_written_in_the_transaction(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine
) -> None:
    # No reminder is stored for a database-queue task added in a transaction,
    # so the store's reminder limit does not apply; Cloud Tasks' does.
    store = tq.txn.sql.SQLStore(engine, name="dbqueue-small", max_payload_size=200)
    store.create_schema()
    disp = dispatcher(submitter)
    with tq.txn.sql.transaction(engine, store=store):
        disp.add_task(tq.Task(pb.Greet(name="x" * 1000)))
    assert len(rows(engine)) == 1
    with (
        pytest.raises(tq.PayloadTooLarge, match="Cloud Tasks"),
        tq.txn.sql.transaction(engine, store=store),
    ):
        disp.add_task(tq.Task(pb.Greet(name="x" * (1024 * 1024))))
    assert len(rows(engine)) == 1
    # Tasks for a submitter that needs a reminder are held to the store's limit.
    disp.configure(submitter=NeverCalled())
    with (
        pytest.raises(tq.PayloadTooLarge, match="as a reminder"),
        tq.txn.sql.transaction(engine, store=store),
    ):
        disp.add_task(tq.Task(pb.Greet(name="x" * 1000)))
    store.close()


class NeverCalled:
    def submit(self, submission: tq.Submission) -> None:
        raise AssertionError("not submitted")

    async def submit_async(self, submission: tq.Submission) -> None:
        raise AssertionError("not submitted")


@pytest.mark.usefixtures("sql_store")
def test_rolled_back_transaction_leaves_no_task(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine
) -> None:
    disp = dispatcher(submitter)
    with pytest.raises(RuntimeError, match="abort"):
        add_then_abort(disp, engine, tq.Task(pb.Count(n=1)))
    assert rows(engine) == []
    assert reminder_count(engine) == 0


@pytest.mark.usefixtures("sql_store")
def test_session_transaction_commits_rows_and_drops_rolled_back_savepoints(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine
) -> None:
    disp = dispatcher(submitter)
    make_session = orm.sessionmaker(engine)
    with tq.txn.sql.transaction(make_session) as session:
        disp.add_task(tq.Task(pb.Count(n=1)))
        nested = session.begin_nested()
        disp.add_task(tq.Task(pb.Count(n=2)))
        nested.rollback()
        disp.add_task(tq.Task(pb.Greet(name="follows context")))
    assert sorted(r.task_class for r in rows(engine)) == ["count", "greet"]
    assert reminder_count(engine) == 0


@pytest.mark.usefixtures("sql_store")
async def test_transactional_tasks_wake_workers_only_after_commit(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine
) -> None:
    disp = dispatcher(submitter)
    waiter = _wakeup.subscribe(_wakeup.key_of(engine))
    try:
        with tq.txn.sql.transaction(engine):
            disp.add_task(tq.Task(pb.Count(n=1)))
            assert not waiter.event.is_set()
        assert waiter.event.is_set()
        waiter.event.clear()
        with pytest.raises(RuntimeError, match="abort"):
            add_then_abort(disp, engine, tq.Task(pb.Count(n=2)))
        with engine.connect():
            pass  # a later checkout and checkin of the pool's connection
        assert not waiter.event.is_set()
        with tq.txn.sql.transaction(orm.sessionmaker(engine)):
            disp.add_task(tq.Task(pb.Count(n=3)))
            assert not waiter.event.is_set()
        assert waiter.event.is_set()
    finally:
        _wakeup.unsubscribe(_wakeup.key_of(engine), waiter)
    assert len(rows(engine)) == 2
    # The helpers report commits to the submitter: no listener on the engine,
    # which would tax every transaction of the application.
    assert not engine._has_events
    assert not engine.pool.dispatch.checkin


@pytest.mark.usefixtures("sql_store")
def test_a_queue_created_under_a_rolled_back_savepoint_is_created_again(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine
) -> None:
    disp = dispatcher(submitter)
    with tq.txn.sql.transaction(engine) as conn:
        nested = conn.begin_nested()
        disp.add_task(tq.Task(pb.Count(n=1)))  # creates queue "q" in the savepoint
        nested.rollback()
    assert rows(engine) == []
    assert dbqueue.Admin(engine).list_queues() == []
    with tq.txn.sql.transaction(engine):
        disp.add_task(tq.Task(pb.Count(n=2)))
    assert [q.name for q in dbqueue.Admin(engine).list_queues()] == ["q"]
    assert len(rows(engine)) == 1


@pytest.mark.usefixtures("sql_store")
async def test_async_session_transaction_writes_the_row(
    submitter: dbqueue.DbQueueSubmitter, engine: sa.Engine
) -> None:
    only_sqlite(engine, "an aiosqlite session")
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    aengine = create_async_engine(f"sqlite+aiosqlite:///{engine.url.database}")
    try:
        disp = dispatcher(submitter)
        async with tq.txn.sql.transaction_async(async_sessionmaker(aengine)):
            await disp.add_task_async(tq.Task(pb.Count(n=7)))
        (row,) = rows(engine)
        assert row.task_class == "count"
    finally:
        await aengine.dispose()
