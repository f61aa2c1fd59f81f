"""A database queue's numbers: each queue's stats now, and its recent past."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import sqlalchemy as sa

from tq import clock
from tq.dbqueue import _queuedb
from tq.dbqueue._queues import QueueConfig
from tq.dbqueue._schema import LIVE_STATES, State, from_us, tasks, to_us
from tq.dbqueue._taskinfo import opt_time


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One bucket of a queue's recent past (see `Admin.history`).

    `added`: tasks created in the bucket; `finished`: tasks that reached a
    final state in it (done, failed or deleted), of which `failed` failed;
    `depth`: live tasks (pending or leased) at the bucket's end.
    """

    start: dt.datetime
    added: int
    finished: int
    failed: int
    depth: int


@dataclasses.dataclass(frozen=True, slots=True)
class QueueStats:
    """A queue's numbers, like Cloud Tasks' QueueStats.

    `tasks` counts live tasks (pending and in flight); `oldest_eta` is the
    earliest ETA among pending ones; `executed_last_minute` counts attempts
    started in the last minute; `effective_rate` is the dispatch rate the
    workers enforce (0 when paused).
    """

    name: str
    paused: bool
    config: QueueConfig
    tasks: int
    oldest_eta: dt.datetime | None
    executed_last_minute: int
    in_flight: int
    effective_rate: float
    done: int
    failed: int


def queue_stats(engine: sa.Engine, queue: str | None = None) -> list[QueueStats]:
    """Stats of every queue (or one), by name."""
    now_us = to_us(clock.now())
    minute_ago = now_us - 60_000_000
    s = tasks.c.state

    def count_if(cond: sa.ColumnElement[bool]) -> Any:
        return sa.func.sum(sa.case((cond, 1), else_=0))

    stmt = sa.select(
        tasks.c.queue,
        count_if(s.in_(LIVE_STATES)).label("live"),
        sa.func.min(sa.case((s == State.PENDING.value, tasks.c.eta_us))).label("oldest"),
        count_if(tasks.c.last_attempt_us >= minute_ago).label("recent"),
        count_if(s == State.LEASED.value).label("in_flight"),
        count_if(s == State.DONE.value).label("done"),
        count_if(s == State.FAILED.value).label("failed"),
    ).group_by(tasks.c.queue)
    if queue is not None:
        stmt = stmt.where(tasks.c.queue == queue)
    with engine.connect() as conn:
        counts = {r.queue: r for r in conn.execute(stmt)}
        states = _queuedb.list_queues(conn)
    out = []
    for q in states:
        if queue is not None and q.name != queue:
            continue
        c = counts.get(q.name)
        out.append(
            QueueStats(
                name=q.name, paused=q.paused, config=q.config,
                tasks=int(c.live or 0) if c else 0,
                oldest_eta=opt_time(c.oldest) if c else None,
                executed_last_minute=int(c.recent or 0) if c else 0,
                in_flight=int(c.in_flight or 0) if c else 0,
                effective_rate=0.0 if q.paused else q.config.rate_per_s,
                done=int(c.done or 0) if c else 0,
                failed=int(c.failed or 0) if c else 0,
            )
        )  # fmt: skip
    return out


def history(
    engine: sa.Engine,
    queue: str | None = None,
    *,
    window: dt.timedelta = dt.timedelta(hours=1),
    buckets: int = 60,
) -> list[HistoryPoint]:
    """The last `window` in `buckets` equal buckets, oldest first: throughput and depth.

    Computed from the tasks' own timestamps (created, finished), so it
    needs no sampling process; tasks dropped by retention inside the
    window are missing from it.
    """
    now_us = to_us(clock.now())
    width = max(1, int(window.total_seconds() * 1_000_000) // buckets)
    start_us = now_us - width * buckets
    where = [] if queue is None else [tasks.c.queue == queue]

    def per_bucket(col: Any, *cond: sa.ColumnElement[bool]) -> dict[int, int]:
        b = ((col - start_us) // width).label("b")
        stmt = (
            sa.select(b, sa.func.count())
            .where(col > start_us, col <= now_us, *where, *cond)
            .group_by(b)
        )
        with engine.connect() as conn:
            return {min(int(k), buckets - 1): int(n) for k, n in conn.execute(stmt)}

    added = per_bucket(tasks.c.created_us)
    finished = per_bucket(tasks.c.finished_us)
    failed = per_bucket(tasks.c.finished_us, tasks.c.state == State.FAILED.value)
    live = sa.select(sa.func.count()).where(tasks.c.state.in_(LIVE_STATES), *where)
    with engine.connect() as conn:
        depth = int(conn.execute(live).scalar_one())
    out: list[HistoryPoint] = []
    for i in reversed(range(buckets)):  # walk back from now: undo each bucket
        out.append(
            HistoryPoint(
                start=from_us(start_us + i * width), added=added.get(i, 0),
                finished=finished.get(i, 0), failed=failed.get(i, 0), depth=max(depth, 0),
            )
        )  # fmt: skip
        depth += finished.get(i, 0) - added.get(i, 0)
    out.reverse()
    return out
