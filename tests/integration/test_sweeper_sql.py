"""Sweeping the SQL outbox (tq.txn.sql) on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import collections
import datetime as dt
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import sessionmaker

import tq
import tq.txn.sql
from sweeper import DistributedSweeper, InProcSweeper
from tests import _sweeping as sw
from tests.testpb import payloads_pb2 as pb
from tq.txn.sql import SQLStore
from tqtesting import FakeClock, Scheduler, parallel, stop_when_drained

SPACE = 1 << 12


def make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_size=20, max_overflow=20)
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _wal(dbapi_conn: object, _record: object) -> None:
        cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
        cur.execute("PRAGMA journal_mode=WAL")
        cur.close()

    return engine


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/outbox.db"
    else:
        url = request.getfixturevalue("postgres_db_url")
    eng = make_engine(url)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE orders (id TEXT PRIMARY KEY)"))
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine: Engine) -> Iterator[SQLStore]:
    s = SQLStore(engine, name="sweep-sql", register=False)
    s.create_schema()
    yield s
    s.close()


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    clk = FakeClock()
    with tq.clock.use_clock(clk):
        yield clk


def commit_orders(
    disp: tq.Dispatcher, store: SQLStore, names: list[str], *, stale: bool, per_txn: int = 50
) -> None:
    """Commits an order row and a greeting per name through tq.txn.sql.transaction.

    stale=True: the request deadline has passed by the commit, so the happy
    path leaves the reminders to the sweeper (as if the process had died).
    """
    sessions = sessionmaker(store.engine)
    deadline = tq.clock.now() if stale else None
    for i in range(0, len(names), per_txn):
        with tq.txn.sql.transaction(sessions, store=store, deadline=deadline) as session:
            for name in names[i : i + per_txn]:
                session.execute(text("INSERT INTO orders (id) VALUES (:id)"), {"id": name})
                disp.add_task(tq.Task(payload=pb.Greet(name=name)))


class Down:
    def submit(self, sub: tq.Submission) -> None:
        raise ConnectionError("network unreachable")

    async def submit_async(self, sub: tq.Submission) -> None:
        raise ConnectionError("network unreachable")


def tiny_sweeper(store: SQLStore, **kw: object) -> InProcSweeper:
    opts: dict[str, object] = {
        "stores": [store],
        "key_space": SPACE,
        "sweep_shards": 4,
        "tasks_per_scan": 6,
        "secondary_scan_shards": 4,
        "max_depth": 10,
        "submit_batch_size": 4,
        "submit_concurrency": 4,
    }
    opts.update(kw)
    return InProcSweeper(**opts)  # type: ignore[arg-type]


def test_stale_backlog_is_swept_completely_and_fresh_reminders_stay(
    store: SQLStore, clock: FakeClock
) -> None:
    cloud = sw.Cloud()
    disp = sw.dispatcher(submitter=cloud, ids=sw.unique_ids(300, SPACE))
    commit_orders(disp, store, [f"s{i}" for i in range(200)], stale=True)
    # The happy path fails (the network is down): the reminders stay, fresh a minute.
    disp.configure(submitter=Down())
    commit_orders(disp, store, [f"f{i}" for i in range(100)], stale=False)
    assert store.count_reminders() == (300, 0)

    sweeper = tiny_sweeper(store)
    disp.configure(submitter=cloud, sweeper=sweeper)
    disp.sweep()
    assert sweeper.last_stats is not None
    assert sweeper.last_stats.deepest >= 2
    assert len(cloud.created) == 200
    assert set(cloud.calls.values()) == {1}
    assert store.count_reminders() == (100, 0)  # the fresh ones wait

    clock.advance(dt.timedelta(minutes=1))
    disp.sweep()
    assert len(cloud.created) == 300
    assert store.count_reminders() == (0, 0)


async def test_async_sweep_empties_the_backlog(store: SQLStore, clock: FakeClock) -> None:
    cloud = sw.Cloud()
    disp = sw.dispatcher(submitter=cloud, ids=sw.unique_ids(120, SPACE))
    commit_orders(disp, store, [f"a{i}" for i in range(120)], stale=True)
    disp.configure(sweeper=tiny_sweeper(store))
    await disp.sweep_async()
    assert len(cloud.created) == 120
    assert store.count_reminders() == (0, 0)


def test_two_sweepers_at_once_submit_each_reminder_once(store: SQLStore, clock: FakeClock) -> None:
    disp = sw.dispatcher(submitter=sw.Cloud(), ids=sw.unique_ids(300, SPACE))
    commit_orders(disp, store, [f"t{i}" for i in range(300)], stale=True)
    cloud = sw.Cloud()
    vias = [sw.Via(cloud), sw.Via(cloud)]
    sweepers = [tiny_sweeper(store, sweep_shards=8, tasks_per_scan=10) for _ in vias]
    start = threading.Barrier(2)

    def run(via: sw.Via, sweeper: InProcSweeper) -> None:
        start.wait(30)
        sw.dispatcher(submitter=via, sweeper=sweeper).sweep()

    threads = [threading.Thread(target=run, args=vs) for vs in zip(vias, sweepers, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(cloud.created) == 300
    # Leases split the work: no name went out twice, from either sweeper.
    assert set(cloud.calls.values()) == {1}
    assert not set(vias[0].names) & set(vias[1].names)
    assert store.count_reminders() == (0, 0)


def test_distributed_sweep_runs_each_committed_task_once(store: SQLStore, clock: FakeClock) -> None:
    disp = sw.dispatcher(ids=sw.unique_ids(150, 1 << 128))
    scheduler = Scheduler(disp, clock=clock)
    disp.configure(submitter=scheduler)
    greeted: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def greet(payload: pb.Greet) -> None:
        with lock:
            greeted[payload.name] += 1

    disp.attach_handler("greet", greet)  # type: ignore[arg-type]
    DistributedSweeper(
        disp, stores=[store], sweep_shards=4, tasks_per_scan=10, secondary_scan_shards=4,
        max_depth=10, submit_batch_size=4,
    )  # fmt: skip
    names = [f"d{i}" for i in range(150)]
    commit_orders(disp, store, names, stale=True)
    assert len(scheduler.tasks()) == 0
    disp.sweep()
    disp.sweep()  # an overlapping second sweep
    scheduler.run(stop_when_drained(), parallel(4))
    assert greeted == dict.fromkeys(names, 1)
    assert store.count_reminders() == (0, 0)
    sweeps = scheduler.tasks().of_class("tq-sweep")
    assert len(sweeps) > 8
    assert all(t.attempts == 1 and t.outcome == "ok" for t in sweeps)


@pytest.mark.parametrize("cursors", ["Cursor", "ClientCursor"])
def test_a_postgres_scan_reads_whole_reminders_and_leaves_the_connections_as_they_were(
    postgres_db_url: str, clock: FakeClock, cursors: str
) -> None:
    import psycopg

    factory = getattr(psycopg, cursors)
    engine = create_engine(postgres_db_url, connect_args={"cursor_factory": factory})
    store = SQLStore(engine, name="sweep-sql-scan", register=False)
    try:
        store.create_schema()
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY)"))
        disp = sw.dispatcher(submitter=sw.Cloud())
        commit_orders(disp, store, [f"o{i}" for i in range(8)], stale=True)
        everything = ("", tq.txn.key_bound(tq.txn.KEY_SPACE))
        keys = store.fetch_reminder_keys(*everything, 100)
        by_id = {r.id: r for r in store.fetch_reminders([k.id for k in keys])}
        assert store.scan_reminders(*everything, 100) == [by_id[k.id] for k in keys]
        with engine.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            assert dbapi.cursor_factory is factory  # type: ignore[attr-defined]
            assert conn.exec_driver_sql("SELECT '\\x01'::bytea").scalar_one() == b"\x01"
    finally:
        store.close()
        engine.dispose()
