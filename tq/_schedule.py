"""Scheduled task classes: the one task a tick of a class's cron schedule adds.

A tick's task carries the deduplication key `cron-<tick, UTC, to the
minute>`, so its task name is derived from the class and the tick: however
many processes (database-queue workers, retried Cloud Scheduler calls) add
the task of one tick, the queue creates it once. Its title names the tick
too, for logs.
"""

from __future__ import annotations

import datetime as dt

from google.protobuf.message import Message

from tq._errors import ConfigError, ValidationError
from tq._task import Task
from tq._taskclass import TaskClass
from tq.cron import Cron


def schedule_of(cls: TaskClass) -> Cron:
    if cls.schedule is None:
        raise ConfigError(f"task class {cls.id!r} has no schedule")
    return cls.schedule


def tick_key(tick: dt.datetime) -> str:
    """The deduplication key of a tick's task."""
    return "cron-" + tick.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%MZ")


def tick_task(cls: TaskClass, tick: dt.datetime) -> Task:
    """The task of `cls` for `tick` (a tick of its schedule). Raises ValidationError."""
    cron = schedule_of(cls)
    if not cron.matches(tick):
        raise ValidationError(f"task class {cls.id!r}: {tick.isoformat()} is not a tick of {cron}")
    made = cls.schedule_payload
    if made is None:
        payload: Message = cls.prototype()
    elif isinstance(made, Message):
        payload = made
    else:
        payload = made(cron.local(tick))
        if not isinstance(payload, cls.prototype):
            raise ValidationError(
                f"task class {cls.id!r}: schedule_payload returned {payload!r}, not a "
                f"{cls.type_name}"
            )
    key = tick_key(tick)
    return Task(payload=payload, deduplication_key=key, title=key)


def current_tick(cls: TaskClass, now: dt.datetime) -> dt.datetime | None:
    """The latest tick of `cls`'s schedule at or before `now` (None if none in years)."""
    return schedule_of(cls).last_at_or_before(now)
