"""Recurring tasks: added every interval by the workers, once per slot, missed slots skipped."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

import tq
from tests._dbqueue import (
    PROJECT,
    REGION,
    RecordingApp,
    clock_fixture,  # noqa: F401
    engine_fixture,  # noqa: F401
)
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue
from tqtesting import FakeClock

MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
def disp() -> tq.Dispatcher:
    d = tq.Dispatcher(cloud_project=PROJECT, cloud_region=REGION, default_target_host="h.example")
    d.register_task_class(
        tq.TaskClass(id="tick", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue="cron")
    )
    d.register_task_class(
        tq.TaskClass(id="txn", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="cron")
    )
    return d


async def test_a_recurring_task_runs_once_per_slot_from_its_first_run(
    engine: sa.Engine, disp: tq.Dispatcher, clock: FakeClock
) -> None:
    rec = dbqueue.Recurring(engine)
    rec.put("tick", every=MINUTE, dispatcher=disp, task=tq.Task(pb.Count(n=7)))
    app = RecordingApp()
    async with dbqueue.Worker(engine, app=app) as w1, dbqueue.Worker(engine, app=app) as w2:
        assert await w1.run_once() == 1  # due at once
        assert await w2.run_once() == 0  # the slot fired already
        clock.advance(59)
        assert await w1.run_once() == 0
        clock.advance(1)
        assert await w2.run_once() == 1
    names = app.names()
    start = int(dbqueue.Admin(engine).list_tasks()[0].created.timestamp())
    assert names == [f"rec-tick-{start}", f"rec-tick-{start + 60}"]
    assert app.pushes[0].path == "/internal/tasks/t/tick"
    (info,) = rec.list()
    assert (info.every, info.next_run, info.queue) == (MINUTE, clock.now() + MINUTE, "cron")


async def test_missed_slots_are_skipped_not_caught_up(
    engine: sa.Engine, disp: tq.Dispatcher, clock: FakeClock
) -> None:
    rec = dbqueue.Recurring(engine)
    first = clock.now() + dt.timedelta(seconds=30)
    rec.put("tick", every=MINUTE, dispatcher=disp, task=tq.Task(pb.Count()), first_run=first)
    app = RecordingApp()
    async with dbqueue.Worker(engine, app=app) as w:
        assert await w.run_once() == 0  # not yet
        clock.advance(dt.timedelta(minutes=10))  # ten slots pass with no worker
        assert await w.run_once() == 1
        assert await w.run_once() == 0
    (info,) = rec.list()
    assert info.next_run == first + dt.timedelta(minutes=10)


async def test_putting_again_replaces_and_remove_stops(
    engine: sa.Engine, disp: tq.Dispatcher, clock: FakeClock
) -> None:
    rec = dbqueue.Recurring(engine)
    rec.put("tick", every=MINUTE, dispatcher=disp, task=tq.Task(pb.Count(n=1)))
    rec.put("tick", every=2 * MINUTE, dispatcher=disp, task=tq.Task(pb.Count(n=2)))
    assert [i.every for i in rec.list()] == [2 * MINUTE]
    assert rec.remove("tick")
    assert not rec.remove("tick")
    async with dbqueue.Worker(engine, app=RecordingApp()) as w:
        assert await w.run_once() == 0


@pytest.mark.parametrize(
    ("name", "every", "task"),
    [
        ("bad name", MINUTE, tq.Task(pb.Count())),
        ("fast", dt.timedelta(milliseconds=10), tq.Task(pb.Count())),
        ("dedup", MINUTE, tq.Task(pb.Count(), deduplication_key="k")),
        ("delayed", MINUTE, tq.Task(pb.Count(), delay=MINUTE)),
    ],
)
def test_invalid_recurring_tasks_are_refused(
    engine: sa.Engine, disp: tq.Dispatcher, name: str, every: dt.timedelta, task: tq.Task
) -> None:
    with pytest.raises(tq.ConfigError):
        dbqueue.Recurring(engine).put(name, every=every, dispatcher=disp, task=task)


def test_a_transactional_class_cannot_recur(engine: sa.Engine, disp: tq.Dispatcher) -> None:
    with pytest.raises(tq.TransactionError):
        dbqueue.Recurring(engine).put(
            "txn", every=MINUTE, dispatcher=disp, task=tq.Task(pb.Greet())
        )
