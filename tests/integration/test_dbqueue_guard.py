"""Guarded schedules on SQLite, PostgreSQL and MariaDB: a cron schedule or a
recurring task adds no task for a tick while N of its earlier tasks are pending."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

import tq
from tests._dbengines import any_engine_fixture  # noqa: F401
from tests._dbqueue import PROJECT, REGION, RecordingApp, clock_fixture  # noqa: F401
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue
from tqtesting import FakeClock

MINUTE = dt.timedelta(minutes=1)


def dispatcher(engine: sa.Engine, schedule: tq.Cron) -> tq.Dispatcher:
    d = tq.Dispatcher(
        cloud_project=PROJECT, cloud_region=REGION, default_target_host="h.example",
        submitter=dbqueue.DbQueueSubmitter(engine),
    )  # fmt: skip
    d.register_task_class(
        tq.TaskClass(
            id="report", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue="jobs",
            schedule=schedule,
        )
    )  # fmt: skip
    return d


def live(engine: sa.Engine) -> int:
    admin = dbqueue.Admin(engine)
    return admin.count_tasks(queue="jobs", state="pending") + admin.count_tasks(
        queue="jobs", state="leased"
    )


async def test_a_guarded_cron_schedule_skips_ticks_while_its_tasks_are_pending(
    engine: sa.Engine, clock: FakeClock
) -> None:
    # A pull queue: nobody runs the tasks, so they stay pending until pulled.
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("jobs", pull=True)])
    disp = dispatcher(engine, tq.Cron("* * * * *", max_pending=2))
    puller = dbqueue.PullQueue(engine, "jobs")
    async with dbqueue.Worker(engine, app=RecordingApp(), dispatcher=disp) as w:
        await w.run_once()  # first sight: starts at the next tick
        for _ in range(4):
            clock.advance(MINUTE)
            await w.run_once()
        assert live(engine) == 2  # ticks 1 and 2; 3 and 4 were skipped
        (t,) = puller.lease(duration=10 * MINUTE)  # running still counts
        clock.advance(MINUTE)
        await w.run_once()
        assert live(engine) == 2
        assert puller.complete(t)
        clock.advance(MINUTE)
        await w.run_once()
        assert live(engine) == 2  # one finished, so this tick added one
    (state,) = dbqueue.cron_states(engine)
    assert state.last_tick == clock.now().replace(second=0, microsecond=0)


async def test_a_guarded_recurring_task_skips_runs_while_earlier_ones_are_pending(
    engine: sa.Engine, clock: FakeClock
) -> None:
    dbqueue.apply_queues(engine, [dbqueue.QueueConfig("jobs", pull=True)])
    disp = dispatcher(engine, tq.Cron("@daily"))
    rec = dbqueue.Recurring(engine)
    rec.put("tick", every=MINUTE, dispatcher=disp, task=tq.Task(pb.Count(n=1)), max_pending=1)
    assert rec.list()[0].max_pending == 1
    puller = dbqueue.PullQueue(engine, "jobs")
    async with dbqueue.Worker(engine, app=RecordingApp()) as w:
        await w.run_once()
        clock.advance(MINUTE)
        await w.run_once()
        assert live(engine) == 1
        (t,) = puller.lease(duration=MINUTE)
        assert t.name.startswith("rec-tick-")
        assert puller.complete(t)
        clock.advance(MINUTE)
        await w.run_once()
        assert live(engine) == 1


def test_a_bad_guard_is_refused() -> None:
    with pytest.raises(tq.ConfigError, match="max_pending"):
        tq.Cron("* * * * *", max_pending=0)
    assert tq.Cron("@daily", max_pending=3) != tq.Cron("@daily")
