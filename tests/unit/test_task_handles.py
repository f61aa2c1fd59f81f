"""add_task's handles: a `tq.AddedTask` per task, in order, on every submitter."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import tq
import tqtesting
from tests.testpb import payloads_pb2 as pb
from tests.unit._fakes import FakeStore, RecordingSubmitter, in_txn, submit_error
from tqtesting import FakeClock, Scheduler

PARENT = "projects/proj/locations/us-central1/queues/default"


def _dispatcher(submitter: Any = None) -> tq.Dispatcher:
    disp = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1",
        default_target_host="app.example.com", submitter=submitter,
    )  # fmt: skip
    disp.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, queue="default")
    )
    disp.register_task_class(
        tq.TaskClass(id="count", prototype=pb.Count, kind=tq.Kind.TRANSACTIONAL, queue="default")
    )
    return disp


def _dedup_name(key: str, class_id: str = "greet", namespace: str = "") -> str:
    digest = hashlib.sha256(f"{namespace}\0{class_id}\0{key}".encode()).hexdigest()
    return f"{PARENT}/tasks/{digest}"


@pytest.fixture
def sched() -> Iterator[Scheduler]:
    disp = _dispatcher()
    with tqtesting.testing_context(disp, FakeClock()) as s:
        yield s


def test_add_task_returns_one_handle_per_task_in_order(sched: Scheduler) -> None:
    added = sched.dispatcher.add_task(
        tq.Task(payload=pb.Greet(name="a"), deduplication_key="k1"),
        tq.Task(payload=pb.Greet(name="b")),
        tq.Task(payload=pb.Greet(name="c"), deduplication_key="k2"),
    )
    records = sched.tasks()
    assert [a.name for a in added] == records.names()
    assert [r.payload.name for r in records] == ["a", "b", "c"]  # type: ignore[union-attr]
    assert added[0].name == _dedup_name("k1")
    assert added[2].name == _dedup_name("k2")
    assert [(a.task_class, a.reminder_id, a.existed) for a in added] == [("greet", None, False)] * 3


def test_a_task_named_by_its_destination_gets_the_name_the_destination_gave(
    sched: Scheduler,
) -> None:
    (added,) = sched.dispatcher.add_task(tq.Task(payload=pb.Greet(name="a")))
    (rec,) = sched.tasks()
    assert added.name == rec.name
    assert added.name is not None
    assert added.name.startswith(PARENT + "/tasks/")
    assert added.task_id == rec.task_id


def test_a_deduplicated_task_added_again_says_it_existed(sched: Scheduler) -> None:
    task = tq.Task(payload=pb.Greet(name="a"), deduplication_key="once")
    (first,) = sched.dispatcher.add_task(task)
    (again,) = sched.dispatcher.add_task(task)
    assert (first.existed, again.existed) == (False, True)
    assert first.name == again.name == _dedup_name("once")
    assert len(sched.tasks()) == 1


async def test_add_task_async_returns_the_same_handles(sched: Scheduler) -> None:
    disp = sched.dispatcher
    one = await disp.add_task_async(tq.Task(payload=pb.Greet(name="a"), deduplication_key="x"))
    two = await disp.add_task_async(
        tq.Task(payload=pb.Greet(name="b"), deduplication_key="x"),
        tq.Task(payload=pb.Greet(name="c"), deduplication_key="y"),
    )
    assert [a.name for a in one + two] == [_dedup_name("x"), _dedup_name("x"), _dedup_name("y")]
    assert [a.existed for a in one + two] == [False, True, False]
    assert sched.tasks().names() == [_dedup_name("x"), _dedup_name("y")]


def test_module_shortcuts_return_the_handles(sched: Scheduler) -> None:
    with tq.use_submitter(sched):
        old = tq.default
        tq.default = sched.dispatcher
        try:
            (added,) = tq.add_task(tq.Task(payload=pb.Greet(name="a"), deduplication_key="m"))
            (again,) = asyncio.run(
                tq.add_task_async(tq.Task(payload=pb.Greet(name="a"), deduplication_key="m"))
            )
        finally:
            tq.default = old
    assert added.name == again.name == _dedup_name("m")
    assert (added.existed, again.existed) == (False, True)


def test_a_transactional_task_hands_back_its_reminder_id_as_its_name() -> None:
    sub = RecordingSubmitter()
    disp = _dispatcher(sub)
    store = FakeStore()
    with in_txn(store) as txn:
        added = disp.add_task(tq.Task(payload=pb.Count(n=1)), tq.Task(payload=pb.Greet(name="g")))
    saved = [p.reminder.id for p in txn.saved]
    assert [a.reminder_id for a in added] == saved
    assert [a.name for a in added] == [f"{PARENT}/tasks/{rid}" for rid in saved]
    assert [a.task_id for a in added] == saved
    assert [a.existed for a in added] == [None, None]  # submitted after the commit
    assert sub.submitted == []


def test_a_submitter_that_returns_nothing_still_gets_handles() -> None:
    # A third-party submitter written before handles existed: submit() -> None.
    sub = RecordingSubmitter()
    disp = _dispatcher(sub)
    named, unnamed = disp.add_task(
        tq.Task(payload=pb.Greet(name="a"), deduplication_key="k"),
        tq.Task(payload=pb.Greet(name="b")),
    )
    assert named.name == _dedup_name("k")
    assert named.existed is False
    assert unnamed.name is None
    assert unnamed.task_id is None
    assert unnamed.existed is False


def test_already_exists_from_a_submitter_is_absorbed_and_reported() -> None:
    sub = RecordingSubmitter(submit_error(grpc.StatusCode.ALREADY_EXISTS))
    disp = _dispatcher(sub)
    (added,) = disp.add_task(tq.Task(payload=pb.Greet(name="a"), deduplication_key="k"))
    assert added.existed is True
    assert added.name == _dedup_name("k")


def test_handles_are_immutable_values() -> None:
    a = tq.AddedTask(name=f"{PARENT}/tasks/x", task_class="greet")
    assert a == tq.AddedTask(f"{PARENT}/tasks/x", "greet", None, None)
    assert a.task_id == "x"
    with pytest.raises(AttributeError):
        a.name = "y"  # type: ignore[misc]


def test_a_task_scheduled_through_the_dispatcher_still_returns_its_tick(
    sched: Scheduler,
) -> None:
    disp = sched.dispatcher
    disp.register_task_class(
        tq.TaskClass(
            id="tick", prototype=pb.Fail, kind=tq.Kind.NON_TRANSACTIONAL, queue="default",
            schedule=tq.Cron("* * * * *"),
        )
    )  # fmt: skip
    tick = dt.datetime(2030, 1, 1, 0, 1, tzinfo=dt.UTC)
    assert disp.add_scheduled_task("tick", tick) == tick
    assert len(sched.tasks().of_class("tick")) == 1


class _PickingClient:
    """A CloudTasksClient stand-in answering CreateTask as the service does."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def create_task(self, *, request: Any, timeout: float) -> Any:
        from google.cloud import tasks_v2

        self.requests.append(request)
        return tasks_v2.Task(name=request.task.name or f"{request.parent}/tasks/4711")


def test_cloud_tasks_submitter_hands_back_the_name_from_the_create_task_response() -> None:
    client = _PickingClient()
    disp = _dispatcher(tq.CloudTasksSubmitter(client=client))
    picked, named = disp.add_task(
        tq.Task(payload=pb.Greet(name="a")),
        tq.Task(payload=pb.Greet(name="b"), deduplication_key="k"),
    )
    assert client.requests[0].task.name == ""
    assert picked.name == f"{PARENT}/tasks/4711"
    assert named.name == _dedup_name("k")


async def test_cloud_tasks_submitter_hands_back_the_name_from_the_response_async() -> None:
    client = _PickingClient()

    class AsyncClient:
        async def create_task(self, *, request: Any, **kw: Any) -> Any:
            return client.create_task(request=request, **kw)

    disp = _dispatcher(tq.CloudTasksSubmitter(client=client, async_client=AsyncClient()))
    (picked,) = await disp.add_task_async(tq.Task(payload=pb.Greet(name="a")))
    assert picked.name == f"{PARENT}/tasks/4711"
    assert picked.existed is False


def test_a_task_sent_to_a_queue_of_its_own_is_named_in_that_queue(sched: Scheduler) -> None:
    other = "projects/proj/locations/us-central1/queues/other"
    (added,) = sched.dispatcher.add_task(
        tq.Task(payload=pb.Greet(name="a"), deduplication_key="k", queue="other")
    )
    assert added.name == f"{other}/tasks/{_dedup_name('k').rpartition('/')[2]}"
    assert sched.tasks().names() == [added.name]
