"""Operating the database queue: list, page, count, delete, clean, purge, stats, history,
retention (the numbers in `tq.dbqueue._stats`, task rows as `tq.dbqueue._taskinfo`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa

from tq import clock
from tq.dbqueue import _cleaner, _db, _queuedb, _stats
from tq.dbqueue._cleaner import Cleanup
from tq.dbqueue._queuedb import QueueState
from tq.dbqueue._queues import QueueConfig
from tq.dbqueue._schema import FINISHED_STATES, LIVE_STATES, State, tasks, to_us
from tq.dbqueue._stats import HistoryPoint, QueueStats
from tq.dbqueue._taskinfo import TaskInfo
from tq.dbqueue._taskinfo import task_info as _info

ORDERS = ("oldest", "newest", "overdue")
"""How `Admin.page_tasks` sorts: by ID either way, or by ETA (most overdue first)."""


class Admin:
    """Operations on a database queue (blocking; each runs its own transaction).

    Task filters: `queue` (the short ID), `state` (a `State` or its value),
    `task_class` (the class ID); None matches everything.
    """

    def __init__(self, engine: sa.Engine) -> None:
        _db.check_dialect(engine)
        self.engine = engine

    # Tasks.

    def count_tasks(
        self,
        *,
        queue: str | None = None,
        state: State | str | None = None,
        task_class: str | None = None,
    ) -> int:
        """How many tasks match the filters."""
        stmt = sa.select(sa.func.count()).select_from(tasks)
        stmt = stmt.where(*_cleaner.filters(queue, state, task_class))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def list_tasks(
        self,
        *,
        queue: str | None = None,
        state: State | str | None = None,
        task_class: str | None = None,
        limit: int = 100,
        after_id: int = 0,
    ) -> list[TaskInfo]:
        """Up to `limit` matching tasks with ID > `after_id`, by ID (page with the last ID)."""
        stmt = (
            sa.select(tasks)
            .where(tasks.c.id > after_id, *_cleaner.filters(queue, state, task_class))
            .order_by(tasks.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_info(r) for r in conn.execute(stmt)]

    def page_tasks(
        self,
        *,
        queue: str | None = None,
        state: State | str | None = None,
        task_class: str | None = None,
        order: str = "oldest",
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[TaskInfo], str | None]:
        """One page of matching tasks in `order` (see ORDERS), and the next page's cursor.

        Keyset paging: each page costs the same however deep it is. The
        cursor is opaque (None: the first page; a None back: no more pages).
        Raises ValueError on an unknown order or a malformed cursor.
        """
        if order not in ORDERS:
            raise ValueError(f"order {order!r}: use one of {', '.join(ORDERS)}")
        where = _cleaner.filters(queue, state, task_class)
        key: tuple[Any, ...]
        if order == "overdue":
            key = (tasks.c.eta_us, tasks.c.id)
            if cursor is not None:
                eta_us, last_id = _cursor(cursor, 2)
                where.append(sa.tuple_(tasks.c.eta_us, tasks.c.id) > sa.tuple_(eta_us, last_id))
        elif order == "newest":
            key = (tasks.c.id.desc(),)
            if cursor is not None:
                where.append(tasks.c.id < _cursor(cursor, 1)[0])
        else:
            key = (tasks.c.id,)
            if cursor is not None:
                where.append(tasks.c.id > _cursor(cursor, 1)[0])
        stmt = sa.select(tasks).where(*where).order_by(*key).limit(limit + 1)
        with self.engine.connect() as conn:
            found = [_info(r) for r in conn.execute(stmt)]
        if len(found) <= limit:
            return found, None
        last = found[limit - 1]
        nxt = f"{to_us(last.eta)}.{last.id}" if order == "overdue" else str(last.id)
        return found[:limit], nxt

    def count_by_state(self, queue: str | None = None) -> dict[State, int]:
        """How many tasks are in each state (every state present, 0 if none)."""
        stmt = sa.select(tasks.c.state, sa.func.count()).group_by(tasks.c.state)
        if queue is not None:
            stmt = stmt.where(tasks.c.queue == queue)
        with self.engine.connect() as conn:
            found = {State(s): int(n) for s, n in conn.execute(stmt)}
        return {s: found.get(s, 0) for s in State}

    def history(
        self,
        queue: str | None = None,
        *,
        window: dt.timedelta = dt.timedelta(hours=1),
        buckets: int = 60,
    ) -> list[HistoryPoint]:
        """The last `window` in `buckets` equal buckets, oldest first: throughput and depth.

        See `tq.dbqueue._stats.history`.
        """
        return _stats.history(self.engine, queue, window=window, buckets=buckets)

    def get_task(self, queue: str, name: str) -> TaskInfo | None:
        """The task `name` of `queue` (live or tombstone), if it exists."""
        stmt = sa.select(tasks).where(tasks.c.queue == queue, tasks.c.name == name)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else _info(row)

    def delete_task(self, queue: str, name: str) -> bool:
        """Deletes a live task (it will not run); False if none is live under that name.

        See `delete_live_task`.
        """
        return delete_live_task(self.engine, queue, name)

    def run_task(self, queue: str, name: str) -> bool:
        """Makes a pending task due now, or gives a failed one a fresh start.

        A failed task comes back as pending with its attempts reset (a
        replay). False if the task is neither pending nor failed.
        """
        now_us = to_us(clock.now())
        key = (tasks.c.queue == queue, tasks.c.name == name)
        with _db.write_txn(self.engine) as conn:
            res = conn.execute(
                sa.update(tasks)
                .where(*key, tasks.c.state == State.PENDING.value)
                .values(eta_us=now_us)
            )
            if not res.rowcount:
                res = conn.execute(
                    sa.update(tasks)
                    .where(*key, tasks.c.state == State.FAILED.value)
                    .values(_replayed(now_us))
                )
        return bool(res.rowcount)

    def purge_queue(self, queue: str) -> int:
        """Deletes every live task of `queue` (as Cloud Tasks' PurgeQueue); returns how many."""
        now_us = to_us(clock.now())
        with self.engine.begin() as conn:
            res = conn.execute(
                sa.update(tasks)
                .where(tasks.c.queue == queue, tasks.c.state.in_(LIVE_STATES))
                .values(_deleted(now_us))
            )
        return int(res.rowcount)

    def clean(
        self,
        *,
        queue: str | None = None,
        state: State | str | None = None,
        task_class: str | None = None,
        dry_run: bool = False,
        batch_size: int = 500,
        progress: Callable[[int], None] | None = None,
    ) -> Cleanup:
        """Deletes tasks by queue, state and task class (at least one), in batches.

        Live tasks become `deleted` (tombstones); finished ones are dropped,
        except rows whose name is still reserved. `dry_run` only counts.
        `progress(n)` hears of each batch of n matching tasks. See
        `tq.dbqueue._cleaner`.
        """
        return _cleaner.clean(
            self.engine, queue=queue, state=state, task_class=task_class, dry_run=dry_run,
            batch_size=batch_size, progress=progress,
        )  # fmt: skip

    def delete_finished(self, older_than: dt.timedelta) -> int:
        """Retention: drops finished tasks older than `older_than`; returns how many.

        A named task's row is kept while its tombstone window lasts, whatever
        `older_than` says, so that names stay deduplicated.
        """
        now_us = to_us(clock.now())
        cutoff = to_us(clock.now() - older_than)
        with self.engine.begin() as conn:
            res = conn.execute(
                sa.delete(tasks).where(
                    tasks.c.state.in_(FINISHED_STATES),
                    tasks.c.finished_us <= cutoff,
                    tasks.c.finished_us + sa.func.coalesce(tasks.c.reserve_us, 0) <= now_us,
                )
            )
        return int(res.rowcount)

    # Queues.

    def apply_queues(self, configs: Iterable[QueueConfig]) -> None:
        """Creates or updates queues from configuration (pause states are kept)."""
        _queuedb.apply_queues(self.engine, configs)

    def list_queues(self) -> list[QueueState]:
        with self.engine.connect() as conn:
            return _queuedb.list_queues(conn)

    def pause_queue(self, name: str) -> bool:
        """Stops dispatching the queue's tasks (they are kept); False if no such queue."""
        return _queuedb.set_paused(self.engine, name, True)

    def resume_queue(self, name: str) -> bool:
        """Resumes a paused queue; False if no such queue."""
        return _queuedb.set_paused(self.engine, name, False)

    def queue_stats(self, queue: str | None = None) -> list[QueueStats]:
        """Stats of every queue (or one), by name."""
        return _stats.queue_stats(self.engine, queue)


def _cursor(cursor: str, parts: int) -> list[int]:
    try:
        values = [int(p) for p in cursor.split(".")]
    except ValueError:
        values = []
    if len(values) != parts:
        raise ValueError(f"malformed page cursor {cursor!r}")
    return values


def delete_live_task(engine: sa.Engine, queue: str, name: str) -> bool:
    """Deletes the pending or leased task `name` of `queue`; False if none is live by that name.

    A leased task's running attempt is not interrupted, but its outcome is
    dropped and it is never retried. The row stays as a tombstone (state
    deleted): a given name stays taken for its tombstone window.
    """
    now_us = to_us(clock.now())
    with engine.begin() as conn:
        res = conn.execute(
            sa.update(tasks)
            .where(tasks.c.queue == queue, tasks.c.name == name, tasks.c.state.in_(LIVE_STATES))
            .values(_deleted(now_us))
        )
    return bool(res.rowcount)


def _replayed(now_us: int) -> dict[str, Any]:
    return {
        "state": State.PENDING.value,
        "eta_us": now_us,
        "attempts": 0,
        "executions": 0,
        "first_attempt_us": None,
        "finished_us": None,
    }


def _deleted(now_us: int) -> dict[str, Any]:
    return {
        "state": State.DELETED.value,
        "finished_us": now_us,
        "lease_owner": None,
        "lease_expires_us": None,
    }
