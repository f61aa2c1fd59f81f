"""tq.txn.sql's transaction helpers on SQLite and PostgreSQL: Session, Core
Connection, AsyncSession, bind(), savepoints, store lookup and the schema."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

import tq
import tq.txn.sql
from tests._sqlapp import (
    Boom,
    async_engine_fixture,  # noqa: F401
    db_url_fixture,  # noqa: F401
    disp_fixture,  # noqa: F401
    engine_fixture,  # noqa: F401
    greet,
    insert,
    names,
    rows,
    store_fixture,  # noqa: F401
    sub_fixture,  # noqa: F401
)
from tests.conformance.harness_sql import make_engine
from tests.conformance.support import RecordingSubmitter, make_dispatcher
from tq._submitter import Submission
from tq.txn.sql import SQLStore

REPO = Path(__file__).resolve().parents[2]


# Sync Session.


def test_session_commit_submits_after_commit(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with tq.txn.sql.transaction(sessionmaker(engine)) as session:
        assert isinstance(session, Session)
        insert(session, "a")
        disp.add_task(greet("a"), greet("b"))
    assert sorted(names(sub)) == ["a", "b"]
    assert store.count_reminders() == (0, 0)
    assert rows(engine) == {"a"}


def test_rolled_back_savepoint_drops_its_tasks_only(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with tq.txn.sql.transaction(sessionmaker(engine)) as session:
        disp.add_task(greet("outer"))
        try:
            with session.begin_nested():
                disp.add_task(greet("inner-rolled-back"))
                raise Boom
        except Boom:
            pass
        with session.begin_nested():
            disp.add_task(greet("inner-kept"))
        disp.add_task(greet("last"))
    assert sorted(names(sub)) == ["inner-kept", "last", "outer"]
    assert store.count_reminders() == (0, 0)


def test_commit_inside_the_block_submits_what_it_committed(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    def run() -> None:
        with tq.txn.sql.transaction(sessionmaker(engine)) as session:
            disp.add_task(greet("first"))
            session.commit()
            disp.add_task(greet("second"))
            raise Boom

    with pytest.raises(Boom):
        run()
    # The block failed: nothing goes out from the happy path, and what the
    # first commit wrote waits for the sweeper.
    assert names(sub) == []
    assert store.count_reminders() == (1, 0)


def test_deadline_caps_fresh_until(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    sub.fail_with = grpc.StatusCode.UNAVAILABLE
    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20)
    with tq.txn.sql.transaction(sessionmaker(engine), deadline=deadline):
        assert tq.txn.current_transaction().deadline == deadline  # type: ignore[union-attr]
        disp.add_task(greet("a"))
    [key] = store.fetch_reminder_keys("", "g", 10)
    assert abs(key.fresh_until - deadline) < dt.timedelta(milliseconds=1)


def test_reminders_read_back_in_utc_whatever_the_session_zone(
    db_url: str, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter, engine: Engine
) -> None:
    sub.fail_with = grpc.StatusCode.UNAVAILABLE  # left for the sweeper
    deadline = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20)).replace(microsecond=123456)
    with tq.txn.sql.transaction(sessionmaker(engine), deadline=deadline):
        disp.add_task(greet("a"))
    reader, zoned = store, make_engine(db_url)
    if store.dialect == "postgresql":

        @event.listens_for(zoned, "connect")
        def _zone(dbapi_conn: Any, _record: object) -> None:
            dbapi_conn.execute("SET TIME ZONE 'Asia/Kolkata'")
            dbapi_conn.commit()

        reader = SQLStore(zoned, name="zoned", register=False)
    try:
        [key] = reader.fetch_reminder_keys("", "g", 10)
        [back] = reader.fetch_reminders([key.id])
        assert key.fresh_until == back.fresh_until == deadline
        assert key.fresh_until.tzinfo is dt.UTC
        assert back.fresh_until.tzinfo is dt.UTC
        if store.dialect == "postgresql":
            with zoned.connect() as conn:  # the store left the session's zone alone
                assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "Asia/Kolkata"
    finally:
        zoned.dispose()


def test_happy_path_errors_never_reach_the_caller(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher
) -> None:
    class Broken:
        def submit(self, submission: Submission) -> None:
            raise RuntimeError("submitter bug")

        async def submit_async(self, submission: Submission) -> None:
            raise RuntimeError("submitter bug")

    with tq.use_submitter(Broken()), tq.txn.sql.transaction(sessionmaker(engine)):
        disp.add_task(greet("a"))
    assert store.count_reminders() == (1, 0)  # kept for the sweeper


# Core Connection.


def test_core_connection_commit_and_rollback(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with tq.txn.sql.transaction(engine) as conn:
        insert(conn, "a")
        disp.add_task(greet("a"))

    def run() -> None:
        with tq.txn.sql.transaction(engine) as conn:
            insert(conn, "b")
            disp.add_task(greet("b"))
            raise Boom

    with pytest.raises(Boom):
        run()
    assert names(sub) == ["a"]
    assert store.count_reminders() == (0, 0)
    assert rows(engine) == {"a"}


@pytest.mark.parametrize("paramstyle", ["named", "qmark", "numeric"])
def test_reminders_go_in_with_any_driver_parameter_style(
    tmp_path: Path, paramstyle: str, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    # The reminder INSERT is written in the driver's own parameter style.
    eng = create_engine(f"sqlite:///{tmp_path}/styles.db", paramstyle=paramstyle)
    store = SQLStore(eng, name="sql-styles")
    store.create_schema()
    try:
        with tq.txn.sql.transaction(eng) as conn:
            disp.add_task(greet("core"))
            assert store.count_reminders() == (0, 0)  # not committed yet
            assert conn.exec_driver_sql("SELECT count(*) FROM tq_reminders").scalar() == 1
        with tq.txn.sql.transaction(sessionmaker(eng)):
            disp.add_task(greet("session"), greet("batch"))
        assert sorted(names(sub)) == ["batch", "core", "session"]
        assert store.count_reminders() == (0, 0)
    finally:
        store.close()
        eng.dispose()


def test_core_helper_leaves_the_engine_without_listeners(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    # A listener on the engine would tax every transaction of the
    # application's engine, tq's or not.
    with tq.txn.sql.transaction(engine) as conn:
        conn.execute(text("INSERT INTO rows (key) VALUES ('a')"))
        disp.add_task(greet("a"))
    assert names(sub) == ["a"]
    assert not engine._has_events
    assert not engine.pool.dispatch.checkin


def test_core_reminder_of_a_released_savepoint_is_submitted_once_read_back(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with tq.txn.sql.transaction(engine) as conn:
        with conn.begin_nested():
            disp.add_task(greet("released"))
        nested = conn.begin_nested()
        disp.add_task(greet("rolled-back"))
        nested.rollback()
        disp.add_task(greet("outer"))
    assert sorted(names(sub)) == ["outer", "released"]
    assert store.count_reminders() == (0, 0)


def test_core_savepoint_rollback_drops_its_tasks(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with tq.txn.sql.transaction(engine) as conn:
        disp.add_task(greet("outer"))
        nested = conn.begin_nested()
        disp.add_task(greet("inner"))
        nested.rollback()
        with conn.begin_nested():
            disp.add_task(greet("kept"))
    assert sorted(names(sub)) == ["kept", "outer"]
    assert store.count_reminders() == (0, 0)


def test_core_failed_statement_submits_nothing(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with tq.txn.sql.transaction(engine) as conn:
        insert(conn, "taken")

    def run() -> None:
        with tq.txn.sql.transaction(engine) as conn:
            disp.add_task(greet("x"))
            insert(conn, "taken")

    with pytest.raises(IntegrityError):
        run()
    assert sub.attempts == 0
    assert store.count_reminders() == (0, 0)


def test_failed_reminder_insert_raises_sqlalchemys_error_and_submits_nothing(
    engine: Engine, store: SQLStore, sub: RecordingSubmitter
) -> None:
    # The reminder INSERT may skip SQLAlchemy's execution machinery; a driver
    # error must still come out as SQLAlchemy's (here: an ID that is taken).
    disp = make_dispatcher(sub, ids=lambda n: b"\x07" * n)  # type: ignore[arg-type]
    past = tq.clock.now() - dt.timedelta(seconds=1)
    with tq.txn.sql.transaction(engine, deadline=past) as conn:  # stale: no happy path
        insert(conn, "kept")
        disp.add_task(greet("kept"))

    def core() -> None:
        with tq.txn.sql.transaction(engine) as conn:
            insert(conn, "core")
            disp.add_task(greet("core"))

    def session() -> None:
        with tq.txn.sql.transaction(sessionmaker(engine)) as s:
            insert(s, "session")
            disp.add_task(greet("session"))

    for run in (core, session):
        with pytest.raises(IntegrityError):
            run()
    assert sub.attempts == 0
    assert store.count_reminders() == (1, 0)
    assert rows(engine) == {"kept"}


def test_reminder_insert_is_seen_by_cursor_listeners(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    # Tracing and auditing tools watch statements through cursor events.
    seen: list[str] = []

    def watch(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", watch)
    try:
        with tq.txn.sql.transaction(engine) as conn:
            insert(conn, "a")
            disp.add_task(greet("core"))
        with tq.txn.sql.transaction(sessionmaker(engine)) as session:
            insert(session, "b")
            disp.add_task(greet("session"))
    finally:
        event.remove(engine, "before_cursor_execute", watch)
    assert sum("INSERT INTO tq_reminders" in s for s in seen) == 2
    assert sorted(names(sub)) == ["core", "session"]


# bind() with a sync Session.


def test_bind_follows_the_sessions_own_commits(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with Session(engine) as session:
        with tq.txn.sql.bind(session) as bound:
            disp.add_task(greet("committed"))
            session.commit()
            assert names(sub) == ["committed"]  # submitted from the commit
            disp.add_task(greet("rolled-back"))
            session.rollback()
            disp.add_task(greet("committed-after-block"))
        # A task waits for the session's commit: its transaction is still told.
        assert tq.txn.current_transaction() is bound
        session.commit()
        assert tq.txn.current_transaction() is None
        with tq.txn.sql.bind(session):  # the session is free to bind again
            pass
    assert names(sub) == ["committed", "committed-after-block"]
    assert store.count_reminders() == (0, 0)


def test_bind_refuses_a_session_bound_already(engine: Engine, store: SQLStore) -> None:
    with Session(engine) as session, tq.txn.sql.bind(session):
        second = tq.txn.sql.bind(session)
        with pytest.raises(tq.TransactionError):
            second.__enter__()


# Finding the store.


def test_store_found_by_url_from_another_engine(
    db_url: str, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    other = create_engine(db_url)
    try:
        with tq.txn.sql.transaction(sessionmaker(other)):
            assert tq.txn.current_transaction().store is store  # type: ignore[union-attr]
            disp.add_task(greet("a"))
    finally:
        other.dispose()
    assert names(sub) == ["a"]


def test_unknown_database_is_a_clear_error(tmp_path: Path, store: SQLStore) -> None:
    other = create_engine(f"sqlite:///{tmp_path}/elsewhere.db")
    try:
        with pytest.raises(tq.ConfigError, match="no SQLStore registered"):
            tq.txn.sql.transaction(sessionmaker(other)).__enter__()
    finally:
        other.dispose()


# AsyncSession (aiosqlite, psycopg async).


async def test_async_session_commit_and_rollback(
    async_engine: AsyncEngine,
    engine: Engine,
    store: SQLStore,
    disp: tq.Dispatcher,
    sub: RecordingSubmitter,
) -> None:
    factory = async_sessionmaker(async_engine)
    async with tq.txn.sql.transaction_async(factory) as session:
        await session.execute(text("INSERT INTO rows (key) VALUES ('a')"))
        await disp.add_task_async(greet("a"))

    async def run() -> None:
        async with tq.txn.sql.transaction_async(factory) as session:
            await session.execute(text("INSERT INTO rows (key) VALUES ('b')"))
            await disp.add_task_async(greet("b"))
            raise Boom

    with pytest.raises(Boom):
        await run()
    assert names(sub) == ["a"]
    assert store.count_reminders() == (0, 0)
    assert rows(engine) == {"a"}


async def test_async_session_savepoint_and_failed_flush(
    async_engine: AsyncEngine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    factory = async_sessionmaker(async_engine)
    async with tq.txn.sql.transaction_async(factory) as session:
        disp.add_task(greet("outer"))
        nested = await session.begin_nested()
        disp.add_task(greet("inner"))
        await nested.rollback()

    async def run() -> None:
        async with tq.txn.sql.transaction_async(factory) as session:
            disp.add_task(greet("doomed"))
            await session.execute(text("INSERT INTO rows (key) VALUES ('x')"))
            await session.execute(text("INSERT INTO rows (key) VALUES ('x')"))

    with pytest.raises(IntegrityError):
        await run()
    assert names(sub) == ["outer"]
    assert store.count_reminders() == (0, 0)


async def test_bind_async_session_submits_within_the_awaited_commit(
    async_engine: AsyncEngine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    factory = async_sessionmaker(async_engine)
    async with factory() as session:
        with tq.txn.sql.bind(session):
            await disp.add_task_async(greet("a"))
            await session.commit()
            assert names(sub) == ["a"]  # no task left to drain
            await disp.add_task_async(greet("never"))
            await session.rollback()
    await tq.txn.sql.drain()
    assert names(sub) == ["a"]
    assert store.count_reminders() == (0, 0)


async def test_store_from_async_engine_uses_a_sync_engine(
    async_engine: AsyncEngine, store: SQLStore
) -> None:
    other = SQLStore(async_engine, name="from-async", register=False)
    try:
        assert other.engine.dialect.is_async is False
        assert other.engine.url.database == async_engine.url.database
        assert other.count_reminders() == (0, 0)
    finally:
        other.close()


async def test_in_memory_sqlite_behind_an_async_engine_is_refused() -> None:
    eng = create_async_engine("sqlite+aiosqlite://")
    try:
        with pytest.raises(tq.ConfigError, match="in-memory"):
            SQLStore(eng, register=False)
    finally:
        await eng.dispose()


# Schema.


def test_create_schema_is_idempotent_and_records_the_version(
    engine: Engine, store: SQLStore
) -> None:
    assert store.create_schema() == tq.txn.sql.SCHEMA_VERSION
    assert tq.txn.sql.create_schema(engine) == tq.txn.sql.SCHEMA_VERSION
    with engine.connect() as conn:
        found = conn.execute(text("SELECT component, version FROM tq_schema_version")).all()
    assert [tuple(r) for r in found] == [("outbox", tq.txn.sql.SCHEMA_VERSION)]


def test_concurrent_create_schema_succeeds(db_url: str) -> None:
    eng = make_engine(db_url)
    errors: list[BaseException] = []

    def create() -> None:
        try:
            tq.txn.sql.create_schema(eng)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=create) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        eng.dispose()
    assert errors == []


def test_newer_schema_version_is_refused(engine: Engine, store: SQLStore) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE tq_schema_version SET version = 99"))
    with pytest.raises(tq.ConfigError, match="newer"):
        store.create_schema()


def test_sweep_scan_reads_the_primary_key_index_only(engine: Engine, store: SQLStore) -> None:
    if store.dialect == "sqlite":
        with engine.connect() as conn:
            plan = " ".join(
                str(r[-1])
                for r in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT id, fresh_until FROM tq_reminders "
                    "WHERE parked = 0 AND id >= '1' AND id < '2' ORDER BY id LIMIT 10"
                )
            )
        assert "USING PRIMARY KEY" in plan, plan
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")
        conn.exec_driver_sql("SET enable_bitmapscan = off")
        plan = "\n".join(
            r[0]
            for r in conn.exec_driver_sql(
                "EXPLAIN SELECT id, fresh_until FROM tq_reminders "
                "WHERE NOT parked AND id >= '1' AND id < '2' ORDER BY id LIMIT 10"
            )
        )
    assert "Index Only Scan using tq_reminders_pkey" in plan, plan


def test_deploy_sql_matches_the_packaged_schema() -> None:
    for dialect, file in (
        ("postgresql", "postgres.sql"), ("sqlite", "sqlite.sql"), ("mysql", "mysql.sql"),
    ):  # fmt: skip
        assert (REPO / "deploy" / "sql" / file).read_text() == tq.txn.sql.schema_sql(dialect)


def test_import_tq_txn_sql_needs_no_greenlet_for_sync_use() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['greenlet'] = None\n"
        "import tq.txn.sql, sqlalchemy\n"
        "s = tq.txn.sql.SQLStore(sqlalchemy.create_engine('sqlite://'), register=False)\n"
        "s.create_schema(); print(s.count_reminders())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(0, 0)"


class _HeldSubmitter:
    """Holds every async submit until `release` is set; the sync path is a failure."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.arrived: asyncio.Queue[Submission] = asyncio.Queue()
        self.submitted: list[Submission] = []

    def submit(self, sub: Submission) -> None:
        raise AssertionError("an async helper submitted through the blocking path")

    async def submit_async(self, sub: Submission) -> None:
        self.arrived.put_nowait(sub)
        await self.release.wait()
        self.submitted.append(sub)


async def test_async_helpers_wait_without_blocking_the_loop(
    async_engine: AsyncEngine, store: SQLStore
) -> None:
    held = _HeldSubmitter()
    disp = make_dispatcher(held)
    factory = async_sessionmaker(async_engine)

    async def through_transaction_async() -> None:
        async with tq.txn.sql.transaction_async(factory):
            await disp.add_task_async(greet("helper"))

    # transaction_async awaits its happy path: the block is not over while the
    # submit is held, and the loop runs this test meanwhile.
    committing = asyncio.create_task(through_transaction_async())
    await asyncio.wait_for(held.arrived.get(), 30)
    assert not committing.done()

    # bind(): the awaited commit awaits the happy path too (in SQLAlchemy's
    # greenlet bridge), also without blocking the loop; nothing is left for
    # drain().
    async def through_bind() -> None:
        async with factory() as session:
            with tq.txn.sql.bind(session):
                await disp.add_task_async(greet("bound"))
                await session.commit()

    binding = asyncio.create_task(through_bind())
    await asyncio.wait_for(held.arrived.get(), 30)
    assert not binding.done()
    assert not committing.done()
    assert held.submitted == []

    held.release.set()
    await asyncio.wait_for(asyncio.gather(committing, binding), 30)
    assert sorted(s.payload.name for s in held.submitted) == ["bound", "helper"]  # type: ignore[union-attr]
    await asyncio.wait_for(tq.txn.sql.drain(), 30)
    assert store.count_reminders() == (0, 0)


def test_in_memory_sqlite_works_with_every_helper(
    disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    eng = create_engine("sqlite://")
    store = SQLStore(eng, name="sql-memory")
    try:
        store.create_schema()
        with tq.txn.sql.transaction(sessionmaker(eng)):
            disp.add_task(greet("session"))
        with tq.txn.sql.transaction(eng):
            disp.add_task(greet("core"))
        with Session(eng) as session, tq.txn.sql.bind(session):
            disp.add_task(greet("bound"))
            session.commit()
        assert names(sub) == ["session", "core", "bound"]
        assert store.count_reminders() == (0, 0)
    finally:
        store.close()
        eng.dispose()


def test_core_commit_inside_the_block_submits_what_it_committed(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with tq.txn.sql.transaction(engine) as conn:
        disp.add_task(greet("early"))
        conn.commit()
        disp.add_task(greet("rolled-back"))
        conn.rollback()
        disp.add_task(greet("late"))
    assert sorted(names(sub)) == ["early", "late"]
    assert store.count_reminders() == (0, 0)


def test_core_commit_inside_the_block_is_read_back_before_submitting(
    engine: Engine, store: SQLStore, disp: tq.Dispatcher, sub: RecordingSubmitter
) -> None:
    with tq.txn.sql.transaction(engine) as conn:
        disp.add_task(greet("doomed"))
        conn.execute(text("DELETE FROM tq_reminders"))  # as if the commit lost it
        conn.commit()
        disp.add_task(greet("late"))
    assert names(sub) == ["late"]
