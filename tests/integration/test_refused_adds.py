"""Nothing is written or submitted for a refused add_task, inside a transaction
(SQLite, PostgreSQL, the Spanner emulator, the database queue's rows) and
outside one; and the happy path and the sweeper absorb their own resubmissions
even for a class that asks add_task to raise."""

from __future__ import annotations

import datetime as dt
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

import tq
import tq.txn.sql
from sweeper import InProcSweeper
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue
from tqtesting import FakeClock


class Recorder:
    """A submitter that records, and answers ALREADY_EXISTS while `exists` is set."""

    def __init__(self) -> None:
        self.submitted: list[tq.Submission] = []
        self.exists = False

    def submit(self, submission: tq.Submission) -> None:
        self.submitted.append(submission)
        if self.exists:
            raise tq.SubmitError(grpc.StatusCode.ALREADY_EXISTS, "created by someone else first")

    async def submit_async(self, submission: tq.Submission) -> None:
        self.submit(submission)


def _dispatcher(submitter: tq.Submitter) -> tq.Dispatcher:
    disp = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host="app.example.com",
        submitter=submitter,
    )  # fmt: skip
    for cls in (
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, queue="q",
                     raise_if_exists=True),
        tq.TaskClass(id="count", prototype=pb.Count, kind=tq.Kind.TRANSACTIONAL, queue="q"),
        tq.TaskClass(id="blob", prototype=pb.Blob, kind=tq.Kind.NON_TRANSACTIONAL, queue="q"),
    ):  # fmt: skip
        disp.register_task_class(cls)
    return disp


GOOD = tq.Task(payload=pb.Greet(name="good"))

# A batch whose last task is refused: (the batch, the error, what it says).
IN_TXN_REFUSALS: list[tuple[str, list[tq.Task], type[Exception], str]] = [
    ("unknown type", [GOOD, tq.Task(payload=pb.Fail())], tq.ValidationError, "no task class"),
    ("bad title", [GOOD, tq.Task(payload=pb.Greet(), title="a b")], tq.ValidationError, "title"),
    ("dedup key in a txn", [GOOD, tq.Task(payload=pb.Greet(), deduplication_key="k")],
     tq.ValidationError, "deduplication key"),
    ("non-transactional in a txn", [GOOD, tq.Task(payload=pb.Blob())], tq.TransactionError,
     "NON_TRANSACTIONAL"),
    ("too large", [GOOD, tq.Task(payload=pb.Greet(name="x" * 1_100_000))], tq.PayloadTooLarge,
     "bytes"),
    ("eta too far", [GOOD, tq.Task(payload=pb.Greet(), delay=dt.timedelta(days=31))],
     tq.ValidationError, "30 days"),
    ("not a task", [GOOD, pb.Greet()], tq.ValidationError, "tq.Task"),  # type: ignore[list-item]
]  # fmt: skip
_IDS = [r[0] for r in IN_TXN_REFUSALS]


# SQL stores.


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        e = dbqueue.sqlite_engine(tmp_path / "app.db")
    else:
        e = sa.create_engine(request.getfixturevalue("postgres_db_url"))
    with e.begin() as conn:
        conn.execute(sa.text("CREATE TABLE orders (id VARCHAR(40) PRIMARY KEY)"))
    yield e
    e.dispose()


@pytest.fixture
def store(engine: sa.Engine) -> Iterator[tq.txn.sql.SQLStore]:
    s = tq.txn.sql.SQLStore(engine, name="refused-adds", register=False)
    s.create_schema()
    yield s
    s.close()


def _orders(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(sa.text("SELECT id FROM orders"))]


@pytest.mark.parametrize(("case", "batch", "error", "says"), IN_TXN_REFUSALS, ids=_IDS)
def test_a_refused_add_in_a_sql_transaction_writes_nothing(
    engine: sa.Engine,
    store: tq.txn.sql.SQLStore,
    case: str,
    batch: list[tq.Task],
    error: type[Exception],
    says: str,
) -> None:
    rec = Recorder()
    disp = _dispatcher(rec)
    with tq.txn.sql.transaction(sessionmaker(engine), store=store) as session:
        session.execute(sa.text("INSERT INTO orders (id) VALUES ('o-1')"))
        with pytest.raises(error, match=says):
            disp.add_task(*batch)
    assert _orders(engine) == ["o-1"]  # the transaction committed
    assert store.count_reminders() == (0, 0)
    assert rec.submitted == []


@pytest.mark.parametrize(("case", "batch", "error", "says"), IN_TXN_REFUSALS, ids=_IDS)
def test_a_refused_add_writes_no_database_queue_row_in_the_transaction(
    engine: sa.Engine,
    store: tq.txn.sql.SQLStore,
    case: str,
    batch: list[tq.Task],
    error: type[Exception],
    says: str,
) -> None:
    dbqueue.create_schema(engine)
    disp = _dispatcher(dbqueue.DbQueueSubmitter(engine))
    with tq.txn.sql.transaction(engine, store=store) as conn:
        conn.execute(sa.text("INSERT INTO orders (id) VALUES ('o-1')"))
        with pytest.raises(error, match=says):
            disp.add_task(*batch)
    assert _orders(engine) == ["o-1"]
    assert dbqueue.Admin(engine).count_tasks() == 0


OUTSIDE_REFUSALS: list[tuple[str, list[tq.Task], type[Exception], str]] = [
    ("transactional outside", [GOOD, tq.Task(payload=pb.Count(n=1))], tq.TransactionError,
     "TRANSACTIONAL"),
    ("bad title", [GOOD, tq.Task(payload=pb.Greet(), title="a?b")], tq.ValidationError, "title"),
    ("too large", [GOOD, tq.Task(payload=pb.Greet(name="x" * 1_100_000))], tq.PayloadTooLarge,
     "bytes"),
    ("both delay and eta", [GOOD, tq.Task(payload=pb.Greet(), delay=dt.timedelta(1),
                                          eta=dt.datetime.now(dt.UTC))],
     tq.ValidationError, "not both"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "batch", "error", "says"), OUTSIDE_REFUSALS, ids=[r[0] for r in OUTSIDE_REFUSALS]
)
async def test_a_refused_add_outside_a_transaction_submits_nothing(
    engine: sa.Engine,
    case: str,
    batch: list[tq.Task],
    error: type[Exception],
    says: str,
) -> None:
    dbqueue.create_schema(engine)
    queue = _dispatcher(dbqueue.DbQueueSubmitter(engine))
    rec = Recorder()
    recorded = _dispatcher(rec)
    for disp in (queue, recorded):
        with pytest.raises(error, match=says):
            disp.add_task(*batch)
        with pytest.raises(error, match=says):
            await disp.add_task_async(*batch)
    assert dbqueue.Admin(engine).count_tasks() == 0
    assert rec.submitted == []


# The happy path and the sweeper keep absorbing.


def test_the_happy_path_absorbs_its_own_resubmission_for_a_raising_class(
    engine: sa.Engine, store: tq.txn.sql.SQLStore
) -> None:
    rec = Recorder()
    rec.exists = True  # e.g. a sweeper got there first
    disp = _dispatcher(rec)
    with tq.txn.sql.transaction(engine, store=store):
        (added,) = disp.add_task(tq.Task(payload=pb.Greet(name="a")), raise_if_exists=True)
    assert [s.reminder_id for s in rec.submitted] == [added.reminder_id]
    assert store.count_reminders() == (0, 0)  # done, not parked nor kept


def test_the_sweeper_absorbs_its_own_resubmission_for_a_raising_class(
    engine: sa.Engine, store: tq.txn.sql.SQLStore
) -> None:
    clock = FakeClock()
    rec = Recorder()
    disp = _dispatcher(rec)
    disp.configure(sweeper=InProcSweeper(stores=[store]))
    with tq.clock.use_clock(clock):
        with tq.txn.sql.transaction(engine, store=store, deadline=clock.now()):
            (added,) = disp.add_task(tq.Task(payload=pb.Greet(name="a")))  # left to the sweeper
        assert store.count_reminders() == (1, 0)
        rec.exists = True  # submitted before, by a sweep whose delete was lost
        clock.advance(dt.timedelta(minutes=5))
        disp.sweep()
    assert [s.reminder_id for s in rec.submitted] == [added.reminder_id]
    assert store.count_reminders() == (0, 0)


# Spanner.


@pytest.fixture
def orders_db(spanner_emulator: Any) -> Iterator[Any]:
    db = spanner_emulator.create_database(
        extra_ddl=["CREATE TABLE Orders (ID STRING(MAX) NOT NULL) PRIMARY KEY (ID)"]
    )
    try:
        yield db
    finally:
        spanner_emulator.drop_database(db)


@pytest.fixture
def spanner_store(orders_db: Any) -> Iterator[Any]:
    from tq.txn.spanner import SpannerStore

    s = SpannerStore(orders_db, name="refused-adds-spanner", retry=0.01)
    try:
        yield s
    finally:
        tq.txn.unregister_store(s.name)


def _spanner_orders(db: Any) -> list[str]:
    with db.snapshot() as snap:
        return [r[0] for r in snap.execute_sql("SELECT ID FROM Orders")]


@pytest.mark.spanner
@pytest.mark.parametrize(("case", "batch", "error", "says"), IN_TXN_REFUSALS, ids=_IDS)
def test_a_refused_add_in_a_spanner_transaction_writes_nothing(
    orders_db: Any,
    spanner_store: Any,
    case: str,
    batch: list[tq.Task],
    error: type[Exception],
    says: str,
) -> None:
    rec = Recorder()
    disp = _dispatcher(rec)
    raised: list[Exception] = []

    def work(transaction: Any) -> None:
        transaction.insert("Orders", ["ID"], [["o-1"]])
        try:
            disp.add_task(*batch)
        except Exception as e:
            raised.append(e)

    run: Callable[..., Any] = spanner_store.run_in_transaction
    run(work)
    assert _spanner_orders(orders_db) == ["o-1"]  # the transaction committed
    assert len(raised) == 1
    assert isinstance(raised[0], error)
    assert says in str(raised[0])
    assert spanner_store.count_reminders() == (0, 0)
    assert rec.submitted == []


@pytest.mark.spanner
def test_a_spanner_transactional_task_hands_back_its_reminder_id(spanner_store: Any) -> None:
    rec = Recorder()
    disp = _dispatcher(rec)
    got: list[tq.AddedTask] = []

    def work(transaction: Any) -> None:
        transaction.insert("Orders", ["ID"], [["o-1"]])
        got.extend(disp.add_task(tq.Task(payload=pb.Count(n=1))))

    spanner_store.run_in_transaction(work)
    (added,) = got
    assert added.name == f"projects/proj/locations/us-central1/queues/q/tasks/{added.reminder_id}"
    assert [s.reminder_id for s in rec.submitted] == [added.reminder_id]  # the happy path ran
