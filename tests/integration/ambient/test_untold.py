"""No silent escape: every case docs/outbox-sql.md lists, both ways, on SQLite
and PostgreSQL. Seen: add_task refuses inside a transaction tq was not told
about (and bind / instrument / outside_transaction fix it). Not seen or not
counted: add_task submits at once, as documented."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import Session, scoped_session, sessionmaker

import tq
import tq.txn.sql
from tests._sqlapp import Row, count, greet, insert, names, rows
from tests.conformance.support import RecordingSubmitter
from tests.testpb import payloads_pb2 as pb
from tq.txn.sql import SQLStore

UNTOLD = "is open and tq was not told about it"


@pytest.fixture
def Maker(engine: Engine, store: SQLStore) -> sessionmaker[Session]:
    return sessionmaker(engine)  # not instrumented


def refused(disp: tq.Dispatcher, task: tq.Task) -> str:
    """The message of add_task's refusal (fails the test if it does not refuse)."""
    with pytest.raises(tq.TransactionError) as e:
        disp.add_task(task)
    return str(e.value)


def greet_nt(disp: tq.Dispatcher) -> tq.Task:
    """A NON_TRANSACTIONAL task (its class registered on `disp` once)."""
    if disp.task_class_by_id("untold-nt") is None:
        disp.register_task_class(
            tq.TaskClass(
                id="untold-nt", prototype=pb.Fail, kind=tq.Kind.NON_TRANSACTIONAL, queue="q"
            )
        )
    return tq.Task(payload=pb.Fail(how="nt"))


# Seen: a Session's transaction.


def test_a_begin_block_refuses_every_kind_and_names_the_fixes(
    Maker: sessionmaker[Session], engine: Engine, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with Maker.begin() as session:
        insert(session, "a")
        for task in (count(1), greet("t"), greet_nt(disp)):
            msg = refused(disp, task)
            what = "a SQLAlchemy Session's transaction (begun with begin() on "
            assert what + engine.url.drivername in msg
            assert UNTOLD in msg
        assert "tq.txn.sql.instrument(" in msg
        assert "tq.txn.sql.bind(session)" in msg
        assert "tq.txn.outside_transaction()" in msg
        assert "rolled back" in refused(disp, count(2))  # what would go wrong
    assert names(sub) == []
    assert rows(engine) == {"a"}  # the refusal left the transaction usable


def test_session_begin_called_by_hand_is_seen(
    Maker: sessionmaker[Session], disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with Maker() as session:
        session.begin()
        refused(disp, count(1))
        session.commit()
        disp.add_task(count(2))  # committed: nothing open
    assert names(sub) == ["2"]


def test_an_autobegun_session_with_changes_is_seen_flushed_or_not(
    Maker: sessionmaker[Session], disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with Maker() as session:
        session.add(Row(key="a"))
        assert "autobegun, with changes not flushed yet" in refused(disp, count(1))
        session.flush()
        assert "autobegun, with changes flushed" in refused(disp, count(2))
        session.commit()
        row = session.get(Row, "a")
        assert row is not None
        session.delete(row)
        refused(disp, count(3))
        session.rollback()
    assert names(sub) == []


async def test_an_async_session_is_seen(
    async_engine: AsyncEngine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    maker = async_sessionmaker(async_engine)
    async with maker.begin():
        with pytest.raises(tq.TransactionError, match=UNTOLD):
            await disp.add_task_async(count(1))
    async with maker() as session:
        session.add(Row(key="a"))
        with pytest.raises(tq.TransactionError, match="changes not flushed"):
            await disp.add_task_async(count(2))
        await session.rollback()
        await session.get(Row, "x")  # autobegun to read: not counted
        await disp.add_task_async(count(3))
    assert names(sub) == ["3"]


def test_a_scoped_session_is_seen(
    Maker: sessionmaker[Session], disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    scoped = scoped_session(Maker)
    try:
        scoped.add(Row(key="a"))
        refused(disp, count(1))
        scoped.commit()
        disp.add_task(count(2))
    finally:
        scoped.remove()
    assert names(sub) == ["2"]


def test_a_session_joined_to_a_connection_is_seen_as_a_session(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with engine.connect() as conn, conn.begin() as outer:
        session = Session(bind=conn, join_transaction_mode="create_savepoint")
        session.add(Row(key="a"))
        refused(disp, count(1))
        session.close()
        outer.rollback()
    assert names(sub) == []


# The fixes the refusal names.


def test_bind_instrument_and_outside_transaction_each_fix_the_refusal(
    Maker: sessionmaker[Session], engine: Engine, store: SQLStore, disp: tq.Dispatcher,
    sub: RecordingSubmitter,
) -> None:  # fmt: skip
    with Maker.begin() as session, tq.txn.sql.bind(session):
        disp.add_task(count(1))  # written into the transaction
    with Maker.begin():
        with tq.txn.outside_transaction():
            disp.add_task(count(2))  # submitted now, whatever becomes of it
        assert names(sub) == ["1", "2"]
    tq.txn.sql.instrument(Maker)
    try:
        with contextlib.suppress(RuntimeError), Maker.begin():
            disp.add_task(count(3))
            raise RuntimeError("rolled back")
    finally:
        tq.txn.sql.uninstrument(Maker)
    assert names(sub) == ["1", "2"]
    assert store.count_reminders() == (0, 0)


# Not seen, or not counted: submitted at once.


def test_a_session_that_autobegan_only_to_read_is_not_counted(
    Maker: sessionmaker[Session], disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with Maker() as session:
        session.get(Row, "x")
        session.execute(text("SELECT 1"))
        disp.add_task(count(1))
    assert names(sub) == ["1"]


def test_statements_run_by_hand_in_an_autobegun_session_are_not_seen(
    Maker: sessionmaker[Session], engine: Engine, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    # Documented: the ORM keeps no trace of a write it did not make.
    with Maker() as session:
        insert(session, "a")
        disp.add_task(count(1))  # submitted now: a ghost if this rolled back
        session.rollback()
    assert names(sub) == ["1"]
    assert rows(engine) == set()


def test_closed_and_committed_sessions_are_not_seen(
    Maker: sessionmaker[Session], disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    session = Maker()
    session.add(Row(key="a"))
    session.close()
    disp.add_task(count(1))
    with Maker.begin() as s:
        s.add(Row(key="b"))
    disp.add_task(count(2))
    abandoned = Maker()
    abandoned.begin()
    del abandoned  # never closed: seen until it is collected (a weak reference)
    import gc

    gc.collect()
    disp.add_task(count(3))
    assert names(sub) == ["1", "2", "3"]


def test_a_session_open_in_another_thread_is_not_seen(
    Maker: sessionmaker[Session], disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    opened, done = threading.Event(), threading.Event()

    def other() -> None:
        with Maker.begin() as session:
            session.add(Row(key="other"))
            opened.set()
            done.wait(30)

    t = threading.Thread(target=other)
    t.start()
    try:
        assert opened.wait(30)
        disp.add_task(count(1))
    finally:
        done.set()
        t.join()
    assert names(sub) == ["1"]


async def test_a_session_of_another_task_is_not_seen_one_of_the_parent_task_is(
    async_engine: AsyncEngine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    maker = async_sessionmaker(async_engine)
    opened, done = asyncio.Event(), asyncio.Event()

    async def other() -> None:
        async with maker.begin():
            opened.set()
            await done.wait()

    other_task = asyncio.create_task(other())
    await opened.wait()
    await disp.add_task_async(count(1))  # the other task's transaction is not ours
    done.set()
    await other_task
    async with maker.begin():
        # A task created inside the transaction inherits it, as it inherits
        # tq's helpers' transactions: it is refused there too.
        child = asyncio.create_task(disp.add_task_async(count(2)))
        with pytest.raises(tq.TransactionError, match=UNTOLD):
            await child
    assert names(sub) == ["1"]


def test_a_core_connection_of_an_engine_not_instrumented_is_not_seen(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    # Documented: seeing it would take listeners on the engine, which tax
    # every transaction on it. instrument(engine) makes it seen (and handled).
    with engine.begin() as conn:
        insert(conn, "a")
        disp.add_task(count(1))
        assert names(sub) == ["1"]
    tq.txn.sql.instrument(engine)
    try:
        with engine.begin() as conn:
            disp.add_task(count(2))
            assert names(sub) == ["1"]
    finally:
        tq.txn.sql.uninstrument(engine)
    assert names(sub) == ["1", "2"]


def test_a_raw_dbapi_connection_is_not_seen(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("INSERT INTO rows (key) VALUES ('raw')")  # the driver begins a transaction
        disp.add_task(count(1))
        raw.rollback()
    finally:
        raw.close()
    assert names(sub) == ["1"]


# tq's own transactions.


def test_a_helper_inside_an_untold_session_is_ambient(
    Maker: sessionmaker[Session], store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with Maker() as untold:
        untold.add(Row(key="a"))
        with tq.txn.sql.transaction(Maker):
            disp.add_task(count(1))  # the helper's transaction: written there
        untold.rollback()
    assert names(sub) == ["1"]
    assert store.count_reminders() == (0, 0)


def test_a_handler_run_by_tqtesting_does_not_see_the_tests_session(
    Maker: sessionmaker[Session], disp: tq.Dispatcher
) -> None:
    import tqtesting

    ran: list[int] = []
    handlers = tq.Dispatcher(
        cloud_project="p", cloud_region="us-central1", default_target_host="app.example.com"
    )

    @handlers.task_class(id="chain", prototype=pb.Count, kind=tq.Kind.FOLLOWS_CONTEXT, queue="q")
    def chain(payload: pb.Count) -> None:
        ran.append(payload.n)
        if payload.n:
            handlers.add_task(tq.Task(payload=pb.Count(n=payload.n - 1)))

    with tqtesting.testing_context(handlers) as sched:
        handlers.add_task(tq.Task(payload=pb.Count(n=2)))
        with Maker.begin() as session:  # the test holds a transaction open
            session.add(Row(key="a"))
            sched.run()
    assert ran == [2, 1, 0]


def test_recurring_tasks_are_put_inside_an_untold_session(
    Maker: sessionmaker[Session], engine: Engine, store: SQLStore
) -> None:
    import datetime as dt

    from tq import dbqueue

    dbqueue.create_schema(engine)
    queue = tq.Dispatcher(
        cloud_project="p", cloud_region="us-central1", default_target_host="app.example.com",
        submitter=dbqueue.DbQueueSubmitter(engine),
    )  # fmt: skip
    queue.register_task_class(
        tq.TaskClass(id="tick", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    )
    with Maker() as session:
        session.add(Row(key="a"))
        dbqueue.Recurring(engine).put(
            "every-minute", every=dt.timedelta(minutes=1), dispatcher=queue,
            task=tq.Task(payload=pb.Count(n=1)),
        )  # fmt: skip
        session.commit()
    assert [r.name for r in dbqueue.Recurring(engine).list()] == ["every-minute"]
