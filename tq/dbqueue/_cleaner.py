"""The cleaner: delete tasks by queue, state and task class, in batches, with a dry run.

Live tasks (pending, leased) that match become `deleted`: they will not
run, and their rows stay as the tombstones of their names, as with
`Admin.delete_task`. Finished tasks (done, failed, deleted) that match are
dropped from the table, except a named task's row while its tombstone
window lasts (dropped later by retention), so that names stay deduplicated.

Work goes in batches of IDs (each its own short transaction, so workers and
writers are never held up for long), and a callback hears of each batch:
a progress bar for the `tq` command, a counter for the dashboard.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from tq import clock
from tq._errors import ConfigError
from tq.dbqueue import _db
from tq.dbqueue._schema import FINISHED_STATES, LIVE_STATES, State, tasks, to_us

Progress = Callable[[int], None]
"""Called with how many matching tasks a batch went through."""


@dataclasses.dataclass(frozen=True, slots=True)
class Cleanup:
    """What a clean did (or, on a dry run, would do).

    `matched`: tasks matching the filters; `deleted`: live ones now
    deleted; `dropped`: finished rows removed; `kept`: finished rows kept
    as tombstones of names still reserved (retention drops them later).
    A live task that a worker finished between reading and deleting it is
    matched but neither deleted nor dropped.
    """

    matched: int
    deleted: int
    dropped: int
    kept: int
    dry_run: bool


def filters(
    queue: str | None, state: State | str | None, task_class: str | None
) -> list[sa.ColumnElement[bool]]:
    """The WHERE clauses of the admin's task filters (None matches everything)."""
    out: list[sa.ColumnElement[bool]] = []
    if queue is not None:
        out.append(tasks.c.queue == queue)
    if state is not None:
        out.append(tasks.c.state == State(state).value)
    if task_class is not None:
        out.append(tasks.c.task_class == task_class)
    return out


def clean(
    engine: sa.Engine,
    *,
    queue: str | None = None,
    state: State | str | None = None,
    task_class: str | None = None,
    dry_run: bool = False,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> Cleanup:
    """Deletes the matching tasks (see the module); needs at least one filter."""
    if queue is None and state is None and task_class is None:
        raise ConfigError(
            "cleaning needs a queue, a state or a task class: it never deletes every task "
            "of every queue at once"
        )
    if batch_size < 1:
        raise ConfigError("batch_size must be at least 1")
    where = filters(queue, state, task_class)
    now_us = to_us(clock.now())
    reserved = tasks.c.finished_us + sa.func.coalesce(tasks.c.reserve_us, 0) > now_us
    if dry_run:
        return _count(engine, where, reserved)
    matched = deleted = dropped = kept = 0
    after = 0
    page = (
        sa.select(tasks.c.id, tasks.c.state, reserved.label("reserved"))
        .where(tasks.c.id > sa.bindparam("after"), *where)
        .order_by(tasks.c.id)
        .limit(batch_size)
    )
    while True:
        with engine.connect() as conn:
            rows = conn.execute(page, {"after": after}).all()
        if not rows:
            break
        after = rows[-1].id
        matched += len(rows)
        live = [r.id for r in rows if r.state in LIVE_STATES]
        finished = [r.id for r in rows if r.state in FINISHED_STATES and not r.reserved]
        kept += sum(1 for r in rows if r.state in FINISHED_STATES and r.reserved)
        with _db.write_txn(engine) as conn:
            if live:
                deleted += _rowcount(
                    conn.execute(
                        sa.update(tasks)
                        .where(tasks.c.id.in_(live), tasks.c.state.in_(LIVE_STATES))
                        .values(_deleted(now_us))
                    )
                )
            if finished:
                dropped += _rowcount(
                    conn.execute(
                        sa.delete(tasks).where(
                            tasks.c.id.in_(finished), tasks.c.state.in_(FINISHED_STATES)
                        )
                    )
                )
        if progress is not None:
            progress(len(rows))
    return Cleanup(matched, deleted, dropped, kept, False)


def _count(engine: sa.Engine, where: list[sa.ColumnElement[bool]], reserved: Any) -> Cleanup:
    def count_if(cond: sa.ColumnElement[bool]) -> Any:
        return sa.func.coalesce(sa.func.sum(sa.case((cond, 1), else_=0)), 0)

    s = tasks.c.state
    stmt = sa.select(
        sa.func.count(),
        count_if(s.in_(LIVE_STATES)),
        count_if(sa.and_(s.in_(FINISHED_STATES), sa.not_(reserved))),
        count_if(sa.and_(s.in_(FINISHED_STATES), reserved)),
    ).where(*where)
    with engine.connect() as conn:
        matched, live, droppable, reserved_n = conn.execute(stmt).one()
    return Cleanup(int(matched), int(live), int(droppable), int(reserved_n), True)


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def _deleted(now_us: int) -> dict[str, Any]:
    return {
        "state": State.DELETED.value,
        "finished_us": now_us,
        "lease_owner": None,
        "lease_expires_us": None,
    }
