"""Dispatcher.delete_task and add_task(raise_if_exists=...) on tqtesting's Scheduler,
and what the dispatcher refuses before it asks any submitter."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import tq
import tqtesting
from tests.testpb import payloads_pb2 as pb
from tests.unit._fakes import FakeStore, in_txn
from tqtesting import FakeClock, Scheduler, TaskStatus

PARENT = "projects/proj/locations/us-central1/queues/default"
S = dt.timedelta(seconds=1)


def _dispatcher(**kw: Any) -> tq.Dispatcher:
    disp = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host="app.example.com",
        **kw,
    )  # fmt: skip
    ran: list[str] = []
    disp.ran = ran  # type: ignore[attr-defined]

    @disp.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, queue="default")
    def greet(p: pb.Greet) -> None:
        ran.append(p.name)

    @disp.task_class(
        id="strict", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue="default",
        raise_if_exists=True,
    )  # fmt: skip
    def strict(p: pb.Count) -> None:
        ran.append(f"count {p.n}")

    @disp.task_class(id="txn", prototype=pb.Blob, kind=tq.Kind.TRANSACTIONAL, queue="default")
    def txn(p: pb.Blob) -> None:
        ran.append("blob")

    return disp


def _dedup(key: str, class_id: str = "greet") -> str:
    return f"{PARENT}/tasks/" + hashlib.sha256(f"\0{class_id}\0{key}".encode()).hexdigest()


@pytest.fixture
def sched() -> Iterator[Scheduler]:
    with tqtesting.testing_context(_dispatcher(), FakeClock()) as s:
        yield s


def _ran(sched: Scheduler) -> list[str]:
    return sched.dispatcher.ran  # type: ignore[attr-defined,no-any-return]


# Deleting.


def test_a_deleted_task_never_runs(sched: Scheduler) -> None:
    disp = sched.dispatcher
    keep, drop = disp.add_task(
        tq.Task(payload=pb.Greet(name="keep")), tq.Task(payload=pb.Greet(name="drop"))
    )
    result = disp.delete_task(drop)
    assert result == tq.TaskDeletion(name=drop.name or "", deleted=True)
    sched.run(tqtesting.stop_when_drained())
    assert _ran(sched) == ["keep"]
    assert sched.tasks().deleted().names() == [drop.name]
    assert sched.tasks().finished().names() == [keep.name]


def test_deleting_by_class_and_deduplication_key(sched: Scheduler) -> None:
    disp = sched.dispatcher
    disp.add_task(tq.Task(payload=pb.Greet(name="a"), deduplication_key="order-7"))
    result = disp.delete_task(task_class="greet", deduplication_key="order-7")
    assert result == tq.TaskDeletion(_dedup("order-7"), True)
    sched.run()
    assert _ran(sched) == []


def test_deleting_by_full_and_short_name(sched: Scheduler) -> None:
    disp = sched.dispatcher
    a, b = disp.add_task(
        tq.Task(payload=pb.Greet(name="a"), deduplication_key="a"),
        tq.Task(payload=pb.Greet(name="b"), deduplication_key="b"),
    )
    assert disp.delete_task(a.name).deleted
    assert disp.delete_task(f"default/tasks/{b.task_id}") == tq.TaskDeletion(b.name or "", True)
    assert len(sched.tasks().deleted()) == 2


def test_deleting_an_unknown_task_says_so(sched: Scheduler) -> None:
    result = sched.dispatcher.delete_task(f"{PARENT}/tasks/never-added")
    assert result == tq.TaskDeletion(f"{PARENT}/tasks/never-added", deleted=False)
    assert not sched.dispatcher.delete_task(task_class="greet", deduplication_key="nope").deleted


def test_deleting_twice_finds_nothing_the_second_time(sched: Scheduler) -> None:
    (added,) = sched.dispatcher.add_task(tq.Task(payload=pb.Greet(name="a")))
    assert sched.dispatcher.delete_task(added).deleted
    assert not sched.dispatcher.delete_task(added).deleted


def test_a_task_that_ran_can_no_longer_be_deleted(sched: Scheduler) -> None:
    (added,) = sched.dispatcher.add_task(tq.Task(payload=pb.Greet(name="a")))
    sched.run()
    assert not sched.dispatcher.delete_task(added).deleted
    assert sched.tasks().finished().names() == [added.name]


def test_a_task_waiting_for_a_retry_is_deleted_and_not_retried(sched: Scheduler) -> None:
    disp = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host="app.example.com"
    )
    calls: list[int] = []

    @disp.task_class(id="flaky", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    def flaky(p: pb.Greet) -> None:
        calls.append(1)
        raise tq.Transient("not yet")

    with tqtesting.testing_context(disp, FakeClock()) as s:
        (added,) = disp.add_task(tq.Task(payload=pb.Greet(name="x")))
        s.run(tqtesting.stop_after_task("flaky"))
        assert s.tasks()[0].status is TaskStatus.PENDING  # waiting for its retry
        assert disp.delete_task(added).deleted
        s.run()
        assert calls == [1]
        assert s.tasks()[0].status is TaskStatus.DELETED


async def test_a_running_task_finishes_its_attempt_and_is_never_retried() -> None:
    disp = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host="app.example.com"
    )
    handles: list[tq.AddedTask] = []
    calls: list[int] = []

    @disp.task_class(id="self", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    async def deletes_itself(p: pb.Greet) -> None:
        calls.append(1)
        assert (await disp.delete_task_async(handles[0])).deleted
        raise tq.Transient("fails after it was deleted")

    with tqtesting.testing_context(disp, FakeClock()) as s:
        handles += await disp.add_task_async(tq.Task(payload=pb.Greet(name="x")))
        await s.run_async()
        (rec,) = s.tasks()
        assert calls == [1]
        assert rec.status is TaskStatus.DELETED
        assert rec.attempts == 1
        assert rec.last_status == 500


async def test_delete_task_async_on_the_scheduler(sched: Scheduler) -> None:
    disp = sched.dispatcher
    (added,) = await disp.add_task_async(tq.Task(payload=pb.Greet(name="a"), deduplication_key="k"))
    result = await disp.delete_task_async(task_class="greet", deduplication_key="k")
    assert result == tq.TaskDeletion(added.name or "", True)
    again = await disp.delete_task_async(added)
    assert again.deleted is False


def test_a_deleted_name_stays_taken(sched: Scheduler) -> None:
    disp = sched.dispatcher
    disp.add_task(tq.Task(payload=pb.Greet(name="a"), deduplication_key="k"))
    disp.delete_task(task_class="greet", deduplication_key="k")
    (again,) = disp.add_task(tq.Task(payload=pb.Greet(name="b"), deduplication_key="k"))
    assert again.existed is True
    sched.run()
    assert _ran(sched) == []


# Refused before any submitter is asked.


class SpySubmitter:
    """Counts what it is asked; deletes nothing."""

    def __init__(self) -> None:
        self.deletes: list[str] = []
        self.submits = 0

    def submit(self, submission: tq.Submission) -> None:
        self.submits += 1

    async def submit_async(self, submission: tq.Submission) -> None:
        self.submits += 1

    def delete_task(self, name: str) -> bool:
        self.deletes.append(name)
        return False

    async def delete_task_async(self, name: str) -> bool:
        self.deletes.append(name)
        return False


MALFORMED = [
    "",
    "tasks/x",
    f"{PARENT}/tasks/",
    f"{PARENT}/tasks/has space",
    f"{PARENT}/tasks/slash/inside",
    f"{PARENT}/tasks/" + "x" * 501,
    f"{PARENT}/tasks/x\n",
    "projects/Proj/locations/us-central1/queues/default/tasks/x",  # project: lowercase
    "projects/proj/locations/us_central1/queues/default/tasks/x",  # location: no "_"
    "projects/proj/locations/us-central1/queues/de.fault/tasks/x",  # queue: no "."
    "projects/proj/queues/default/tasks/x",  # no location
    "projects/proj/topics/orders/messages/1",  # a message, not a task
    "bad queue/tasks/x",
]


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_name_is_refused_before_the_submitter_is_asked(name: str) -> None:
    spy = SpySubmitter()
    disp = _dispatcher(submitter=spy)
    with pytest.raises(tq.ValidationError, match="malformed"):
        disp.delete_task(name)
    assert spy.deletes == []


@pytest.mark.parametrize("name", MALFORMED[:4])
async def test_a_malformed_name_is_refused_before_the_submitter_is_asked_async(name: str) -> None:
    spy = SpySubmitter()
    disp = _dispatcher(submitter=spy)
    with pytest.raises(tq.ValidationError, match="malformed"):
        await disp.delete_task_async(name)
    assert spy.deletes == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "give the task's name"),
        ({"task": 42}, "must be a string"),
        ({"task_class": "nope", "deduplication_key": "k"}, "no task class 'nope'"),
        ({"task_class": "greet"}, "non-empty string"),
        ({"task_class": "greet", "deduplication_key": ""}, "non-empty string"),
        ({"task_class": "txn", "deduplication_key": "k"}, "TRANSACTIONAL"),
        ({"task": f"{PARENT}/tasks/x", "task_class": "greet"}, "not both"),
        ({"task": tq.AddedTask(None, "greet")}, "did not say"),
        ({"task_class": "greet", "deduplication_key": "k", "queue": "bad queue"}, "malformed"),
    ],
)
def test_bad_deletion_arguments_are_refused_before_the_submitter_is_asked(
    kwargs: dict[str, Any], match: str
) -> None:
    spy = SpySubmitter()
    disp = _dispatcher(submitter=spy)
    with pytest.raises(tq.ValidationError, match=match):
        disp.delete_task(**kwargs)
    assert spy.deletes == []


def test_the_submitter_gets_the_full_name() -> None:
    spy = SpySubmitter()
    disp = _dispatcher(submitter=spy, namespace="ns")
    disp.delete_task("default/tasks/abc")
    disp.delete_task(task_class="greet", deduplication_key="k", queue="other")
    digest = hashlib.sha256(b"ns\0greet\0k").hexdigest()
    assert spy.deletes == [
        f"{PARENT}/tasks/abc",
        f"projects/proj/locations/us-central1/queues/other/tasks/{digest}",
    ]


def test_a_submitter_that_cannot_delete_is_a_config_error() -> None:
    class SubmitsOnly:
        def submit(self, submission: tq.Submission) -> None:
            pass

        async def submit_async(self, submission: tq.Submission) -> None:
            pass

    disp = _dispatcher(submitter=SubmitsOnly())
    with pytest.raises(tq.ConfigError, match="cannot delete tasks"):
        disp.delete_task(f"{PARENT}/tasks/x")
    disp.add_task(tq.Task(payload=pb.Greet(name="still submits")))


def test_a_router_deletes_through_its_queues_submitter() -> None:
    spy = SpySubmitter()
    disp = _dispatcher(submitter=tq.Router(queues=spy))
    assert disp.delete_task(f"{PARENT}/tasks/x") == tq.TaskDeletion(f"{PARENT}/tasks/x", False)
    assert spy.deletes == [f"{PARENT}/tasks/x"]
    with pytest.raises(tq.ConfigError, match="Router cannot delete"):
        _dispatcher(submitter=tq.Router()).delete_task(f"{PARENT}/tasks/x")


# raise_if_exists.


def test_absorbing_a_taken_name_stays_the_default(sched: Scheduler) -> None:
    task = tq.Task(payload=pb.Greet(name="a"), deduplication_key="k")
    sched.dispatcher.add_task(task)
    (again,) = sched.dispatcher.add_task(task)
    assert again.existed is True


def test_raise_if_exists_per_call_raises_and_adds_the_others(sched: Scheduler) -> None:
    disp = sched.dispatcher
    disp.add_task(tq.Task(payload=pb.Greet(name="first"), deduplication_key="k"))
    with pytest.raises(tq.TaskAlreadyAdded) as info:
        disp.add_task(
            tq.Task(payload=pb.Greet(name="second"), deduplication_key="k"),
            tq.Task(payload=pb.Greet(name="other"), deduplication_key="j"),
            raise_if_exists=True,
        )
    err = info.value
    assert [a.existed for a in err.added] == [True, False]
    assert err.existing == [err.added[0]]
    assert err.code is grpc.StatusCode.ALREADY_EXISTS
    assert isinstance(err, tq.SubmitError)
    assert _dedup("k") in str(err)
    sched.run()
    assert sorted(_ran(sched)) == ["first", "other"]  # the existing task was not overwritten


async def test_raise_if_exists_per_call_async(sched: Scheduler) -> None:
    disp = sched.dispatcher
    task = tq.Task(payload=pb.Greet(name="a"), deduplication_key="k")
    await disp.add_task_async(task)
    with pytest.raises(tq.TaskAlreadyAdded):
        await disp.add_task_async(task, raise_if_exists=True)
    with pytest.raises(tq.TaskAlreadyAdded) as info:
        await disp.add_task_async(
            tq.Task(payload=pb.Greet(name="b"), deduplication_key="new"), task,
            raise_if_exists=True,
        )  # fmt: skip
    assert [a.existed for a in info.value.added] == [False, True]


def test_raise_if_exists_per_class_and_its_override(sched: Scheduler) -> None:
    disp = sched.dispatcher
    task = tq.Task(payload=pb.Count(n=1), deduplication_key="k")
    disp.add_task(task)
    with pytest.raises(tq.TaskAlreadyAdded, match="class 'strict'"):
        disp.add_task(task)
    (absorbed,) = disp.add_task(task, raise_if_exists=False)
    assert absorbed.existed is True
    assert len(sched.tasks()) == 1


def test_raise_if_exists_never_fires_inside_a_transaction() -> None:
    # Transactional tasks are named by fresh reminder IDs: none exists already.
    sched_disp = _dispatcher(submitter=SpySubmitter())
    with in_txn(FakeStore()):
        added = sched_disp.add_task(tq.Task(payload=pb.Greet(name="a")), raise_if_exists=True)
    assert added[0].existed is None


def test_raise_if_exists_is_refused_where_it_cannot_fire() -> None:
    disp = tq.Dispatcher(cloud_project="p", cloud_region="r")
    with pytest.raises(tq.ConfigError, match="TRANSACTIONAL"):
        disp.register_task_class(
            tq.TaskClass(
                id="t", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="q",
                raise_if_exists=True,
            )
        )  # fmt: skip
    with pytest.raises(tq.ConfigError, match="topic class"):
        disp.register_task_class(
            tq.TaskClass(
                id="t", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, topic="orders",
                raise_if_exists=True,
            )
        )  # fmt: skip
    with pytest.raises(tq.ValidationError, match="raise_if_exists"):
        _dispatcher(submitter=SpySubmitter()).add_task(
            tq.Task(payload=pb.Greet(name="a")),
            raise_if_exists="yes",  # type: ignore[arg-type]
        )


def test_scheduled_ticks_always_absorb(sched: Scheduler) -> None:
    disp = sched.dispatcher
    disp.register_task_class(
        tq.TaskClass(
            id="tick", prototype=pb.Fail, kind=tq.Kind.NON_TRANSACTIONAL, queue="default",
            schedule=tq.Cron("* * * * *"), raise_if_exists=True,
        )
    )  # fmt: skip
    tick = dt.datetime(2030, 1, 1, 0, 1, tzinfo=dt.UTC)
    disp.add_scheduled_task("tick", tick)
    disp.add_scheduled_task("tick", tick)  # a retried cron call
    assert len(sched.tasks().of_class("tick")) == 1
