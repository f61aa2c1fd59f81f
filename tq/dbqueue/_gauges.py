"""The database queue's gauges: live tasks, the oldest due task's age, leases, by queue.

`observe(engine)` feeds `tq_dbqueue_depth`, `tq_dbqueue_oldest_task_age` and
`tq_dbqueue_leases` (see `tq._metrics`) from one query per collection (the
three gauges share it for a second). Workers register their database while
they run; several workers on one database count once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import sqlalchemy as sa

from tq import _metrics, clock
from tq.dbqueue import _queuedb
from tq.dbqueue._schema import LIVE_STATES, State, tasks, to_us

GAUGES = ("tq_dbqueue_depth", "tq_dbqueue_oldest_task_age", "tq_dbqueue_leases")
_FRESH_S = 1.0


class _Reader:
    """One query for all three gauges, reused for `_FRESH_S`."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._rows: dict[str, tuple[float, float, float]] = {}

    def rows(self) -> dict[str, tuple[float, float, float]]:
        with self._lock:
            if time.monotonic() - self._at > _FRESH_S:
                self._rows = read(self.engine)
                self._at = time.monotonic()
            return self._rows

    def gauge(self, index: int) -> Callable[[], Iterable[_metrics.Observation]]:
        def source() -> Iterable[_metrics.Observation]:
            return [(v[index], {"queue": q}) for q, v in self.rows().items()]

        return source


def read(engine: sa.Engine) -> dict[str, tuple[float, float, float]]:
    """(live tasks, seconds the oldest due pending task has waited, leased tasks) by queue."""
    now_us = to_us(clock.now())
    state = tasks.c.state
    stmt = (
        sa.select(
            tasks.c.queue,
            sa.func.count().label("live"),
            sa.func.min(sa.case((state == State.PENDING.value, tasks.c.eta_us))).label("oldest"),
            sa.func.sum(sa.case((state == State.LEASED.value, 1), else_=0)).label("leased"),
        )
        .where(state.in_(LIVE_STATES))
        .group_by(tasks.c.queue)
    )
    with engine.connect() as conn:
        out = {q.name: (0.0, 0.0, 0.0) for q in _queuedb.list_queues(conn)}
        for r in conn.execute(stmt):
            age = max(now_us - r.oldest, 0) / 1e6 if r.oldest is not None else 0.0
            out[r.queue] = (float(r.live), age, float(r.leased or 0))
    return out


def observe(engine: sa.Engine) -> Callable[[], None]:
    """Feeds the gauges from `engine` until the returned function is called."""
    key = ("tq.dbqueue", engine.url.render_as_string(hide_password=True))
    reader = _Reader(engine)
    undo = [_metrics.observe(name, key, reader.gauge(i)) for i, name in enumerate(GAUGES)]

    def unregister() -> None:
        for u in undo:
            u()

    return unregister
