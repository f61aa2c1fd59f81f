"""tq.txn.sql.instrument: ordinary SQLAlchemy transactions (sessionmaker,
async_sessionmaker, scoped_session, Engine, AsyncEngine) that add_task writes
into, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection, Engine, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    async_scoped_session,
    async_sessionmaker,
)
from sqlalchemy.orm import Session, scoped_session, sessionmaker

import tq
import tq.txn.sql
from tests._sqlapp import Boom, Row, count, greet, insert, names, rows
from tests.conformance.support import RecordingSubmitter
from tq.txn.sql import SQLStore, SQLTransaction


@pytest.fixture
def Maker(engine: Engine, store: SQLStore) -> Iterator[sessionmaker[Session]]:
    maker = sessionmaker(engine)
    tq.txn.sql.instrument(maker)
    yield maker
    tq.txn.sql.uninstrument(maker)


@pytest.fixture
def core(engine: Engine, store: SQLStore) -> Iterator[Engine]:
    tq.txn.sql.instrument(engine)
    yield engine
    tq.txn.sql.uninstrument(engine)


# Sync sessions of an instrumented sessionmaker.


def test_session_begin_block_writes_tasks_and_submits_after_commit(
    Maker: sessionmaker[Session], engine: Engine, store: SQLStore, disp: tq.Dispatcher,
    sub: RecordingSubmitter,
) -> None:  # fmt: skip
    with Maker.begin() as session:
        insert(session, "a")
        disp.add_task(greet("a"), count(1))
        assert isinstance(tq.txn.current_transaction(), SQLTransaction)
        assert names(sub) == []
    assert sorted(names(sub)) == ["1", "a"]
    assert store.count_reminders() == (0, 0)
    assert rows(engine) == {"a"}
    assert tq.txn.current_transaction() is None


def test_rolled_back_session_submits_nothing_not_even_follows_context(
    Maker: sessionmaker[Session], engine: Engine, store: SQLStore, disp: tq.Dispatcher,
    sub: RecordingSubmitter,
) -> None:  # fmt: skip
    with contextlib.suppress(Boom), Maker.begin() as session:
        insert(session, "a")
        disp.add_task(count(1), greet("b"))
        raise Boom
    assert names(sub) == []
    assert store.count_reminders() == (0, 0)
    assert rows(engine) == set()


def test_autobegun_session_commits_and_rolls_back_its_tasks(
    Maker: sessionmaker[Session], store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with Maker() as session:
        session.add(Row(key="a"))
        disp.add_task(greet("committed"))
        session.commit()
        assert names(sub) == ["committed"]  # submitted inside commit()
        session.add(Row(key="b"))
        disp.add_task(greet("rolled-back"))
        session.rollback()
        disp.add_task(count(1))  # no transaction open now: submitted at once
        assert names(sub) == ["committed", "1"]
        session.begin()
        disp.add_task(greet("explicit"))
        session.commit()
    assert names(sub) == ["committed", "1", "explicit"]
    assert store.count_reminders() == (0, 0)


def test_an_autobegun_transaction_takes_tasks_and_one_never_committed_drops_them_loudly(
    Maker: sessionmaker[Session], disp: tq.Dispatcher, sub: RecordingSubmitter,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    with Maker() as session:
        session.get(Row, "x")  # autobegun to read: a transaction all the same
        disp.add_task(count(1))
        assert names(sub) == []
        session.commit()
    assert names(sub) == ["1"]
    with caplog.at_level(logging.WARNING, logger="tq.txn.sql"):
        with Maker() as session:
            session.get(Row, "x")
            disp.add_task(count(2))  # closed without a commit: dropped, and said so
        assert "1 task(s) of class conformance-count dropped" in caplog.text
        caplog.clear()
        with Maker() as session:
            session.begin()
            disp.add_task(count(3))
            session.rollback()  # dropped as asked: nothing to say
        assert caplog.text == ""
    with Maker() as session, pytest.raises(tq.TransactionError, match="TRANSACTIONAL"):
        disp.add_task(greet("no-transaction-yet"))
    assert names(sub) == ["1"]


def test_rolled_back_savepoints_drop_their_tasks(
    Maker: sessionmaker[Session], store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with Maker.begin() as session:
        early = session.begin_nested()  # opened before tq heard of the transaction
        disp.add_task(greet("early-savepoint"))
        early.rollback()
        disp.add_task(greet("outer"))
        with contextlib.suppress(Boom), session.begin_nested():
            disp.add_task(greet("inner-rolled-back"))
            raise Boom
        with session.begin_nested():
            disp.add_task(greet("inner-kept"))
    assert sorted(names(sub)) == ["inner-kept", "outer"]
    assert store.count_reminders() == (0, 0)


def test_a_session_bound_to_an_instrumented_engine_is_instrumented(
    core: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with Session(core) as session:
        session.begin()  # no connection yet
        disp.add_task(greet("before-any-statement"))
        insert(session, "a")
        disp.add_task(greet("after-a-statement"))
        assert names(sub) == []
        session.commit()
    assert sorted(names(sub)) == ["after-a-statement", "before-any-statement"]
    assert store.count_reminders() == (0, 0)
    assert tq.txn.sql.is_instrumented(Session(core))


def test_scoped_session_is_instrumented_through_its_factory(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    scoped = scoped_session(sessionmaker(engine))
    tq.txn.sql.instrument(scoped)
    try:
        assert tq.txn.sql.is_instrumented(scoped.session_factory)
        scoped.add(Row(key="a"))
        disp.add_task(greet("a"))
        scoped.commit()
        scoped.add(Row(key="b"))
        disp.add_task(greet("b"))
        scoped.rollback()
        scoped.remove()
    finally:
        tq.txn.sql.uninstrument(scoped)
    assert names(sub) == ["a"]
    assert store.count_reminders() == (0, 0)


def test_helpers_and_bind_work_on_instrumented_sessions(
    Maker: sessionmaker[Session], store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with tq.txn.sql.transaction(Maker):
        disp.add_task(greet("helper"))
    with Maker() as session:
        session.add(Row(key="a"))
        disp.add_task(greet("instrumented"))
        with tq.txn.sql.bind(session) as bound:  # the same transaction, not a second one
            assert tq.txn.current_transaction() is bound
            disp.add_task(greet("bound"))
        session.commit()
    assert sorted(names(sub)) == ["bound", "helper", "instrumented"]
    assert store.count_reminders() == (0, 0)


def test_the_database_queue_writes_its_row_in_an_instrumented_session(
    Maker: sessionmaker[Session], engine: Engine, store: SQLStore
) -> None:
    from tests.conformance.support import make_dispatcher
    from tq import dbqueue

    dbqueue.create_schema(engine)
    queue = make_dispatcher(dbqueue.DbQueueSubmitter(engine))  # type: ignore[arg-type]
    admin = dbqueue.Admin(engine)
    with contextlib.suppress(Boom), Maker.begin():
        queue.add_task(count(1))
        raise Boom
    assert admin.list_tasks(queue="q") == []
    with Maker.begin() as session:
        insert(session, "a")
        queue.add_task(count(2), greet("g"))
    assert len(admin.list_tasks(queue="q")) == 2
    assert store.count_reminders() == (0, 0)  # the rows are the tasks: no reminder


# Core connections of an instrumented engine.


def test_engine_begin_block_writes_tasks_and_submits_after_commit(
    core: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with core.begin() as conn:
        insert(conn, "a")
        disp.add_task(greet("a"), count(1))
        assert names(sub) == []
    with contextlib.suppress(Boom), core.begin() as conn:
        insert(conn, "b")
        disp.add_task(greet("rolled-back"))
        raise Boom
    assert sorted(names(sub)) == ["1", "a"]
    assert store.count_reminders() == (0, 0)
    assert rows(core) == {"a"}


def test_connection_commits_rollbacks_and_savepoints_are_followed(
    core: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with core.connect() as conn:
        disp.add_task(count(0))  # connected, no transaction yet: submitted at once
        assert names(sub) == ["0"]
        insert(conn, "a")  # autobegins
        disp.add_task(greet("first-commit"))
        conn.commit()
        assert names(sub) == ["0", "first-commit"]
        disp.add_task(count(1))  # between transactions: at once
        insert(conn, "b")
        disp.add_task(greet("rolled-back"))
        conn.rollback()
        with conn.begin():
            early = conn.begin_nested()  # opened before tq heard of the transaction
            disp.add_task(greet("early-savepoint"))
            early.rollback()
            disp.add_task(greet("outer"))
            with contextlib.suppress(Boom), conn.begin_nested():
                disp.add_task(greet("inner-rolled-back"))
                raise Boom
            with conn.begin_nested():
                disp.add_task(greet("inner-kept"))
    assert names(sub)[:3] == ["0", "first-commit", "1"]
    assert sorted(names(sub)[3:]) == ["inner-kept", "outer"]
    assert store.count_reminders() == (0, 0)


def test_a_connection_closed_without_a_commit_drops_its_tasks_loudly(
    core: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="tq.txn.sql"):
        with core.connect() as conn:
            insert(conn, "a")
            disp.add_task(greet("never-committed"))
        assert "1 task(s) of class conformance-greet dropped" in caplog.text
        caplog.clear()
        with core.connect() as conn:
            insert(conn, "b")
            disp.add_task(greet("rolled-back"))
            conn.rollback()
        assert caplog.text == ""
    assert names(sub) == []
    assert rows(core) == set()
    assert store.count_reminders() == (0, 0)


def test_a_separate_connection_inside_a_session_keeps_its_own_tasks(
    core: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with contextlib.suppress(Boom), Session(core) as session, session.begin():
        session.get(Row, "x")  # the session has its connection
        with core.begin() as conn:  # another connection: its own transaction
            insert(conn, "conn-row")
            disp.add_task(greet("with-the-connection"))
        insert(session, "session-row")  # (after: SQLite has one writer at a time)
        disp.add_task(greet("with-the-session"))
        raise Boom
    assert names(sub) == ["with-the-connection"]
    assert rows(core) == {"conn-row"}
    assert store.count_reminders() == (0, 0)


def test_failed_commit_submits_nothing(
    core: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    insert_sql = text("INSERT INTO rows (key) VALUES ('dup')")
    with core.begin() as conn:
        conn.execute(insert_sql)

    def doomed() -> None:
        with core.begin() as conn:
            disp.add_task(greet("doomed"))
            conn.execute(insert_sql)

    with pytest.raises(sa.exc.IntegrityError):
        doomed()
    assert names(sub) == []
    assert store.count_reminders() == (0, 0)


def test_tasks_added_from_a_thread_the_transaction_waits_for_go_with_it(
    core: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    import contextvars

    with core.begin():
        ctx = contextvars.copy_context()  # as asyncio.to_thread does
        worker = threading.Thread(target=ctx.run, args=(disp.add_task, greet("from-thread")))
        worker.start()
        worker.join()
        assert names(sub) == []
    assert names(sub) == ["from-thread"]


# Async.


async def test_async_sessionmaker_commits_in_the_awaited_commit(
    async_engine: AsyncEngine, engine: Engine, store: SQLStore, disp: tq.Dispatcher,
    sub: RecordingSubmitter,
) -> None:  # fmt: skip
    maker = async_sessionmaker(async_engine)
    tq.txn.sql.instrument(maker)
    try:
        async with maker.begin() as session:
            await session.execute(text("INSERT INTO rows (key) VALUES ('a')"))
            await disp.add_task_async(greet("a"))
            assert names(sub) == []
        assert names(sub) == ["a"]  # the awaited commit ran the happy path
        with contextlib.suppress(Boom):
            async with maker.begin() as session:
                await disp.add_task_async(count(1))
                raise Boom
        async with maker() as session:
            session.add(Row(key="b"))
            await disp.add_task_async(greet("autobegun"))
            nested = await session.begin_nested()
            await disp.add_task_async(greet("savepoint-rolled-back"))
            await nested.rollback()
            await session.commit()
            assert names(sub) == ["a", "autobegun"]
    finally:
        tq.txn.sql.uninstrument(maker)
    assert store.count_reminders() == (0, 0)
    assert rows(engine) == {"a", "b"}


async def test_async_scoped_session_is_instrumented_through_its_factory(
    async_engine: AsyncEngine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    import asyncio

    scoped = async_scoped_session(async_sessionmaker(async_engine), asyncio.current_task)
    tq.txn.sql.instrument(scoped)
    try:
        scoped.add(Row(key="a"))
        await disp.add_task_async(greet("a"))
        await scoped.commit()
        await scoped.remove()
    finally:
        tq.txn.sql.uninstrument(scoped)
    assert names(sub) == ["a"]


async def test_async_engine_begin_block_commits_in_the_awaited_commit(
    async_engine: AsyncEngine, engine: Engine, store: SQLStore, disp: tq.Dispatcher,
    sub: RecordingSubmitter,
) -> None:  # fmt: skip
    tq.txn.sql.instrument(async_engine)
    try:
        async with async_engine.begin() as conn:
            await conn.execute(text("INSERT INTO rows (key) VALUES ('a')"))
            await disp.add_task_async(greet("a"))
            assert names(sub) == []
        assert names(sub) == ["a"]
        with contextlib.suppress(Boom):
            async with async_engine.begin() as conn:
                await disp.add_task_async(greet("rolled-back"))
                raise Boom
        async with async_engine.connect() as conn:
            await conn.execute(text("INSERT INTO rows (key) VALUES ('b')"))
            await disp.add_task_async(greet("autobegun"))
            nested = await conn.begin_nested()
            await disp.add_task_async(greet("savepoint-rolled-back"))
            await nested.rollback()
            await conn.commit()
        async with async_sessionmaker(async_engine).begin():  # a session bound to it
            await disp.add_task_async(greet("session-on-engine"))
    finally:
        tq.txn.sql.uninstrument(async_engine)
    assert names(sub) == ["a", "autobegun", "session-on-engine"]
    assert store.count_reminders() == (0, 0)
    assert rows(engine) == {"a", "b"}


# outside_transaction().


def test_outside_transaction_inside_an_instrumented_one_submits_at_once(
    Maker: sessionmaker[Session], disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with contextlib.suppress(Boom), Maker.begin():
        with tq.txn.outside_transaction():
            disp.add_task(count(1))
        assert names(sub) == ["1"]
        raise Boom
    assert names(sub) == ["1"]


def test_an_instrumented_transaction_begun_inside_outside_transaction_is_found(
    Maker: sessionmaker[Session], disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with Maker.begin(), tq.txn.outside_transaction():
        with contextlib.suppress(Boom), Maker.begin():
            disp.add_task(greet("inner-rolled-back"))
            raise Boom
        with Maker.begin():
            disp.add_task(greet("inner-committed"))
        assert names(sub) == ["inner-committed"]
        disp.add_task(count(1))  # the outer one is hidden here
        assert names(sub) == ["inner-committed", "1"]


# What instrument() takes and what it leaves alone.


def test_instrument_refuses_what_it_cannot_instrument(
    engine: Engine, store: SQLStore, tmp_path: object
) -> None:
    with Session(engine) as session, pytest.raises(tq.ConfigError, match="bind"):
        tq.txn.sql.instrument(session)
    with engine.connect() as conn, pytest.raises(tq.ConfigError, match="sessionmaker"):
        tq.txn.sql.instrument(conn)
    with pytest.raises(tq.ConfigError, match="sessionmaker"):
        tq.txn.sql.instrument(object())
    with pytest.raises(tq.ConfigError, match="no bind"):
        tq.txn.sql.instrument(sessionmaker())
    other = SQLStore(engine, name="other", register=False)
    maker = sessionmaker(engine)
    tq.txn.sql.instrument(maker)
    tq.txn.sql.instrument(maker, store=store)  # the same again: nothing changes
    with pytest.raises(tq.ConfigError, match="instrumented already"):
        tq.txn.sql.instrument(maker, store=other)
    tq.txn.sql.uninstrument(maker)
    assert not tq.txn.sql.is_instrumented(maker)
    unknown = sa.create_engine("sqlite://")
    with pytest.raises(tq.ConfigError, match="no SQLStore"):
        tq.txn.sql.instrument(unknown)
    assert unknown._connection_cls is Connection


def test_instrumenting_keeps_the_makers_info_and_a_custom_connection_class(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    maker = sessionmaker(engine, info={"app": 1})
    tq.txn.sql.instrument(maker)
    with maker(info={"request": 2}) as session:
        assert session.info["app"] == 1
        assert session.info["request"] == 2
        assert tq.txn.sql.is_instrumented(session)
    tq.txn.sql.uninstrument(maker)
    assert maker.kw["info"] == {"app": 1}

    class Custom(Connection):
        pass

    engine._connection_cls = Custom
    tq.txn.sql.instrument(engine)
    with engine.begin() as conn:
        assert isinstance(conn, Custom)
        disp.add_task(greet("custom"))
    tq.txn.sql.uninstrument(engine)
    assert engine._connection_cls is Custom
    del engine._connection_cls
    assert names(sub) == ["custom"]


def test_engines_not_instrumented_stay_as_they_were(engine: Engine, store: SQLStore) -> None:
    other = sessionmaker(engine)
    instrumented = sessionmaker(engine)
    tq.txn.sql.instrument(instrumented)
    try:
        # No listener on the engine (it would tax every transaction), its own
        # Connection class, and sessions of other makers unmarked.
        assert not engine._has_events
        assert type(engine)._connection_cls is engine._connection_cls is Connection
        with engine.connect() as conn:
            assert type(conn) is Connection
        with other() as session:
            assert not tq.txn.sql.is_instrumented(session)
    finally:
        tq.txn.sql.uninstrument(instrumented)
    tq.txn.sql.instrument(engine)
    tq.txn.sql.uninstrument(engine)
    assert not engine._has_events
    assert "_connection_cls" not in engine.__dict__


def test_an_engine_is_refused_when_sqlalchemy_lacks_the_hooks_it_needs(
    engine: Engine, store: SQLStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(Connection, "_savepoint_impl")
    with pytest.raises(tq.ConfigError, match=r"does not work with SQLAlchemy .*_savepoint_impl"):
        tq.txn.sql.instrument(engine)
    assert "_connection_cls" not in engine.__dict__
