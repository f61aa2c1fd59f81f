"""Effectively-once handlers on SQLite and PostgreSQL (`tq.txn.sql.once`, `mark_done`).

The failure that matters: the handler's transaction commits, then its
response is lost (tqtesting's `lose_response`), and the redelivery must not
repeat the effects. Also: the async and Core twins, a handler that raises,
concurrent duplicate deliveries, retention, expiry and the schema migration.
The crash tests with real processes are in tests/e2e/test_once_crash.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

import tq
import tq.txn.sql
import tqtesting
from tests import _once
from tests._sqlapp import db_url_fixture  # noqa: F401
from tests.conformance.harness_sql import make_engine
from tests.testpb import payloads_pb2 as pb
from tq._execution import ExecutionInfo, executing
from tq.txn.sql import SQLStore

DAY = dt.timedelta(days=1)


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(db_url)
    store = SQLStore(eng, name="once-test")
    store.create_schema()
    with eng.begin() as conn:
        conn.exec_driver_sql(_once.LEDGER_DDL)
    yield eng
    store.close()
    eng.dispose()


@pytest.fixture
def sessions(engine: sa.Engine) -> sessionmaker[Session]:
    return sessionmaker(engine)


@pytest.fixture
async def async_sessions(db_url: str, engine: sa.Engine) -> AsyncIterator[Any]:
    url = db_url.replace("sqlite://", "sqlite+aiosqlite://").replace("+psycopg", "+psycopg_async")
    eng = create_async_engine(url)
    yield async_sessionmaker(eng)
    await eng.dispose()


@pytest.fixture
def disp() -> tq.Dispatcher:
    return _once.dispatcher()


def _info(task_id: str = "t1", **kw: Any) -> ExecutionInfo:
    return ExecutionInfo(task_class=_once.PAY, task_id=task_id, queue="default", **kw)


# The failure that matters, in tqtesting: committed, then the response lost.


def test_redelivery_after_a_lost_response_does_not_repeat_the_effects(
    engine: sa.Engine, sessions: sessionmaker[Session], disp: tq.Dispatcher
) -> None:
    _once.register_pay(disp, sessions)
    with tqtesting.testing_context(disp) as sched:
        disp.add_task(tq.Task(payload=pb.Greet(name="ada")))
        sched.run(tqtesting.lose_response(_once.PAY), tqtesting.stop_when_drained())
        (pay,) = sched.tasks().of_class(_once.PAY)
        receipts = sched.tasks().of_class(_once.RECEIPT)
    assert [a.outcome for a in pay.history] == ["lost", "ok"]
    assert _once.ledger(engine) == ["ada"]
    assert [r.payload for r in receipts] == [pb.Count(tag="ada")]  # added once, with the effects
    assert receipts[0].reminder_id  # through the outbox: in the handler's transaction
    assert tq._metrics.value("tq_markers_found", task_class=_once.PAY) >= 1


def test_a_transactional_task_is_run_once_whatever_the_deliveries(
    engine: sa.Engine, sessions: sessionmaker[Session], disp: tq.Dispatcher
) -> None:
    _once.register_pay(disp, sessions)
    with tqtesting.testing_context(disp) as sched:
        with tq.txn.sql.transaction(sessions):
            disp.add_task(tq.Task(payload=pb.Greet(name="grace")))  # a reminder: named by its ID
        sched.run(tqtesting.lose_response(_once.PAY, times=3), tqtesting.stop_when_drained())
        (pay,) = sched.tasks().of_class(_once.PAY)
    assert [a.outcome for a in pay.history] == ["lost", "lost", "lost", "ok"]
    assert _once.ledger(engine) == ["grace"]
    (marker,) = _once.markers(engine)
    assert marker.startswith(f"default/{pay.reminder_id}/")


async def test_the_async_twin_runs_once_after_a_lost_response(
    engine: sa.Engine, async_sessions: async_sessionmaker[AsyncSession], disp: tq.Dispatcher
) -> None:
    runs: list[str] = []

    @disp.task_class(id="pay-async", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    @tq.txn.sql.once_async(async_sessions)
    async def pay(payload: pb.Greet, session: AsyncSession) -> None:
        runs.append(payload.name)
        await session.execute(
            sa.text("INSERT INTO ledger (name, pid) VALUES (:n, 0)"), {"n": payload.name}
        )

    with tqtesting.testing_context(disp) as sched:
        await disp.add_task_async(tq.Task(payload=pb.Greet(name="lin")))
        await sched.run_async(tqtesting.lose_response("pay-async"), tqtesting.stop_when_drained())
        (rec,) = sched.tasks()
    assert [a.outcome for a in rec.history] == ["lost", "ok"]
    assert runs == ["lin"]
    assert _once.ledger(engine) == ["lin"]


def test_the_core_twin_hands_the_handler_a_connection(
    engine: sa.Engine, disp: tq.Dispatcher
) -> None:
    @disp.task_class(id="pay-core", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    @tq.txn.sql.once(engine)
    def pay(payload: pb.Greet, conn: sa.Connection) -> None:
        conn.execute(sa.text("INSERT INTO ledger (name, pid) VALUES (:n, 0)"), {"n": payload.name})

    with tqtesting.testing_context(disp) as sched:
        disp.add_task(tq.Task(payload=pb.Greet(name="core")))
        sched.run(tqtesting.lose_response("pay-core"), tqtesting.stop_when_drained())
    assert _once.ledger(engine) == ["core"]


# A handler that raises.


def test_a_handler_that_raises_leaves_no_marker_and_no_effects(
    engine: sa.Engine, sessions: sessionmaker[Session], disp: tq.Dispatcher
) -> None:
    failures = [RuntimeError("first attempt fails after its insert")]

    def fail_once(payload: pb.Greet, session: Session) -> None:
        if failures:
            raise failures.pop()

    _once.register_pay(disp, sessions, on_run=fail_once)
    with tqtesting.testing_context(disp, raise_on_task_error=False) as sched:
        disp.add_task(tq.Task(payload=pb.Greet(name="bo")))
        sched.run(tqtesting.stop_after_task(_once.PAY))
        assert (_once.ledger(engine), _once.markers(engine)) == ([], [])
        assert len(sched.tasks().of_class(_once.RECEIPT)) == 0  # its reminder rolled back too
        sched.run(tqtesting.stop_when_drained())
        (pay,) = sched.tasks().of_class(_once.PAY)
    assert [a.outcome for a in pay.history] == ["error", "ok"]
    assert _once.ledger(engine) == ["bo"]
    assert len(_once.markers(engine)) == 1


def test_fatal_drops_the_task_and_rolls_back_its_marker(
    engine: sa.Engine, sessions: sessionmaker[Session], disp: tq.Dispatcher
) -> None:
    def fatal(payload: pb.Greet, session: Session) -> None:
        raise tq.Fatal("bad payment")

    _once.register_pay(disp, sessions, on_run=fatal)
    with tqtesting.testing_context(disp) as sched:
        disp.add_task(tq.Task(payload=pb.Greet(name="x")))
        sched.run(tqtesting.stop_when_drained())
        (pay,) = sched.tasks().of_class(_once.PAY)
    assert pay.outcome == "fatal"
    assert (_once.ledger(engine), _once.markers(engine)) == ([], [])


# Concurrent duplicate deliveries.


@pytest.mark.postgres
@pytest.mark.parametrize("first_commits", [True, False], ids=["first-commits", "first-fails"])
def test_a_concurrent_duplicate_waits_on_the_marker_then_runs_only_if_needed(
    postgres_db_url: str, first_commits: bool
) -> None:
    engine = make_engine(postgres_db_url)
    store = SQLStore(engine, name="once-pg")
    store.create_schema()
    with engine.begin() as conn:
        conn.exec_driver_sql(_once.LEDGER_DDL)
    sessions = sessionmaker(engine)
    try:
        _concurrent_duplicates(engine, sessions, first_commits)
    finally:
        store.close()
        engine.dispose()


def _concurrent_duplicates(
    engine: sa.Engine, sessions: sessionmaker[Session], first_commits: bool
) -> None:
    inside = threading.Event()
    release = threading.Event()
    runs: list[str] = []

    @tq.txn.sql.once(sessions)
    def handler(payload: pb.Greet, session: Session) -> None:
        session.execute(sa.text("INSERT INTO ledger (name, pid) VALUES ('dup', 0)"))
        runs.append(threading.current_thread().name)
        if threading.current_thread().name == "first":
            inside.set()
            assert release.wait(60)
            if not first_commits:
                raise RuntimeError("the first delivery fails after its insert")

    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            with executing(_info("dup-task", expected_eta=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))):
                handler(pb.Greet(name="dup"))
        except BaseException as e:
            errors.append(e)

    first = threading.Thread(target=deliver, name="first")
    second = threading.Thread(target=deliver, name="second")
    first.start()
    assert inside.wait(60)
    second.start()
    # The second delivery's marker INSERT waits on the first's uncommitted key.
    _wait_for_a_lock_wait(engine)
    assert runs == ["first"]
    release.set()
    first.join(60)
    second.join(60)
    assert _once.ledger(engine) == ["dup"]
    if first_commits:
        assert (runs, errors) == (["first"], [])
    else:
        assert runs == ["first", "second"]
        assert [str(e) for e in errors] == ["the first delivery fails after its insert"]
    assert len(_once.markers(engine)) == 1


def _wait_for_a_lock_wait(engine: sa.Engine, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    pause = 0.01
    if engine.dialect.name in ("mysql", "mariadb"):
        query = sa.text(
            "SELECT count(*) FROM information_schema.innodb_trx "
            "WHERE trx_state = 'LOCK WAIT' AND trx_query LIKE :q"
        )
        pattern = "INSERT IGNORE INTO tq_done%"
        # InnoDB refreshes this table's cache only when it was not read for 0.1 s.
        pause = 0.2
    else:
        query = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE :q"
        )
        pattern = "INSERT INTO tq_done%"
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(query, {"q": pattern}).scalar_one():
                return
        time.sleep(pause)
    raise AssertionError("no delivery waited on the marker's key")


def test_mark_done_says_whether_the_marker_is_new(
    engine: sa.Engine, sessions: sessionmaker[Session]
) -> None:
    with tq.txn.sql.transaction(sessions) as s:
        assert tq.txn.sql.mark_done(s, "q/t")
    with tq.txn.sql.transaction(sessions) as s:
        assert not tq.txn.sql.mark_done(s, "q/t")
    with engine.connect() as conn:  # a Core connection, outside tq's helpers
        assert tq.txn.sql.mark_done(conn, "q/u")
        conn.rollback()
        assert tq.txn.sql.mark_done(conn, "q/u")
        conn.commit()
    assert _once.markers(engine) == ["q/t", "q/u"]


def test_mark_done_refuses_an_async_session(engine: sa.Engine, db_url: str) -> None:
    with pytest.raises(tq.ConfigError, match="mark_done_async"):
        tq.txn.sql.mark_done(object(), "q/t")  # type: ignore[arg-type]


# The key.


def test_a_push_without_a_task_name_is_refused_before_any_write(
    engine: sa.Engine, sessions: sessionmaker[Session]
) -> None:
    @tq.txn.sql.once(sessions)
    def handler(payload: pb.Greet, session: Session) -> None:
        raise AssertionError("never runs")

    with executing(ExecutionInfo(task_class="pay")), pytest.raises(tq.ConfigError, match="name"):
        handler(pb.Greet())
    assert _once.markers(engine) == []


def test_a_deduplicated_task_added_again_later_runs_again(
    engine: sa.Engine, sessions: sessionmaker[Session], disp: tq.Dispatcher
) -> None:
    # Two adds of one deduplication key, the second after the queue forgot
    # the first name, are two tasks: their expected ETAs tell them apart.
    _once.register_pay(disp, sessions)
    for minute in (0, 90):
        clock = tqtesting.FakeClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + minute * 60 * _SEC)
        with tqtesting.testing_context(disp, clock) as sched:
            disp.add_task(tq.Task(payload=pb.Greet(name="daily"), deduplication_key="daily"))
            sched.run(tqtesting.lose_response(_once.PAY), tqtesting.stop_when_drained())
    assert _once.ledger(engine) == ["daily", "daily"]
    a, b = _once.markers(engine)
    assert a.rsplit("/", 1)[0] == b.rsplit("/", 1)[0]  # one task name, two markers


_SEC = dt.timedelta(seconds=1)


# Retention and expiry.


def test_the_marker_expires_after_the_default_retention(
    engine: sa.Engine, sessions: sessionmaker[Session]
) -> None:
    clock = tqtesting.FakeClock()
    with tq.clock.use_clock(clock), tq.txn.sql.transaction(sessions) as s:
        tq.txn.sql.mark_done(s, "q/t")
    with engine.connect() as conn:
        row = conn.execute(sa.select(tq.txn.sql._schema.done.c.expires_at)).scalar_one()
    assert row == clock.now() + tq.txn.DEFAULT_MARKER_RETENTION
    assert dt.timedelta(days=31) < tq.txn.DEFAULT_MARKER_RETENTION  # Cloud Tasks' task lifetime


@pytest.mark.parametrize(
    "retention", [dt.timedelta(hours=23), dt.timedelta(0), -DAY, dt.timedelta(days=3651)]
)
def test_a_retention_out_of_bounds_is_refused_at_start_up(
    sessions: sessionmaker[Session], retention: dt.timedelta
) -> None:
    with pytest.raises(tq.ConfigError, match="retention"):
        tq.txn.sql.once(sessions, retention=retention)
    with pytest.raises(tq.ConfigError, match="retention"), tq.txn.sql.transaction(sessions) as s:
        tq.txn.sql.mark_done(s, "q/t", retention=retention)


def test_retentions_at_the_bounds_are_accepted(sessions: sessionmaker[Session]) -> None:
    for retention in (tq.txn.MIN_MARKER_RETENTION, tq.txn.MAX_MARKER_RETENTION):
        tq.txn.sql.once(sessions, retention=retention)


def test_expired_markers_are_removed_in_batches_and_live_ones_kept(
    engine: sa.Engine, sessions: sessionmaker[Session]
) -> None:
    clock = tqtesting.FakeClock()
    with tq.clock.use_clock(clock):
        for i in range(5):
            with tq.txn.sql.transaction(sessions) as s:
                tq.txn.sql.mark_done(s, f"q/old-{i}", retention=DAY)
        with tq.txn.sql.transaction(sessions) as s:
            tq.txn.sql.mark_done(s, "q/young", retention=3 * DAY)
        assert tq.txn.sql.count_markers(engine) == (6, 0)
        clock.advance(DAY)  # the old ones expire now: expires_at <= now
        assert tq.txn.sql.count_markers(engine) == (1, 5)
        assert tq.txn.sql.expire_markers(engine, batch_size=2, max_batches=1) == 2
        assert tq.txn.sql.expire_markers(engine, batch_size=2) == 3
        assert tq.txn.sql.expire_markers(engine) == 0
    assert _once.markers(engine) == ["q/young"]


def test_an_expired_marker_no_longer_stops_a_redelivery(
    engine: sa.Engine, sessions: sessionmaker[Session]
) -> None:
    clock = tqtesting.FakeClock()
    with tq.clock.use_clock(clock):
        with tq.txn.sql.transaction(sessions) as s:
            assert tq.txn.sql.mark_done(s, "q/t", retention=DAY)
        clock.advance(2 * DAY)
        assert tq.txn.sql.expire_markers(engine) == 1
        with tq.txn.sql.transaction(sessions) as s:
            assert tq.txn.sql.mark_done(s, "q/t", retention=DAY)


# For integrations with a connection of their own (DB-API).


def test_insert_marker_writes_through_a_dbapi_cursor(engine: sa.Engine, db_url: str) -> None:
    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    if engine.dialect.name == "sqlite":
        raw: Any = sqlite3.connect(engine.url.database or "")
        style = "qmark"
    else:
        import psycopg

        raw = psycopg.connect(db_url.replace("+psycopg", ""))
        style = "format"
    try:
        cur = raw.cursor()
        dialect = engine.dialect.name
        assert tq.txn.insert_marker(cur, "q/raw", when, dialect=dialect, paramstyle=style)
        assert not tq.txn.insert_marker(cur, "q/raw", when, dialect=dialect, paramstyle=style)
        raw.commit()
    finally:
        raw.close()
    with engine.connect() as conn:
        got = conn.execute(sa.select(tq.txn.sql._schema.done.c.expires_at)).scalar_one()
    assert got == when


# The schema.


def test_a_version_1_database_is_migrated_to_the_marker_table(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE tq_done")
        conn.exec_driver_sql("UPDATE tq_schema_version SET version = 1 WHERE component = 'outbox'")
    assert tq.txn.sql.create_schema(engine) == 2
    assert sa.inspect(engine).has_table("tq_done")
    assert {i["name"] for i in sa.inspect(engine).get_indexes("tq_done")} == {"tq_done_expires"}


# A handler of one's own: a CustomPayload pushed to a route of the app.


async def test_a_custom_payload_route_runs_once_through_mark_done(
    engine: sa.Engine, sessions: sessionmaker[Session]
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from tq import dbqueue

    dbqueue.create_schema(engine)
    answers = [503]  # the first answer, sent after the commit, is lost (a 5xx)

    def charge(headers: dict[str, str], body: bytes) -> int:
        key = tq.txn.marker_key(tq.ExecutionInfo.from_headers("charge", headers))
        with tq.txn.sql.transaction(sessions) as s:
            if tq.txn.sql.mark_done(s, key):
                s.execute(sa.text("INSERT INTO ledger (name, pid) VALUES (:n, 0)"), {"n": body})
        return answers.pop() if answers else 200

    async def route(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = (await request.body()).decode()
        return Response(status_code=await asyncio.to_thread(charge, headers, body))

    app = Starlette(routes=[Route("/custom/charge", route, methods=["POST"])])
    disp = _once.dispatcher(submitter=dbqueue.DbQueueSubmitter(engine))
    disp.register_task_class(
        tq.TaskClass(
            id="charge", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="custom",
            custom=lambda p: tq.CustomPayload(body=p.name.encode(), relative_uri="/custom/charge"),
        )
    )  # fmt: skip
    clock = tqtesting.FakeClock()
    with tq.clock.use_clock(clock):
        disp.add_task(tq.Task(payload=pb.Greet(name="own")))
        admin = dbqueue.Admin(engine)
        async with dbqueue.Worker(engine, app=app) as worker:
            for _ in range(60):  # the retry comes after the queue's backoff
                await worker.run_once()
                if admin.count_tasks(state=dbqueue.State.DONE) == 1:
                    break
                clock.advance(1)
    (task,) = admin.list_tasks(task_class="charge")
    assert (task.state, task.attempts) == (dbqueue.State.DONE, 2)
    assert _once.ledger(engine) == ["own"]
    assert len(_once.markers(engine)) == 1


def test_sync_and_async_twins_refuse_each_other_at_start_up(
    sessions: sessionmaker[Session], async_sessions: async_sessionmaker[AsyncSession]
) -> None:
    async def async_handler(payload: pb.Greet, session: Any) -> None:
        pass

    def sync_handler(payload: pb.Greet, session: Any) -> None:
        pass

    with pytest.raises(tq.ConfigError, match="once_async"):
        tq.txn.sql.once(sessions)(async_handler)
    with pytest.raises(tq.ConfigError, match="once_async"):
        tq.txn.sql.once(async_sessions)  # type: ignore[call-overload]
    with pytest.raises(tq.ConfigError, match="not an async def handler"):
        tq.txn.sql.once_async(async_sessions)(sync_handler)  # type: ignore[arg-type]
