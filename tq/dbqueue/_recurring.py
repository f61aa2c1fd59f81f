"""Recurring tasks: a task added every so often, by whichever worker looks first.

Each recurring task is a row of `tq_recurring` holding the request to add
(built once by a dispatcher), the interval and the next run. Workers fire
the due ones about once a second: in one transaction they add the task,
named `rec-<name>-<slot>` (the slot is the planned run's time in seconds),
and move the next run to the first slot after now. Missed slots (no worker
running) are skipped, not caught up: one run per firing. The name makes a
slot fire once however many workers race for it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from typing import Any

import sqlalchemy as sa

from tq import clock
from tq._dispatcher import Dispatcher
from tq._errors import ConfigError
from tq._request import CreateTaskRequest
from tq._submitter import Submission, use_submitter
from tq._task import Task
from tq.dbqueue import _db, _guard, _queuedb
from tq.dbqueue._schema import from_us, recurring, to_us
from tq.dbqueue._taskrow import insert_task, task_row
from tq.txn._store import current_transaction, outside_transaction

log = logging.getLogger("tq.dbqueue")

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


@dataclasses.dataclass(frozen=True, slots=True)
class RecurringInfo:
    """A recurring task as stored."""

    name: str
    queue: str
    task_class: str
    every: dt.timedelta
    next_run: dt.datetime
    last_run: dt.datetime | None
    max_pending: int | None = None


class _Capture:
    """A Submitter that keeps what it is given (to build a request once)."""

    def __init__(self) -> None:
        self.got: list[Submission] = []

    def submit(self, submission: Submission) -> None:
        self.got.append(submission)

    async def submit_async(self, submission: Submission) -> None:
        self.got.append(submission)


def build_submission(dispatcher: Dispatcher, task: Task) -> Submission:
    """The submission `add_task` makes of `task`, built and validated, not submitted.

    Outside any transaction, whatever is open around the call: the request is
    built as for a task added on its own, and nothing is written anywhere.
    """
    capture = _Capture()
    with use_submitter(capture), outside_transaction():
        dispatcher.add_task(task)
    (sub,) = capture.got
    return sub


class Recurring:
    """Recurring tasks of a database queue: add, list, remove.

    Workers (`tq.dbqueue.Worker`) fire them; nothing else is needed.
    """

    def __init__(self, engine: sa.Engine) -> None:
        _db.check_dialect(engine)
        self.engine = engine

    def put(
        self,
        name: str,
        *,
        every: dt.timedelta,
        dispatcher: Dispatcher,
        task: Task,
        first_run: dt.datetime | None = None,
        max_pending: int | None = None,
    ) -> None:
        """Adds `task` every `every` (at least 1 s), from `first_run` (default: now).

        `name` ([A-Za-z0-9_-]{1,100}) identifies it: putting the same name
        again replaces it. The task's class must be NON_TRANSACTIONAL or
        FOLLOWS_CONTEXT; no deduplication key, delay or ETA. `max_pending`
        guards it: a run is skipped while that many earlier runs are still
        pending or running (None: no guard). Raises ConfigError /
        ValidationError.
        """
        if not _NAME_RE.match(name):
            raise ConfigError(f"recurring task name {name!r}: use 1 to 100 of [A-Za-z0-9_-]")
        if max_pending is not None and (
            not isinstance(max_pending, int) or isinstance(max_pending, bool) or max_pending < 1
        ):
            raise ConfigError(
                f"recurring task {name!r}: max_pending must be a positive int or None, "
                f"got {max_pending!r}"
            )
        if every < dt.timedelta(seconds=1):
            raise ConfigError(f"recurring task {name!r}: every must be at least 1 s")
        if task.deduplication_key or task.delay or task.eta:
            raise ConfigError(
                f"recurring task {name!r}: no deduplication_key, delay or eta (each run is "
                "named after its slot and runs at it)"
            )
        if current_transaction() is not None:
            raise ConfigError("Recurring.put: call it outside a transaction")
        sub = build_submission(dispatcher, task)
        req = sub.request
        now_us = to_us(clock.now())
        row = {
            "name": name,
            "queue": str(req.parent).rsplit("/", 1)[-1],  # type: ignore[attr-defined]
            "task_class": sub.task_class,
            "request": req.SerializeToString(),
            "every_us": int(every.total_seconds() * 1e6),
            "max_pending": max_pending,
            "next_run_us": to_us(first_run) if first_run is not None else now_us,
            "last_run_us": None,
            "created_us": now_us,
            "updated_us": now_us,
        }
        with _db.write_txn(self.engine) as conn:
            keep = {"name", "created_us", "last_run_us"}
            _db.upsert(conn, recurring, row, ["name"], [k for k in row if k not in keep])

    def remove(self, name: str) -> bool:
        """Stops a recurring task; False if there is none by that name."""
        with self.engine.begin() as conn:
            res = conn.execute(sa.delete(recurring).where(recurring.c.name == name))
        return bool(res.rowcount)

    def list(self) -> list[RecurringInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(recurring).order_by(recurring.c.name)).all()
        return [
            RecurringInfo(
                name=r.name,
                queue=r.queue,
                task_class=r.task_class,
                every=dt.timedelta(microseconds=r.every_us),
                next_run=from_us(r.next_run_us),
                last_run=None if r.last_run_us is None else from_us(r.last_run_us),
                max_pending=r.max_pending,
            )
            for r in rows
        ]


def _info(r: Any) -> RecurringInfo:
    return RecurringInfo(
        name=r.name, queue=r.queue, task_class=r.task_class,
        every=dt.timedelta(microseconds=r.every_us), next_run=from_us(r.next_run_us),
        last_run=None if r.last_run_us is None else from_us(r.last_run_us),
        max_pending=r.max_pending,
    )  # fmt: skip


def fire_due(engine: sa.Engine, *, now_us: int, limit: int = 100) -> int:
    """Adds the tasks of recurring tasks whose next run has come; returns how many."""
    with engine.connect() as conn:
        first = conn.execute(sa.select(sa.func.min(recurring.c.next_run_us))).scalar_one()
    if first is None or first > now_us:
        return 0  # nothing due: no write transaction
    due = (
        sa.select(recurring)
        .where(recurring.c.next_run_us <= now_us)
        .order_by(recurring.c.next_run_us)
        .limit(limit)
    )
    added = 0
    with _db.write_txn(engine) as conn:
        if not _db.is_sqlite(conn):
            due = due.with_for_update(skip_locked=True)
        for r in conn.execute(due).all():
            added += _fire(conn, r, now_us)
    return added


def _fire(conn: sa.Connection, r: Any, now_us: int) -> int:
    slot_us = int(r.next_run_us)
    missed = (now_us - slot_us) // r.every_us
    conn.execute(
        sa.update(recurring)
        .where(recurring.c.name == r.name)
        .values(next_run_us=slot_us + (missed + 1) * r.every_us, last_run_us=now_us)
    )
    if r.max_pending is not None:
        pending = _guard.live_tasks(conn, r.queue, name_prefix=f"rec-{r.name}-")
        if pending >= r.max_pending:
            log.info(
                "tq.dbqueue: recurring task %s: run skipped, %d earlier runs still pending "
                "(max_pending=%d)",
                r.name, pending, r.max_pending,
            )  # fmt: skip
            return 0
    req = CreateTaskRequest.FromString(r.request)
    req.task.name = f"{req.parent}/tasks/rec-{r.name}-{slot_us // 1_000_000}"
    req.task.ClearField("schedule_time")
    row = task_row(req, r.task_class, now_us=now_us, reserve_us=int(r.every_us), generated_name=str)
    _queuedb.ensure_queue(conn, row["queue"])
    return 1 if insert_task(conn, row) else 0
