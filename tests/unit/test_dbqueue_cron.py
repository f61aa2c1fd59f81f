"""Cron schedules of task classes on the database queue (SQLite and PostgreSQL):
one task per tick across workers, no refire after a restart, missed ticks
collapsed into one, DST, schedule changes."""

from __future__ import annotations

import datetime as dt
import json
import pathlib
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

import tq
from tests._dbqueue import PROJECT, REGION, RecordingApp, clock_fixture  # noqa: F401
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue
from tqtesting import FakeClock

UTC = dt.UTC


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        e = dbqueue.sqlite_engine(tmp_path / "queue.db")
    else:
        e = sa.create_engine(request.getfixturevalue("postgres_db_url"))
    dbqueue.create_schema(e)
    yield e
    e.dispose()


def dispatcher(
    schedule: tq.Cron, payload: tq.TaskClass | None = None, **kwargs: object
) -> tq.Dispatcher:
    d = tq.Dispatcher(cloud_project=PROJECT, cloud_region=REGION, default_target_host="h.example")
    d.register_task_class(
        tq.TaskClass(
            id="report", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue="cron",
            schedule=schedule, **kwargs,  # type: ignore[arg-type]
        )
    )  # fmt: skip
    return d


def titles(engine: sa.Engine) -> list[str]:
    return [t.url.rsplit("/", 1)[1] for t in dbqueue.Admin(engine).list_tasks(task_class="report")]


async def fire(engine: sa.Engine, disp: tq.Dispatcher, app: RecordingApp | None = None) -> int:
    """One worker round (a fresh worker: as after a restart); returns the pushes."""
    async with dbqueue.Worker(engine, app=app or RecordingApp(), dispatcher=disp) as w:
        return await w.run_once()


async def test_a_tick_fires_once_across_two_workers(engine: sa.Engine, clock: FakeClock) -> None:
    disp = dispatcher(tq.Cron("*/5 * * * *"), schedule_payload=pb.Count(n=3))
    app = RecordingApp()
    w1 = dbqueue.Worker(engine, app=app, dispatcher=disp)
    w2 = dbqueue.Worker(engine, app=app, dispatcher=disp)
    async with w1, w2:
        assert await w1.run_once() == 0  # first sight: waits for the next tick (00:05)
        clock.advance(dt.timedelta(minutes=4, seconds=59))
        assert await w2.run_once() == 0
        clock.advance(1)
        assert await w1.run_once() == 1
        assert await w2.run_once() == 0
        clock.advance(dt.timedelta(minutes=5))
        assert await w2.run_once() == 1
        assert await w1.run_once() == 0
    assert titles(engine) == ["cron-2026-01-01T00:05Z", "cron-2026-01-01T00:10Z"]
    assert [p.path.rsplit("/", 1)[1] for p in app.pushes] == titles(engine)
    assert app.pushes[0].path.startswith("/internal/tasks/t/report/")
    assert json.loads(app.pushes[0].body)["body"] == {"n": "3"}
    assert len(set(app.names())) == 2


async def test_a_restart_does_not_fire_a_tick_again(engine: sa.Engine, clock: FakeClock) -> None:
    disp = dispatcher(tq.Cron("0 * * * *"))
    await fire(engine, disp)
    clock.advance(dt.timedelta(hours=1))
    assert await fire(engine, disp) == 1
    clock.advance(30)
    # A new process: a new dispatcher and new workers, the same database.
    assert await fire(engine, dispatcher(tq.Cron("0 * * * *"))) == 0
    assert titles(engine) == ["cron-2026-01-01T01:00Z"]


async def test_missed_ticks_collapse_into_one_for_the_latest(
    engine: sa.Engine, clock: FakeClock
) -> None:
    disp = dispatcher(tq.Cron("*/10 * * * *"))
    await fire(engine, disp)
    clock.advance(dt.timedelta(hours=5, minutes=3))  # 30 ticks pass with no worker
    assert await fire(engine, disp) == 1
    assert await fire(engine, disp) == 0
    clock.advance(dt.timedelta(minutes=7))  # 05:10
    assert await fire(engine, disp) == 1
    assert titles(engine) == ["cron-2026-01-01T05:00Z", "cron-2026-01-01T05:10Z"]


async def test_dst_skips_the_missing_local_time(engine: sa.Engine, clock: FakeClock) -> None:
    # Europe/Berlin: no 02:30 on 2026-03-29; 02:30 CET = 01:30 UTC, CEST = 00:30 UTC.
    clock.set(dt.datetime(2026, 3, 27, 12, tzinfo=UTC))
    seen = []

    def payload(tick: dt.datetime) -> pb.Count:
        seen.append(tick.isoformat())
        return pb.Count(tag=tick.date().isoformat())

    disp = dispatcher(tq.Cron("30 2 * * *", time_zone="Europe/Berlin"), schedule_payload=payload)
    await fire(engine, disp)
    for _ in range(4 * 24):
        clock.advance(dt.timedelta(hours=1))
        await fire(engine, disp)
    assert titles(engine) == ["cron-2026-03-28T01:30Z", "cron-2026-03-30T00:30Z",
                              "cron-2026-03-31T00:30Z"]  # fmt: skip
    assert seen == ["2026-03-28T02:30:00+01:00", "2026-03-30T02:30:00+02:00",
                    "2026-03-31T02:30:00+02:00"]  # fmt: skip


async def test_a_changed_schedule_restarts_at_its_next_tick(
    engine: sa.Engine, clock: FakeClock
) -> None:
    await fire(engine, dispatcher(tq.Cron("0 * * * *")))
    clock.advance(dt.timedelta(minutes=50))
    changed = dispatcher(tq.Cron("*/15 * * * *"))
    assert await fire(engine, changed) == 0  # restarts: next tick 01:00, nothing at once
    clock.advance(dt.timedelta(minutes=10))
    assert await fire(engine, changed) == 1
    assert titles(engine) == ["cron-2026-01-01T01:00Z"]


async def test_a_tick_added_directly_and_by_a_worker_is_one_task(
    engine: sa.Engine, clock: FakeClock
) -> None:
    disp = dispatcher(tq.Cron("0 3 * * *"))
    await fire(engine, disp)
    clock.set(dt.datetime(2026, 1, 1, 3, 0, 20, tzinfo=UTC))
    with tq.use_submitter(dbqueue.DbQueueSubmitter(engine)):
        assert disp.add_scheduled_task("report") == dt.datetime(2026, 1, 1, 3, tzinfo=UTC)
    assert await fire(engine, disp) == 1  # pushes the task added above
    assert len(dbqueue.Admin(engine).list_tasks()) == 1


async def test_a_failing_payload_function_does_not_stop_deliveries(
    engine: sa.Engine, clock: FakeClock
) -> None:
    def broken(tick: dt.datetime) -> pb.Count:
        raise RuntimeError("boom")

    disp = dispatcher(tq.Cron("* * * * *"), schedule_payload=broken)
    await fire(engine, disp)
    clock.advance(60)
    dbqueue.DbQueueSubmitter(engine).submit(
        tq.Submission(
            request=_request_of(disp), task_class="report", created=clock.now(),
        )
    )  # fmt: skip
    assert await fire(engine, disp) == 1  # the plain task; the tick is tried again later
    assert titles(engine) == ["plain"]


def _request_of(disp: tq.Dispatcher) -> object:
    from tq.dbqueue._recurring import _Capture

    cap = _Capture()
    with tq.use_submitter(cap):
        disp.add_task(tq.Task(pb.Count(), title="plain"))
    return cap.got[0].request


async def test_cron_states_show_the_next_and_last_ticks(
    engine: sa.Engine, clock: FakeClock
) -> None:
    disp = dispatcher(tq.Cron("0 * * * *", time_zone="Europe/Berlin"))
    await fire(engine, disp)
    clock.advance(dt.timedelta(hours=1, minutes=2))
    await fire(engine, disp)
    (state,) = dbqueue.cron_states(engine)
    assert (state.name, state.schedule, state.time_zone) == ("report", "0 * * * *", "Europe/Berlin")
    assert state.last_tick == dt.datetime(2026, 1, 1, 1, tzinfo=UTC)
    assert state.last_fired == clock.now()
    assert state.next_tick == dt.datetime(2026, 1, 1, 2, tzinfo=UTC)


def test_a_version_1_schema_migrates_by_adding_the_cron_table(engine: sa.Engine) -> None:
    from tq.dbqueue._schema import meta

    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE tq_cron"))
        conn.execute(sa.update(meta).values(value="1"))
    assert dbqueue.schema_version(engine) == 1
    dbqueue.create_schema(engine)
    assert dbqueue.schema_version(engine) == dbqueue.SCHEMA_VERSION
    assert dbqueue.cron_states(engine) == []
