"""django.tasks through tq: enqueue in atomic() blocks, delivery, retries and results.

Each test runs on SQLite and on PostgreSQL (the `alias` fixture), with
tasks going to tqtesting's in-memory Cloud Tasks (the outbox: a reminder in
the transaction, submitted after the commit) or to the database queue (the
task row in the transaction), delivered through the project's own URLs and
tq's views.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import tq
import tqtesting
from tqtesting import FakeClock


def confirmations(alias: str) -> list[tuple[int, str]]:
    from tests.django.shop.models import Confirmation

    return [(c.order_id, c.note) for c in Confirmation.objects.using(alias).order_by("id")]


def count(alias: str, table: str) -> int:
    from django.db import connections

    with connections[alias].cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {table}")
        return int(cursor.fetchone()[0])


@pytest.fixture
def scheduler(configure: Callable[..., Any], alias: str) -> Iterator[tqtesting.Scheduler]:
    """Tasks to tqtesting (through the outbox of `alias`); results on `alias`."""
    state = configure(DATABASE=alias)
    with tqtesting.testing_context(state.dispatcher, FakeClock()) as s:
        yield s


def deliver(alias: str, **worker: Any) -> int:
    """Runs a database-queue worker until nothing is due, pushing into the Django project."""
    from django.core.asgi import get_asgi_application

    from tq.contrib.django import _databases
    from tq.dbqueue import Worker

    async def go() -> int:
        app = get_asgi_application()
        async with Worker(_databases.engine_for(alias), app=app, **worker) as w:
            return await w.run_until_idle()

    return asyncio.run(go())


# The outbox (tasks to Cloud Tasks, here tqtesting).


def test_enqueue_in_atomic_is_submitted_after_commit_and_runs_once(
    scheduler: tqtesting.Scheduler, alias: str
) -> None:
    from django.db import transaction

    from tests.django.shop.tasks import send_confirmation

    with transaction.atomic(using=alias):
        result = send_confirmation.enqueue(7, database=alias)
        assert len(scheduler.tasks()) == 0  # nothing leaves before the commit
        assert count(alias, "tq_reminders") == 1
    assert len(scheduler.tasks()) == 1
    assert count(alias, "tq_reminders") == 0  # the happy path deleted it
    scheduler.run(tqtesting.stop_when_drained())
    assert confirmations(alias) == [(7, "")]
    got = send_confirmation.get_result(result.id)
    assert got.status == "SUCCESSFUL"
    assert got.return_value == {"order": 7, "sent": True}
    assert got.args == [7]
    assert got.kwargs == {"database": alias}
    assert got.attempts == 1
    assert got.errors == []
    assert got.enqueued_at is not None
    assert got.finished_at is not None


def test_a_rolled_back_atomic_block_submits_nothing(
    scheduler: tqtesting.Scheduler, alias: str
) -> None:
    from django.db import transaction

    from tests.django.shop.tasks import send_confirmation

    results = []

    def order_that_fails() -> None:
        with transaction.atomic(using=alias):
            results.append(send_confirmation.enqueue(8, database=alias))
            raise RuntimeError("the order failed")

    with pytest.raises(RuntimeError):
        order_that_fails()
    (result,) = results
    scheduler.run(tqtesting.stop_when_drained())
    assert len(scheduler.tasks()) == 0
    assert count(alias, "tq_reminders") == 0
    with pytest.raises(Exception, match=result.id):
        send_confirmation.get_result(result.id)  # TaskResultDoesNotExist: rolled back too


def test_a_rolled_back_inner_atomic_drops_only_its_own_task(
    scheduler: tqtesting.Scheduler, alias: str
) -> None:
    from django.db import transaction

    from tests.django.shop.tasks import send_confirmation

    with transaction.atomic(using=alias):
        send_confirmation.enqueue(1, database=alias, note="outer")
        try:
            with transaction.atomic(using=alias):
                send_confirmation.enqueue(2, database=alias, note="inner")
                raise ValueError("inner block fails")
        except ValueError:
            pass
        send_confirmation.enqueue(3, database=alias, note="after")
    scheduler.run(tqtesting.stop_when_drained())
    assert sorted(confirmations(alias)) == [(1, "outer"), (3, "after")]
    assert count(alias, "tq_reminders") == 0


def test_outside_atomic_the_task_is_submitted_at_once(
    scheduler: tqtesting.Scheduler, alias: str
) -> None:
    from tests.django.shop.tasks import send_confirmation

    result = send_confirmation.enqueue(9, database=alias)
    assert len(scheduler.tasks()) == 1
    assert count(alias, "tq_reminders") == 0
    assert send_confirmation.get_result(result.id).status == "READY"
    scheduler.run(tqtesting.stop_when_drained())
    assert send_confirmation.get_result(result.id).status == "SUCCESSFUL"


def test_a_protobuf_task_class_follows_the_atomic_block_too(
    scheduler: tqtesting.Scheduler, alias: str
) -> None:
    from django.db import transaction

    from tests.django.shop import tq_app
    from tests.testpb import payloads_pb2 as pb

    with transaction.atomic(using=alias):
        tq_app.disp.add_task(tq.Task(payload=pb.Count(n=5, tag=alias)))

    def rolled_back() -> None:
        with transaction.atomic(using=alias):
            tq_app.disp.add_task(tq.Task(payload=pb.Count(n=6, tag=alias)))
            raise KeyError("rolled back")

    with pytest.raises(KeyError):
        rolled_back()
    scheduler.run(tqtesting.stop_when_drained())
    assert tq_app.shipped == [5]
    assert confirmations(alias) == [(5, "shipped")]


def test_a_handler_run_inside_the_callers_atomic_block_is_not_in_its_transaction(
    scheduler: tqtesting.Scheduler, alias: str
) -> None:
    from django.db import transaction

    from tests.django.shop import tq_app
    from tests.testpb import payloads_pb2 as pb

    def caller() -> None:
        with transaction.atomic(using=alias):
            tq_app.disp.add_task(tq.Task(payload=pb.Count(n=1, tag=alias)))  # the caller's
            # What the push path opens around every handler: as if a handler ran
            # here, in this thread, on this connection.
            with tq.txn.new_transaction_scope():
                # The caller's block is not the handler's: its task goes now.
                tq_app.disp.add_task(tq.Task(payload=pb.Count(n=2, tag=alias)))
                assert [r.payload for r in scheduler.tasks()] == [pb.Count(n=2, tag=alias)]
                # A block the handler opens holds the handler's tasks.
                with transaction.atomic(using=alias):
                    tq_app.disp.add_task(tq.Task(payload=pb.Count(n=3, tag=alias)))
                assert len(scheduler.tasks()) == 1
            assert count(alias, "tq_reminders") == 2  # the caller's and the inner block's
            raise KeyError("the caller rolls back")

    with pytest.raises(KeyError):
        caller()
    assert count(alias, "tq_reminders") == 0
    scheduler.run(tqtesting.stop_when_drained())
    assert tq_app.shipped == [2]


def test_outside_transaction_hides_the_open_atomic_block_not_one_opened_inside(
    scheduler: tqtesting.Scheduler, alias: str
) -> None:
    from django.db import transaction

    from tests.django.shop import tq_app
    from tests.testpb import payloads_pb2 as pb

    with transaction.atomic(using=alias):
        with tq.txn.outside_transaction():
            tq_app.disp.add_task(tq.Task(payload=pb.Count(n=1, tag=alias)))  # now
            with transaction.atomic(using=alias):  # begun inside: found
                tq_app.disp.add_task(tq.Task(payload=pb.Count(n=2, tag=alias)))
                assert count(alias, "tq_reminders") == 1
            assert len(scheduler.tasks()) == 1
        assert len(scheduler.tasks()) == 1  # the inner block's task waits for the commit
    assert len(scheduler.tasks()) == 2
    scheduler.run(tqtesting.stop_when_drained())
    assert sorted(tq_app.shipped) == [1, 2]


def test_async_task_functions_run_and_return(scheduler: tqtesting.Scheduler) -> None:
    from tests.django.shop.tasks import send_async

    result = send_async.enqueue(21)
    scheduler.run(tqtesting.stop_when_drained())
    (rec,) = scheduler.tasks()
    assert rec.queue == "emails"  # the Task's queue_name, as its Cloud Tasks queue
    got = send_async.get_result(result.id)
    assert (got.status, got.return_value) == ("SUCCESSFUL", 42)


def test_queue_names_map_to_cloud_tasks_queues(scheduler: tqtesting.Scheduler) -> None:
    from tests.django.shop.tasks import send_confirmation

    send_confirmation.using(queue_name="slow_lane").enqueue(1)
    send_confirmation.enqueue(2)
    queues = sorted(str(r.request.parent).rsplit("/", 1)[-1] for r in scheduler.tasks())
    assert queues == ["default", "slow-lane"]  # QUEUE_MAP renames slow_lane


def test_run_after_becomes_the_tasks_eta(scheduler: tqtesting.Scheduler) -> None:
    from tests.django.shop.tasks import send_confirmation

    later = tq.clock.now() + dt.timedelta(hours=2)
    result = send_confirmation.using(run_after=later).enqueue(3)
    (rec,) = scheduler.tasks()
    assert rec.eta == later
    assert send_confirmation.get_result(result.id).task.run_after == later
    scheduler.run(tqtesting.stop_when_drained())
    assert send_confirmation.get_result(result.id).status == "SUCCESSFUL"


def test_what_cloud_tasks_cannot_do_is_refused_at_enqueue(configure: Callable[..., Any]) -> None:
    from django.tasks.exceptions import InvalidTask

    from tests.django.shop.tasks import send_confirmation

    configure()
    with pytest.raises(InvalidTask, match="priority"):
        send_confirmation.using(priority=101)  # Django's range is -100 to 100
    far = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
    with pytest.raises(InvalidTask, match="30 days"):
        send_confirmation.using(run_after=far).enqueue(1)


def test_priority_travels_with_the_task_and_is_recorded(
    scheduler: tqtesting.Scheduler, alias: str
) -> None:
    from tests.django.shop.tasks import send_confirmation

    low = send_confirmation.using(priority=-20).enqueue(1, database=alias)
    high = send_confirmation.using(priority=20).enqueue(2, database=alias)
    assert [r.priority for r in scheduler.tasks()] == [-20, 20]
    scheduler.run(tqtesting.stop_when_drained())
    # tqtesting, like the database queue, takes the higher priority first.
    assert confirmations(alias) == [(2, ""), (1, "")]
    assert send_confirmation.get_result(low.id).task.priority == -20
    assert send_confirmation.get_result(high.id).task.priority == 20


def test_the_task_context_counts_attempts(scheduler: tqtesting.Scheduler) -> None:
    from tests.django.shop.tasks import attempt_of

    result = attempt_of.enqueue()
    scheduler.run(tqtesting.stop_when_drained())
    assert attempt_of.get_result(result.id).return_value == 1


def test_a_failing_task_is_retried_and_its_result_tells_each_attempt(
    configure: Callable[..., Any],
) -> None:
    from tests.django.shop import tasks

    state = configure()
    clock = FakeClock()
    retry = tqtesting.RetryConfig(max_attempts=3, min_backoff=dt.timedelta(seconds=1))
    with tqtesting.testing_context(
        state.dispatcher, clock, retry=retry, raise_on_task_error=False
    ) as s:
        tasks.failures_left["a"] = 1
        tasks.failures_left["b"] = 10
        ok = tasks.flaky.enqueue("a")
        bad = tasks.flaky.enqueue("b")
        s.run(tqtesting.stop_when_drained())
    got = tasks.flaky.get_result(ok.id)
    assert (got.status, got.return_value, got.attempts) == ("SUCCESSFUL", "a", 2)
    assert [e.exception_class_path for e in got.errors] == ["builtins.RuntimeError"]
    failed = tasks.flaky.get_result(bad.id)
    assert (failed.status, failed.attempts, len(failed.errors)) == ("FAILED", 3, 3)
    assert "failing on purpose" in failed.errors[-1].traceback
    with pytest.raises(ValueError, match="failed"):
        _ = failed.return_value


# The database queue (the local default): the task row in the transaction.


def test_database_queue_commit_delivers_once_through_the_views(
    configure: Callable[..., Any], alias: str
) -> None:
    from django.db import transaction

    from tests.django.shop.tasks import send_confirmation

    state = configure(DATABASE=alias, DELIVERY="database")
    assert state.delivery == "database"
    with transaction.atomic(using=alias):
        result = send_confirmation.enqueue(11, database=alias)
        assert count(alias, "tq_tasks") == 1  # in the transaction, through Django's connection
    assert count(alias, "tq_reminders") == 0  # no reminder: the row is the task
    assert deliver(alias) == 1
    assert deliver(alias) == 0
    assert confirmations(alias) == [(11, "")]
    assert send_confirmation.get_result(result.id).status == "SUCCESSFUL"


def test_database_queue_runs_higher_priority_tasks_first(
    configure: Callable[..., Any], alias: str
) -> None:
    from django.db import transaction

    from tests.django.shop.tasks import send_confirmation

    configure(DATABASE=alias, DELIVERY="database")
    with transaction.atomic(using=alias):  # due at the same time, enqueued lowest first
        for p in (-50, 0, 5, 50):
            send_confirmation.using(priority=p).enqueue(p, database=alias, note=str(p))
    assert deliver(alias, concurrency=1, batch_size=1) == 4
    assert confirmations(alias) == [(50, "50"), (5, "5"), (0, "0"), (-50, "-50")]


def test_database_queue_enqueue_writes_one_row_that_stands_for_the_ready_result(
    configure: Callable[..., Any], alias: str
) -> None:
    from django.db import transaction
    from django.tasks.exceptions import TaskResultDoesNotExist

    from tests.django.shop.tasks import send_confirmation

    configure(DATABASE=alias, DELIVERY="database")
    later = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    deferred = send_confirmation.using(priority=3, run_after=later)
    with transaction.atomic(using=alias):
        result = deferred.enqueue(5, database=alias, note="n")
        assert count(alias, "tq_tasks") == 1
    outside = send_confirmation.enqueue(6, database=alias)  # no atomic block: the same
    assert count(alias, "tq_django_task_results") == 0  # the task rows stand for them
    got = send_confirmation.get_result(result.id)
    assert (got.id, got.status, got.args, got.kwargs) == (
        result.id, "READY", [5], {"database": alias, "note": "n"}
    )  # fmt: skip
    assert (got.enqueued_at, got.started_at, got.finished_at) == (result.enqueued_at, None, None)
    assert (got.attempts, got.errors, got.worker_ids) == (0, [], [])
    assert (got.task.run_after, got.task.priority, got.task.queue_name) == (later, 3, "default")
    assert got.backend == "default"
    assert send_confirmation.get_result(outside.id).status == "READY"
    with pytest.raises(TaskResultDoesNotExist):
        send_confirmation.get_result("0" * 32)

    with tq.clock.use_clock(FakeClock(later + dt.timedelta(seconds=1))):
        assert deliver(alias) == 2
    assert count(alias, "tq_django_task_results") == 2  # written by the first attempts
    done = send_confirmation.get_result(result.id)
    assert (done.status, done.attempts, done.return_value) == (
        "SUCCESSFUL", 1, {"order": 5, "sent": True}
    )  # fmt: skip
    assert (done.enqueued_at, done.task.run_after) == (result.enqueued_at, later)
    assert done.started_at is not None


def test_database_queue_rollback_leaves_no_row(configure: Callable[..., Any], alias: str) -> None:
    from django.db import transaction

    from tests.django.shop.tasks import send_confirmation

    configure(DATABASE=alias, DELIVERY="database")

    def rolled_back() -> None:
        with transaction.atomic(using=alias):
            send_confirmation.enqueue(12, database=alias)
            raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        rolled_back()
    assert count(alias, "tq_tasks") == 0
    assert deliver(alias) == 0
    assert count(alias, "tq_django_task_results") == 0


def test_database_queue_retries_per_the_queues_settings(
    configure: Callable[..., Any], alias: str
) -> None:
    from tests.django.shop import tasks
    from tq.contrib.django import _databases
    from tq.dbqueue import QueueConfig, apply_queues

    configure(DATABASE=alias, DELIVERY="database")
    apply_queues(
        _databases.engine_for(alias), [QueueConfig("default", max_attempts=3, min_backoff_s=1.0)]
    )
    clock = FakeClock()
    tasks.failures_left["x"] = 100
    with tq.clock.use_clock(clock):
        result = tasks.flaky.enqueue("x")
        for _ in range(5):
            deliver(alias)
            clock.advance(dt.timedelta(seconds=10))
    failed = tasks.flaky.get_result(result.id)
    assert (failed.status, failed.attempts) == ("FAILED", 3)
    apply_queues(_databases.engine_for(alias), [QueueConfig("default")])
