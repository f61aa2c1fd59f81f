"""A task's own queue (`tq.Task(queue=...)`) on every backend: Cloud Tasks (its
emulator), the database queue (SQLite, PostgreSQL, MariaDB) and tqtesting; and
the same validation as a class's queue, before anything is written."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import tq
import tqtesting
from tests._dbengines import any_engine_fixture  # noqa: F401
from tests._services.cloudtasks import CloudTasksEmulator
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue


def dispatcher(submitter: Any, queue: str = "class-queue", **kw: Any) -> tq.Dispatcher:
    d = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host="127.0.0.1:8080",
        target_scheme="http", submitter=submitter, **kw,
    )  # fmt: skip
    d.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue=queue)
    )
    return d


@pytest.fixture
def paused_queue(cloudtasks_emulator: CloudTasksEmulator, cloudtasks_queue: str) -> str:
    with cloudtasks_emulator.client() as c:
        c.pause_queue(name=cloudtasks_queue, timeout=10)
    return cloudtasks_queue


def test_cloud_tasks_creates_the_task_in_its_own_queue(
    cloudtasks_emulator: CloudTasksEmulator, paused_queue: str
) -> None:
    with tq.CloudTasksSubmitter(endpoint=cloudtasks_emulator.endpoint) as sub:
        disp = dispatcher(sub)
        disp.add_task(tq.Task(pb.Greet(name="a"), queue=paused_queue, deduplication_key="k"))
    with cloudtasks_emulator.client() as c:
        (task,) = c.list_tasks(parent=paused_queue, timeout=10)
    assert task.name.startswith(paused_queue + "/tasks/")


def test_the_database_queue_stores_the_task_in_its_own_queue(engine: sa.Engine) -> None:
    disp = dispatcher(dbqueue.DbQueueSubmitter(engine))
    disp.add_task(
        tq.Task(pb.Greet(name="a"), queue="urgent"),
        tq.Task(pb.Greet(name="b")),
        tq.Task(pb.Greet(name="c"), queue="projects/proj/locations/us-central1/queues/bulk"),
    )
    admin = dbqueue.Admin(engine)
    assert {q: admin.count_tasks(queue=q) for q in ("urgent", "class-queue", "bulk")} == {
        "urgent": 1, "class-queue": 1, "bulk": 1,
    }  # fmt: skip


def test_the_database_queue_refuses_an_unknown_queue_when_queues_are_configured(
    engine: sa.Engine,
) -> None:
    disp = dispatcher(dbqueue.DbQueueSubmitter(engine, auto_create_queues=False))
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("class-queue")])
    with pytest.raises(tq.SubmitError, match="NOT_FOUND"):
        disp.add_task(tq.Task(pb.Greet(), queue="nowhere"))
    assert dbqueue.Admin(engine).count_tasks() == 0


@pytest.fixture
def sched() -> Iterator[tqtesting.Scheduler]:
    disp = dispatcher(None)
    seen: list[str] = []
    disp.attach_handler("greet", lambda p: seen.append(tq.execution_info().queue))
    with tqtesting.testing_context(disp) as s:
        s.seen = seen  # type: ignore[attr-defined]
        yield s


def test_tqtesting_runs_the_task_in_its_own_queue(sched: tqtesting.Scheduler) -> None:
    sched.dispatcher.add_task(tq.Task(pb.Greet(), queue="urgent"), tq.Task(pb.Greet()))
    sched.run(tqtesting.stop_when_drained())
    assert sorted(t.queue for t in sched.tasks().finished()) == ["class-queue", "urgent"]
    assert sorted(sched.seen) == ["class-queue", "urgent"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "queue", ["", "bad queue", "a" * 101, "projects/p/queues/q", "emails\n", "ümlaut"]
)
def test_a_bad_task_queue_is_refused_before_anything_is_written(
    engine: sa.Engine, queue: str
) -> None:
    disp = dispatcher(dbqueue.DbQueueSubmitter(engine))
    with pytest.raises(tq.ValidationError, match="queue"):
        disp.add_task(tq.Task(pb.Greet(name="ok")), tq.Task(pb.Greet(), queue=queue))
    assert dbqueue.Admin(engine).count_tasks() == 0
