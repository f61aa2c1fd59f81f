"""Cron-scheduled task classes on the database queue: workers fire their ticks.

A worker given a dispatcher (`Worker(engine, dispatcher=disp)`) fires the
dispatcher's scheduled classes (`TaskClass.schedule`) about once a second,
alongside the interval `Recurring` rows. Each class has a row of `tq_cron`
holding its next tick. Once that tick has come, one transaction moves the
row to the first tick after now and adds the task of the latest tick at or
before now, named after the class and the tick (`tq._schedule`). So:

* a class seen for the first time starts at its next tick: nothing fires
  at once (Cloud Scheduler does the same for a new job);
* ticks missed while no worker ran collapse into one task, for the latest
  of them: no backfill (Cloud Scheduler does not backfill either);
* a changed schedule (expression or time zone) restarts at its next tick;
* a restart does not fire a tick again: the row says it was fired;
* any number of workers and processes fire a tick once: the row moves
  only from the tick it was read at, and the task name is taken anyway.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Any

import sqlalchemy as sa

from tq import _schedule
from tq._dispatcher import Dispatcher
from tq._taskclass import TaskClass
from tq.dbqueue import _db, _guard, _queuedb
from tq.dbqueue._recurring import build_submission
from tq.dbqueue._schema import cron, from_us, to_us
from tq.dbqueue._submitter import TOMBSTONE_WINDOW
from tq.dbqueue._taskrow import insert_task, task_row

log = logging.getLogger("tq.dbqueue")

_RESERVE_US = int(TOMBSTONE_WINDOW.total_seconds() * 1_000_000)


@dataclasses.dataclass(frozen=True, slots=True)
class CronState:
    """What the database queue remembers of one cron-scheduled class."""

    name: str  # the class ID ("<namespace>:<ID>" with a namespace)
    schedule: str
    time_zone: str
    next_tick: dt.datetime
    last_tick: dt.datetime | None  # the last tick fired
    last_fired: dt.datetime | None  # when it was fired


def cron_states(engine: sa.Engine) -> list[CronState]:
    """The cron schedules workers have seen, by name, with their next and last ticks."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(cron).order_by(cron.c.name)).all()
    return [
        CronState(
            name=r.name,
            schedule=r.schedule,
            time_zone=r.time_zone,
            next_tick=from_us(r.next_tick_us),
            last_tick=None if r.last_tick_us is None else from_us(r.last_tick_us),
            last_fired=None if r.last_fired_us is None else from_us(r.last_fired_us),
        )
        for r in rows
    ]


def row_name(dispatcher: Dispatcher, cls: TaskClass) -> str:
    """The `tq_cron` key of a class: its ID, after "<namespace>:" if any."""
    return f"{dispatcher.namespace}:{cls.id}" if dispatcher.namespace else cls.id


def fire_schedules(engine: sa.Engine, dispatcher: Dispatcher, *, now_us: int) -> int:
    """Fires the dispatcher's scheduled classes whose tick has come; returns tasks added."""
    classes = dispatcher.schedules()
    if not classes:
        return 0
    with engine.connect() as conn:
        rows = {r.name: r for r in conn.execute(sa.select(cron)).all()}
    now = from_us(now_us)
    added = 0
    for cls in classes:
        name = row_name(dispatcher, cls)
        r = rows.get(name)
        try:
            if r is None or (r.schedule, r.time_zone) != _identity(cls):
                _restart(engine, cls, name, now, known=r is not None)
            elif r.next_tick_us <= now_us:
                added += _fire(engine, dispatcher, cls, name, r.next_tick_us, now)
        except Exception:
            # One broken schedule (e.g. its payload function raises) must not
            # stop the others, nor the worker's deliveries; it is tried again.
            log.exception("tq.dbqueue: cron schedule of task class %s failed", cls.id)
    return added


def _identity(cls: TaskClass) -> tuple[str, str]:
    c = _schedule.schedule_of(cls)
    return c.expression, c.time_zone


def _restart(engine: sa.Engine, cls: TaskClass, name: str, now: dt.datetime, known: bool) -> None:
    expression, time_zone = _identity(cls)
    now_us = to_us(now)
    values: dict[str, Any] = {
        "schedule": expression,
        "time_zone": time_zone,
        "next_tick_us": to_us(_schedule.schedule_of(cls).next_after(now)),
        "updated_us": now_us,
    }
    with _db.write_txn(engine) as conn:
        if known:
            conn.execute(
                sa.update(cron)
                .where(
                    cron.c.name == name,
                    sa.or_(cron.c.schedule != expression, cron.c.time_zone != time_zone),
                )
                .values(**values)
            )
        else:
            _db.insert_ignore(conn, cron, {"name": name, "created_us": now_us, **values}, ["name"])


def _fire(
    engine: sa.Engine,
    dispatcher: Dispatcher,
    cls: TaskClass,
    name: str,
    seen_next_us: int,
    now: dt.datetime,
) -> int:
    schedule = _schedule.schedule_of(cls)
    tick = schedule.last_at_or_before(now)
    if tick is None or to_us(tick) < seen_next_us:  # pragma: no cover - the row's tick is <= now
        return 0
    sub = build_submission(dispatcher, _schedule.tick_task(cls, tick))
    now_us = to_us(now)
    row = task_row(
        sub.request, sub.task_class, now_us=now_us, reserve_us=_RESERVE_US, generated_name=str
    )
    with _db.write_txn(engine) as conn:
        moved = conn.execute(
            sa.update(cron)
            .where(cron.c.name == name, cron.c.next_tick_us == seen_next_us)
            .values(
                next_tick_us=to_us(schedule.next_after(now)),
                last_tick_us=to_us(tick),
                last_fired_us=now_us,
                updated_us=now_us,
            )
        )
        if moved.rowcount != 1:
            return 0  # another worker fired this tick
        if schedule.max_pending is not None:
            pending = _guard.live_tasks(conn, row["queue"], task_class=row["task_class"])
            if pending >= schedule.max_pending:
                log.info(
                    "tq.dbqueue: cron tick %s of %s skipped: %d of its tasks are still pending "
                    "(max_pending=%d)",
                    tick.isoformat(), cls.id, pending, schedule.max_pending,
                )  # fmt: skip
                return 0
        _queuedb.ensure_queue(conn, row["queue"])
        return 1 if insert_task(conn, row) else 0
