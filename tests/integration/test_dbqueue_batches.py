"""The database queue writes a batch of tasks in one statement, in and out of a transaction.

On SQLite, PostgreSQL and MariaDB: `add_task(*tasks)` outside a transaction
is one INSERT and one commit; inside `tq.txn.sql.transaction` (Core and
Session) one INSERT; names that exist are absorbed per task (MariaDB takes
named batches row by row); a finished name past its window is reused; plain
and prioritised tasks mix; a malformed submission is refused alone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy import orm

import tq
import tq.txn.sql
from tests._dbengines import any_engine_fixture  # noqa: F401
from tests._dbqueue import submission
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue
from tq.dbqueue._schema import tasks

N = 50


class Statements:
    """Counts the INSERTs into tq_tasks and the commits on an engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.inserts = 0
        self.commits = 0
        sa.event.listen(engine, "before_cursor_execute", self._execute)
        sa.event.listen(engine, "commit", self._commit)

    def _execute(self, conn: object, cursor: object, statement: str, *args: object) -> None:
        # PostgreSQL's INSERTs sit in a WITH that notifies the new tasks' queues.
        if "INTO tq_tasks " in statement:
            self.inserts += 1

    def _commit(self, conn: object) -> None:
        self.commits += 1

    def reset(self) -> None:
        self.inserts = self.commits = 0


@pytest.fixture
def disp(engine: sa.Engine) -> tq.Dispatcher:
    d = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host="app.example.com",
        submitter=dbqueue.DbQueueSubmitter(engine),
    )  # fmt: skip
    d.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, queue="q")
    )
    d.add_task(tq.Task(payload=pb.Greet(name="first")))  # the queue exists from now on
    return d


@pytest.fixture
def store(engine: sa.Engine) -> Iterator[tq.txn.sql.SQLStore]:
    s = tq.txn.sql.SQLStore(engine, name="batches", register=False)
    s.create_schema()
    yield s
    s.close()


def names_in(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        q = sa.select(tasks.c.name).where(tasks.c.task_class == "greet").order_by(tasks.c.id)
        return [r[0] for r in conn.execute(q)]


def greetings(n: int, prefix: str = "g") -> list[tq.Task]:
    return [tq.Task(payload=pb.Greet(name=f"{prefix}{i}")) for i in range(n)]


def test_a_batch_outside_a_transaction_is_one_insert_and_one_commit(
    engine: sa.Engine, disp: tq.Dispatcher
) -> None:
    counted = Statements(engine)
    added = disp.add_task(*greetings(N))
    assert counted.inserts == 1
    assert counted.commits == 1
    stored = names_in(engine)[1:]
    assert len(stored) == N
    assert [a.name.rsplit("/", 1)[-1] for a in added if a.name] == stored
    assert {a.existed for a in added} == {False}


async def test_a_batch_from_async_code_is_one_insert(
    engine: sa.Engine, disp: tq.Dispatcher
) -> None:
    counted = Statements(engine)
    await disp.add_task_async(*greetings(N))
    assert counted.inserts == 1
    assert len(names_in(engine)) == N + 1


@pytest.mark.parametrize("how", ["core", "session"])
def test_a_batch_in_a_transaction_is_one_insert(
    engine: sa.Engine, disp: tq.Dispatcher, store: tq.txn.sql.SQLStore, how: str
) -> None:
    counted = Statements(engine)
    factory = engine if how == "core" else orm.sessionmaker(engine)
    with tq.txn.sql.transaction(factory, store=store):  # type: ignore[call-overload]
        added = disp.add_task(*greetings(N))
    assert counted.inserts == 1
    assert len(names_in(engine)) == N + 1
    assert all(a.reminder_id for a in added)


def test_a_rolled_back_batch_leaves_no_task(
    engine: sa.Engine, disp: tq.Dispatcher, store: tq.txn.sql.SQLStore
) -> None:
    def change_of_mind() -> None:
        with tq.txn.sql.transaction(engine, store=store):
            disp.add_task(*greetings(N))
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError):
        change_of_mind()
    assert len(names_in(engine)) == 1  # the fixture's first task only


def test_names_that_exist_are_absorbed_and_the_rest_of_the_batch_goes_in(
    engine: sa.Engine, disp: tq.Dispatcher
) -> None:
    keyed = [tq.Task(payload=pb.Greet(name=k), deduplication_key=k) for k in ("a", "b", "c")]
    disp.add_task(keyed[1])
    added = disp.add_task(*keyed)
    assert [a.existed for a in added] == [False, True, False]
    assert len(names_in(engine)) == 1 + 3


def test_a_finished_name_past_its_window_is_reused_in_a_batch(engine: sa.Engine) -> None:
    submitter = dbqueue.DbQueueSubmitter(engine, tombstone_window=dt.timedelta(0))
    submitter.submit(submission(name="x"))
    with engine.begin() as conn:
        conn.execute(
            sa.update(tasks).where(tasks.c.name == "x").values(state="done", finished_us=1)
        )
    results = submitter.submit_batch([submission(name="x"), submission(name="y")])
    assert results == [
        "projects/proj/locations/us-central1/queues/q/tasks/x",
        "projects/proj/locations/us-central1/queues/q/tasks/y",
    ]
    with engine.connect() as conn:
        states = dict(conn.execute(sa.select(tasks.c.name, tasks.c.state)).all())
    assert states == {"x": "pending", "y": "pending"}


def test_prioritised_and_plain_tasks_mix_in_one_batch(
    engine: sa.Engine, disp: tq.Dispatcher
) -> None:
    counted = Statements(engine)
    batch = [tq.Task(payload=pb.Greet(name=f"p{i}"), priority=int(i >= 4)) for i in range(9)]
    disp.add_task(*batch)
    assert counted.inserts == 2  # one per run of the same columns
    with engine.connect() as conn:
        got = conn.execute(
            sa.select(tasks.c.priority).where(tasks.c.task_class == "greet").order_by(tasks.c.id)
        ).all()
    assert [r[0] for r in got][1:] == [int(i >= 4) for i in range(9)]


def test_a_malformed_submission_is_refused_alone(engine: sa.Engine) -> None:
    submitter = dbqueue.DbQueueSubmitter(engine)
    bad = submission(name="has space")
    results = submitter.submit_batch([submission(), bad, submission()])
    assert isinstance(results[1], tq.SubmitError)
    assert results[1].code == grpc.StatusCode.INVALID_ARGUMENT
    assert all(isinstance(r, str) for r in (results[0], results[2]))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar_one() == 2


def test_a_batch_asked_to_raise_for_taken_names_raises_after_creating_the_rest(
    engine: sa.Engine, disp: tq.Dispatcher
) -> None:
    keyed = [tq.Task(payload=pb.Greet(name=k), deduplication_key=k) for k in ("a", "b", "c")]
    disp.add_task(keyed[1])
    with pytest.raises(tq.TaskAlreadyAdded):
        disp.add_task(*keyed, raise_if_exists=True)
    assert len(names_in(engine)) == 1 + 3
