"""Guarded schedules: how many of a schedule's tasks are still live.

A cron schedule (`tq.Cron(..., max_pending=N)`) or a recurring task
(`Recurring.put(..., max_pending=N)`) adds no task for a tick while N of its
earlier tasks are pending or running (tasques' outstanding-count guard). A
cron schedule's tasks are its class's tasks in its queue; a recurring
task's are those named `rec-<name>-...` in its queue.
"""

from __future__ import annotations

import sqlalchemy as sa

from tq.dbqueue._schema import LIVE_STATES, tasks


def live_tasks(
    conn: sa.Connection,
    queue: str,
    *,
    task_class: str | None = None,
    name_prefix: str | None = None,
) -> int:
    """Live (pending or leased) tasks of `queue`, of `task_class` or named `name_prefix...`."""
    stmt = (
        sa.select(sa.func.count())
        .select_from(tasks)
        .where(tasks.c.queue == queue, tasks.c.state.in_(LIVE_STATES))
    )
    if task_class is not None:
        stmt = stmt.where(tasks.c.task_class == task_class)
    if name_prefix is not None:
        stmt = stmt.where(tasks.c.name.startswith(name_prefix, autoescape=True))
    return int(conn.execute(stmt).scalar_one())
