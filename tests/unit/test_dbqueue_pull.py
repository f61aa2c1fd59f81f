"""The pull API: consumers lease, extend, complete, fail and release pull-queue tasks."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

import tq
from tests._dbqueue import (
    RecordingApp,
    clock_fixture,  # noqa: F401
    fidelity_engine_fixture,  # noqa: F401
    submission,
    submitter_fixture,  # noqa: F401
    task_state,
)
from tq import dbqueue
from tq.dbqueue import State
from tqtesting import FakeClock

Sub = dbqueue.DbQueueSubmitter
MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
def puller(engine: sa.Engine) -> dbqueue.PullQueue:
    dbqueue.apply_queues(
        engine, [dbqueue.QueueConfig("q", pull=True, max_attempts=2, min_backoff_s=10)]
    )
    return dbqueue.PullQueue(engine, "q")


async def test_workers_never_push_a_pull_queue(
    engine: sa.Engine, submitter: Sub, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    submitter.submit(submission(name="t1"))
    async with dbqueue.Worker(engine, app=RecordingApp()) as w:
        assert await w.run_once() == 0
    assert task_state(engine, "t1").state is State.PENDING


def test_lease_hands_out_due_tasks_once_until_the_lease_ends(
    engine: sa.Engine, submitter: Sub, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    submitter.submit(submission(name="a", body=b"A"))
    submitter.submit(submission(name="b", eta=clock.now() + dt.timedelta(hours=1)))
    (first,) = puller.lease(max_tasks=10, duration=MINUTE)
    assert (first.name, first.body, first.retry_count) == ("a", b"A", 0)
    assert first.lease_expires == clock.now() + MINUTE
    other = dbqueue.PullQueue(engine, "q", owner="other")
    assert other.lease(10, MINUTE) == []  # held
    clock.advance(MINUTE)
    assert other.lease(10, MINUTE) == []  # expired: back in the queue, after a backoff
    assert str(task_state(engine, "a").last_error).startswith("lease expired")
    clock.advance(10)
    (second,) = other.lease(10, MINUTE)
    assert (second.name, second.retry_count) == ("a", 1)
    assert not puller.complete(first)  # the first lease is gone
    assert other.complete(second)


def test_complete_finishes_and_a_lost_lease_cannot(
    engine: sa.Engine, submitter: Sub, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    submitter.submit(submission(name="a"))
    (t,) = puller.lease(1, MINUTE)
    assert puller.complete(t)
    assert task_state(engine, "a").state is State.DONE
    assert not puller.complete(t)  # no longer leased


def test_fail_retries_after_backoff_then_gives_up(
    engine: sa.Engine, submitter: Sub, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    submitter.submit(submission(name="a"))
    (t,) = puller.lease(1, MINUTE)
    assert puller.fail(t, "nope")
    info = task_state(engine, "a")
    assert (info.state, info.last_error) == (State.PENDING, "nope")
    assert info.eta == clock.now() + dt.timedelta(seconds=10)
    assert puller.lease(1, MINUTE) == []
    clock.advance(10)
    (t,) = puller.lease(1, MINUTE)
    assert t.retry_count == 1
    assert puller.fail(t)
    assert task_state(engine, "a").state is State.FAILED  # max_attempts=2


def test_extend_moves_the_lease_and_release_gives_the_task_back(
    engine: sa.Engine, submitter: Sub, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    submitter.submit(submission(name="a"))
    (t,) = puller.lease(1, MINUTE)
    clock.advance(50)
    t2 = puller.extend(t, MINUTE)
    assert t2 is not None
    assert t2.lease_expires == clock.now() + MINUTE
    clock.advance(30)  # past the first lease's end, within the extension
    assert dbqueue.PullQueue(engine, "q", owner="other").lease(1, MINUTE) == []
    assert puller.release(t2)
    (t3,) = puller.lease(1, MINUTE)  # due at once, no backoff
    assert t3.retry_count == 1


def test_a_push_queue_cannot_be_pulled(engine: sa.Engine, submitter: Sub) -> None:
    submitter.submit(submission(queue="pushed"))
    with pytest.raises(tq.ConfigError, match="not a pull queue"):
        dbqueue.PullQueue(engine, "pushed").lease()


async def test_async_twins(
    engine: sa.Engine, submitter: Sub, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    submitter.submit(submission(name="a"))
    (t,) = await puller.lease_async(1, MINUTE)
    assert await puller.extend_async(t, MINUTE) is not None
    assert await puller.complete_async(t)
