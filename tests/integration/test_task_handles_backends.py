"""Handles, raise_if_exists and deletion on the database queue (SQLite, PostgreSQL,
MariaDB) and on Cloud Tasks (our own gRPC server where the emulator falls short)."""

from __future__ import annotations

import datetime as dt
import hashlib
import pathlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

import tq
import tq.txn.sql
from tests._dbqueue import RecordingApp
from tests._fake_cloudtasks import FakeCloudTasks, fake_cloud_tasks
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue
from tq.dbqueue import State
from tqtesting import FakeClock

PARENT = "projects/proj/locations/us-central1/queues/q"


def _dispatcher(submitter: tq.Submitter, **kw: Any) -> tq.Dispatcher:
    disp = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host="app.example.com",
        submitter=submitter, **kw,
    )  # fmt: skip
    disp.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, queue="q")
    )
    disp.register_task_class(
        tq.TaskClass(id="count", prototype=pb.Count, kind=tq.Kind.TRANSACTIONAL, queue="q")
    )
    return disp


def _dedup(key: str) -> str:
    return f"{PARENT}/tasks/" + hashlib.sha256(f"\0greet\0{key}".encode()).hexdigest()


# The database queue.


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def engine(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        e = dbqueue.sqlite_engine(tmp_path / "queue.db")
    elif request.param == "postgres":
        e = sa.create_engine(request.getfixturevalue("postgres_db_url"))
    else:
        e = dbqueue.mysql_engine(request.getfixturevalue("mariadb_db_url"))
    dbqueue.create_schema(e)
    yield e
    e.dispose()


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    fc = FakeClock()
    with tq.clock.use_clock(fc):
        yield fc


@pytest.fixture
def queue_disp(engine: sa.Engine, clock: FakeClock) -> tq.Dispatcher:
    return _dispatcher(dbqueue.DbQueueSubmitter(engine))


def _state(engine: sa.Engine, added: tq.AddedTask) -> State:
    info = dbqueue.Admin(engine).get_task("q", added.task_id or "")
    assert info is not None, f"no row for {added.name}"
    return info.state


def test_database_queue_handles_name_the_rows(engine: sa.Engine, queue_disp: tq.Dispatcher) -> None:
    generated, named = queue_disp.add_task(
        tq.Task(payload=pb.Greet(name="a")),
        tq.Task(payload=pb.Greet(name="b"), deduplication_key="k"),
    )
    assert generated.name is not None
    assert generated.name.startswith(PARENT + "/tasks/")
    assert named.name == _dedup("k")
    assert _state(engine, generated) is State.PENDING
    assert _state(engine, named) is State.PENDING
    (again,) = queue_disp.add_task(tq.Task(payload=pb.Greet(name="c"), deduplication_key="k"))
    assert (named.existed, again.existed) == (False, True)


async def test_a_deleted_database_queue_task_is_never_delivered(
    engine: sa.Engine, queue_disp: tq.Dispatcher
) -> None:
    keep, drop = await queue_disp.add_task_async(
        tq.Task(payload=pb.Greet(name="keep")), tq.Task(payload=pb.Greet(name="drop"))
    )
    result = await queue_disp.delete_task_async(drop)
    assert result == tq.TaskDeletion(drop.name or "", True)
    app = RecordingApp()
    async with dbqueue.Worker(engine, app=app) as w:
        await w.run_until_idle()
    assert app.names() == [keep.task_id]
    assert _state(engine, drop) is State.DELETED
    assert _state(engine, keep) is State.DONE


def test_deleting_database_queue_tasks_by_key_and_unknown_ones(
    engine: sa.Engine, queue_disp: tq.Dispatcher
) -> None:
    (added,) = queue_disp.add_task(tq.Task(payload=pb.Greet(name="a"), deduplication_key="k"))
    assert queue_disp.delete_task(task_class="greet", deduplication_key="k").deleted
    assert _state(engine, added) is State.DELETED
    assert queue_disp.delete_task(added) == tq.TaskDeletion(_dedup("k"), False)  # twice
    assert not queue_disp.delete_task(f"{PARENT}/tasks/never-added").deleted
    assert not queue_disp.delete_task("other-queue/tasks/x").deleted


async def test_a_task_that_ran_cannot_be_deleted(
    engine: sa.Engine, queue_disp: tq.Dispatcher
) -> None:
    (added,) = queue_disp.add_task(tq.Task(payload=pb.Greet(name="a")))
    async with dbqueue.Worker(engine, app=RecordingApp()) as w:
        await w.run_until_idle()
    assert not queue_disp.delete_task(added).deleted
    assert _state(engine, added) is State.DONE


def test_a_leased_task_is_deleted_and_its_outcome_dropped(
    engine: sa.Engine, queue_disp: tq.Dispatcher
) -> None:
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("q", pull=True)])
    (added,) = queue_disp.add_task(tq.Task(payload=pb.Greet(name="a"), deduplication_key="k"))
    pull = dbqueue.PullQueue(engine, "q")
    (leased,) = pull.lease(1)
    assert _state(engine, added) is State.LEASED
    assert queue_disp.delete_task(added).deleted
    assert pull.complete(leased) is False  # its lease went with it
    assert _state(engine, added) is State.DELETED
    assert pull.lease(1) == []


def test_a_deleted_name_stays_taken_for_the_tombstone_window(
    engine: sa.Engine, queue_disp: tq.Dispatcher, clock: FakeClock
) -> None:
    task = tq.Task(payload=pb.Greet(name="first"), deduplication_key="k")
    (first,) = queue_disp.add_task(task)
    queue_disp.delete_task(first)
    before = dbqueue.Admin(engine).get_task("q", first.task_id or "")
    (absorbed,) = queue_disp.add_task(task)
    assert absorbed.existed is True
    with pytest.raises(tq.TaskAlreadyAdded):
        queue_disp.add_task(tq.Task(payload=pb.Greet(name="other"), deduplication_key="k"),
                            raise_if_exists=True)  # fmt: skip
    assert dbqueue.Admin(engine).get_task("q", first.task_id or "") == before  # untouched
    clock.advance(dbqueue.TOMBSTONE_WINDOW + dt.timedelta(seconds=1))
    (fresh,) = queue_disp.add_task(task, raise_if_exists=True)
    assert fresh.existed is False
    assert fresh.name == first.name
    assert _state(engine, fresh) is State.PENDING


def test_raise_if_exists_leaves_a_waiting_task_as_it_was(
    engine: sa.Engine, queue_disp: tq.Dispatcher
) -> None:
    queue_disp.add_task(tq.Task(payload=pb.Greet(name="first"), deduplication_key="k"))
    row = dbqueue.Admin(engine).get_task("q", _dedup("k").rpartition("/")[2])
    with pytest.raises(tq.TaskAlreadyAdded, match="nothing was overwritten"):
        queue_disp.add_task(
            tq.Task(payload=pb.Greet(name="second"), deduplication_key="k"), raise_if_exists=True
        )
    assert dbqueue.Admin(engine).get_task("q", _dedup("k").rpartition("/")[2]) == row


def test_a_transactional_task_in_the_database_queue_is_named_by_its_reminder_id(
    engine: sa.Engine, queue_disp: tq.Dispatcher
) -> None:
    store = tq.txn.sql.SQLStore(engine, name="handles-dbqueue", register=False)
    store.create_schema()
    with tq.txn.sql.transaction(engine, store=store):
        (added,) = queue_disp.add_task(tq.Task(payload=pb.Count(n=1)))
    assert added.reminder_id is not None
    assert added.name == f"{PARENT}/tasks/{added.reminder_id}"
    assert _state(engine, added) is State.PENDING
    assert queue_disp.delete_task(added).deleted


# Cloud Tasks, through our own server over real gRPC.


@pytest.fixture
def fake() -> Iterator[FakeCloudTasks]:
    with fake_cloud_tasks() as f:
        yield f


@pytest.fixture
def ct_submitter(fake: FakeCloudTasks) -> Iterator[tq.CloudTasksSubmitter]:
    pauses: list[float] = []
    with tq.CloudTasksSubmitter(endpoint=fake.endpoint, sleep=pauses.append) as s:
        yield s


def test_delete_task_sends_delete_task_with_the_full_name(
    fake: FakeCloudTasks, ct_submitter: tq.CloudTasksSubmitter
) -> None:
    disp = _dispatcher(ct_submitter)
    (added,) = disp.add_task(tq.Task(payload=pb.Greet(name="a"), deduplication_key="k"))
    assert disp.delete_task(task_class="greet", deduplication_key="k").deleted
    assert fake.deletes == [_dedup("k")]
    assert fake.waiting == set()
    assert disp.delete_task(added) == tq.TaskDeletion(_dedup("k"), False)  # NOT_FOUND


def test_cloud_tasks_not_found_and_a_task_that_ran_say_not_deleted(
    fake: FakeCloudTasks, ct_submitter: tq.CloudTasksSubmitter
) -> None:
    disp = _dispatcher(ct_submitter)
    (added,) = disp.add_task(tq.Task(payload=pb.Greet(name="a")))
    assert added.name is not None
    assert added.name.startswith(PARENT + "/tasks/")  # the name the service picked
    fake.run(added.name)
    assert not disp.delete_task(added).deleted
    assert not disp.delete_task("q/tasks/unknown").deleted
    assert fake.deletes == [added.name, f"{PARENT}/tasks/unknown"]


async def test_cloud_tasks_delete_task_async(fake: FakeCloudTasks) -> None:
    async with tq.CloudTasksSubmitter(endpoint=fake.endpoint) as s:
        disp = _dispatcher(s)
        (added,) = await disp.add_task_async(tq.Task(payload=pb.Greet(name="a")))
        assert (await disp.delete_task_async(added)).deleted
        assert not (await disp.delete_task_async(added)).deleted
    assert fake.deletes == [added.name, added.name]


def test_transient_deletion_failures_are_retried_and_permanent_ones_raised(
    fake: FakeCloudTasks, ct_submitter: tq.CloudTasksSubmitter
) -> None:
    disp = _dispatcher(ct_submitter)
    (added,) = disp.add_task(tq.Task(payload=pb.Greet(name="a")))
    fake.fail["DeleteTask"] = [grpc.StatusCode.UNAVAILABLE]
    assert disp.delete_task(added).deleted
    assert fake.deletes == [added.name, added.name]
    fake.fail["DeleteTask"] = [grpc.StatusCode.PERMISSION_DENIED]
    with pytest.raises(tq.SubmitError) as info:
        disp.delete_task(added)
    assert info.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert len(fake.deletes) == 3  # not retried


def test_a_malformed_name_never_reaches_cloud_tasks(
    fake: FakeCloudTasks, ct_submitter: tq.CloudTasksSubmitter
) -> None:
    disp = _dispatcher(ct_submitter)
    for bad in ("q/tasks/a b", f"{PARENT}/tasks/", "projects/p/queues/q/tasks/x", "x"):
        with pytest.raises(tq.ValidationError, match="malformed"):
            disp.delete_task(bad)
    assert fake.deletes == []


def test_cloud_tasks_already_exists_is_absorbed_or_raised(
    fake: FakeCloudTasks, ct_submitter: tq.CloudTasksSubmitter
) -> None:
    disp = _dispatcher(ct_submitter)
    task = tq.Task(payload=pb.Greet(name="a"), deduplication_key="k")
    (first,) = disp.add_task(task)
    (absorbed,) = disp.add_task(task)
    assert (first.existed, absorbed.existed) == (False, True)
    with pytest.raises(tq.TaskAlreadyAdded) as info:
        disp.add_task(task, raise_if_exists=True)
    assert info.value.existing[0].name == _dedup("k")
    assert len(fake.creates) == 3  # each asked once: ALREADY_EXISTS is not retried
