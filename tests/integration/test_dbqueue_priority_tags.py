"""Priorities and tags on the database queue, on SQLite, PostgreSQL and MariaDB:
leases take due tasks highest priority first within a bounded head start, and
pull consumers lease by tag (App Engine's LeaseByTag)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

import tq
from tests._dbengines import any_engine_fixture  # noqa: F401
from tests._dbqueue import clock_fixture, submission, task_state  # noqa: F401
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue
from tq._task import PRIORITY_HEADER, TAG_HEADER
from tqtesting import FakeClock

MINUTE = dt.timedelta(minutes=1)
SECOND = dt.timedelta(seconds=1)


def add(
    sub: dbqueue.DbQueueSubmitter,
    name: str,
    *,
    priority: int = 0,
    tag: str = "",
    eta: dt.datetime | None = None,
) -> None:
    headers = {"Content-Type": "application/json"}
    if priority:
        headers[PRIORITY_HEADER] = str(priority)
    if tag:
        headers[TAG_HEADER] = tag
    sub.submit(submission(name=name, headers=headers, eta=eta))


@pytest.fixture
def puller(engine: sa.Engine) -> dbqueue.PullQueue:
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("q", pull=True, min_backoff_s=10)])
    return dbqueue.PullQueue(engine, "q")


def names(tasks: list[dbqueue.PulledTask]) -> list[str]:
    return [t.name for t in tasks]


def test_due_tasks_are_leased_highest_priority_first_then_by_eta(
    engine: sa.Engine, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    sub = dbqueue.DbQueueSubmitter(engine)
    t0 = clock.now()
    add(sub, "plain-early", eta=t0)
    add(sub, "low", priority=-3, eta=t0)
    add(sub, "high", priority=5, eta=t0 + dt.timedelta(milliseconds=2))
    add(sub, "mid", priority=1, eta=t0 + dt.timedelta(milliseconds=1))
    add(sub, "plain-late", eta=t0 + dt.timedelta(milliseconds=3))
    clock.advance(SECOND)
    got = puller.lease(max_tasks=2, duration=MINUTE)
    assert names(got) == ["high", "mid"]
    assert [t.priority for t in got] == [5, 1]
    assert names(puller.lease(max_tasks=10, duration=MINUTE)) == [
        "plain-early",
        "plain-late",
        "low",
    ]


def test_a_priority_is_a_bounded_head_start_so_low_priorities_do_not_starve(
    engine: sa.Engine, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    sub = dbqueue.DbQueueSubmitter(engine, priority_step=SECOND)
    t0 = clock.now()
    add(sub, "waiting", eta=t0)
    # Priority 10 is worth 10 s: it overtakes work due up to 10 s before it ...
    add(sub, "urgent-soon", priority=10, eta=t0 + dt.timedelta(seconds=9))
    # ... and never work that has waited longer than that.
    add(sub, "urgent-late", priority=10, eta=t0 + dt.timedelta(seconds=11))
    clock.advance(dt.timedelta(seconds=20))
    assert names(puller.lease(max_tasks=3, duration=MINUTE)) == [
        "urgent-soon",
        "waiting",
        "urgent-late",
    ]


def test_a_retried_task_keeps_its_head_start(
    engine: sa.Engine, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    sub = dbqueue.DbQueueSubmitter(engine, priority_step=SECOND)
    add(sub, "high", priority=30)
    (t,) = puller.lease(duration=MINUTE)
    assert puller.fail(t, "try again")  # back after the queue's 10 s backoff
    clock.advance(dt.timedelta(seconds=11))
    add(sub, "plain")  # due now, after the retry's ETA, but 30 s are a long head start
    assert names(puller.lease(max_tasks=2, duration=MINUTE)) == ["high", "plain"]


def test_future_high_priority_tasks_wait_for_their_eta(
    engine: sa.Engine, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    sub = dbqueue.DbQueueSubmitter(engine)
    add(sub, "later", priority=1000, eta=clock.now() + MINUTE)
    add(sub, "now")
    assert names(puller.lease(max_tasks=5, duration=MINUTE)) == ["now"]


def test_lease_by_tag_takes_only_that_tag_in_eta_order(
    engine: sa.Engine, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    sub = dbqueue.DbQueueSubmitter(engine)
    t0 = clock.now()
    add(sub, "a1", tag="alpha", eta=t0 + dt.timedelta(milliseconds=2))
    add(sub, "b1", tag="beta", eta=t0)
    add(sub, "a2", tag="alpha", eta=t0 + dt.timedelta(milliseconds=1))
    add(sub, "untagged", eta=t0)
    clock.advance(SECOND)
    got = puller.lease_by_tag(max_tasks=10, duration=MINUTE, tag="alpha")
    assert names(got) == ["a2", "a1"]
    assert {t.tag for t in got} == {"alpha"}
    assert puller.lease_by_tag(max_tasks=10, duration=MINUTE, tag="gamma") == []


def test_lease_by_tag_without_a_tag_takes_the_oldest_tasks_tag(
    engine: sa.Engine, puller: dbqueue.PullQueue, clock: FakeClock
) -> None:
    sub = dbqueue.DbQueueSubmitter(engine)
    t0 = clock.now()
    add(sub, "b1", tag="beta", eta=t0 + dt.timedelta(milliseconds=1))
    add(sub, "a1", tag="alpha", eta=t0)
    add(sub, "b2", tag="beta", eta=t0 + dt.timedelta(milliseconds=3))
    add(sub, "plain", eta=t0 + dt.timedelta(milliseconds=2))
    add(sub, "a2", tag="alpha", eta=t0 + dt.timedelta(milliseconds=4))
    clock.advance(SECOND)
    assert names(puller.lease_by_tag(max_tasks=10, duration=MINUTE)) == ["a1", "a2"]
    assert names(puller.lease_by_tag(max_tasks=10, duration=MINUTE)) == ["b1", "b2"]
    # The oldest left has no tag: the untagged tasks go together.
    assert names(puller.lease_by_tag(max_tasks=10, duration=MINUTE)) == ["plain"]
    assert puller.lease_by_tag(max_tasks=10, duration=MINUTE) == []


def test_priority_and_tag_travel_from_add_task_to_the_row(
    engine: sa.Engine, clock: FakeClock
) -> None:
    disp = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host="app.example.com",
        submitter=dbqueue.DbQueueSubmitter(engine),
    )  # fmt: skip
    disp.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    )
    disp.add_task(tq.Task(pb.Greet(name="x"), deduplication_key="k", priority=-7, tag="batch-1"))
    (info,) = dbqueue.Admin(engine).list_tasks(queue="q")
    assert (info.priority, info.tag) == (-7, "batch-1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": 1001}, "within -1000 to 1000"),
        ({"priority": True}, "must be an int"),
        ({"priority": 1.5}, "must be an int"),
        ({"tag": "x" * 501}, "at most 500"),
        ({"tag": "caf\u00e9"}, "printable ASCII"),
        ({"tag": "a\nb"}, "printable ASCII"),
    ],
)
def test_bad_priorities_and_tags_are_refused_at_add_task(
    options: dict[str, object], message: str
) -> None:
    task = tq.Task(pb.Greet(), **options)  # type: ignore[arg-type]
    with pytest.raises(tq.ValidationError, match=message):
        task.validate()
