"""Which due tasks a lease takes: ETA order, priorities, tags.

**Priorities.** A task of priority p ranks as if it had become due
`p x priority_step` earlier (`rank_us = eta_us - p x step`, written by the
submitter; tasks of priority 0 rank by `eta_us`). Due tasks are leased by
rank: higher priorities first among tasks that became due at about the same
time, and a task is never overtaken by one that became due more than
`(p_other - p) x step` after it. That bounds starvation: a task of the
lowest priority (-1,000) waits behind new work for at most 2,000 steps.

The common case (no due task of priority != 0) costs one probe of a partial
index that holds only prioritized tasks, and leases in ETA order with the
one-statement path of `_lease`. Otherwise the prioritized candidates (that
index, by rank) and those of priority 0 (the due index, by ETA) are merged
by rank. Both candidate sets are locked (`FOR UPDATE SKIP LOCKED` where the
database has it); the ones not taken are unlocked at commit.

**Tags** (pull queues, App Engine's LeaseByTag): a lease by tag takes due
tasks with that tag in ETA order; with no tag given, the tag of the oldest
due task (untagged tasks, if it has none).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from tq.dbqueue._schema import State, tasks

_PENDING = State.PENDING.value

# A literal, not a parameter: only then can PostgreSQL's generic plans use the
# partial index "WHERE priority <> 0".
_ZERO: sa.ColumnElement[int] = sa.literal_column("0")

OLDEST_TAG = object()
"""`tag=OLDEST_TAG`: lease by the tag of the oldest due task."""


def _p(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name)


@functools.cache
def _statements(dialect: str) -> SimpleNamespace:
    locks = dialect != "sqlite"
    due = (tasks.c.queue == _p("q"), tasks.c.state == _PENDING, tasks.c.eta_us <= _p("now"))

    def locked(stmt: sa.Select[Any]) -> sa.Select[Any]:
        return stmt.with_for_update(skip_locked=True) if locks else stmt

    return SimpleNamespace(
        prioritized=locked(
            sa.select(tasks.c.id, tasks.c.rank_us)
            .where(*due, tasks.c.priority != _ZERO)
            .order_by(tasks.c.rank_us, tasks.c.id)
            .limit(_p("n"))
        ),
        plain=locked(
            sa.select(tasks.c.id, tasks.c.eta_us)
            .where(*due, tasks.c.priority == _ZERO)
            .order_by(tasks.c.eta_us, tasks.c.id)
            .limit(_p("n"))
        ),
        oldest_tag=sa.select(tasks.c.tag).where(*due).order_by(tasks.c.eta_us, tasks.c.id).limit(1),
        tagged=locked(
            sa.select(tasks.c.id)
            .where(*due, tasks.c.tag == _p("tag"))
            .order_by(tasks.c.eta_us, tasks.c.id)
            .limit(_p("n"))
        ),
        untagged=locked(
            sa.select(tasks.c.id)
            .where(*due, tasks.c.tag.is_(None))
            .order_by(tasks.c.eta_us, tasks.c.id)
            .limit(_p("n"))
        ),
        due_ids=locked(
            sa.select(tasks.c.id).where(*due).order_by(tasks.c.eta_us, tasks.c.id).limit(_p("n"))
        ),
    )


def due_ids(
    conn: sa.Connection, queue: str, now_us: int, n: int, tag: object = None
) -> Sequence[int] | None:
    """The IDs of up to `n` due tasks of `queue` to lease, in order; None for "the
    first `n` by ETA" (the caller's one-statement path does that).

    `tag`: None (any tag), a string (that tag only) or OLDEST_TAG.
    """
    st = _statements(conn.dialect.name)
    params = {"q": queue, "now": now_us, "n": n}
    if tag is not None:
        if tag is OLDEST_TAG:
            tag = conn.execute(st.oldest_tag, params).scalar_one_or_none()
            if tag is None:
                return list(conn.execute(st.untagged, params).scalars())
        return list(conn.execute(st.tagged, {**params, "tag": tag}).scalars())
    ranked = [tuple(r) for r in conn.execute(st.prioritized, params)]
    if not ranked:
        return None
    ranked += [tuple(r) for r in conn.execute(st.plain, params)]
    ranked.sort(key=lambda r: (r[1], r[0]))
    return [r[0] for r in ranked[:n]]


def first_ids_by_eta(conn: sa.Connection, queue: str, now_us: int, n: int) -> list[int]:
    """The IDs of the first `n` due tasks by ETA, locked (for databases whose UPDATE
    cannot take them in a subquery)."""
    st = _statements(conn.dialect.name)
    return list(conn.execute(st.due_ids, {"q": queue, "now": now_us, "n": n}).scalars())
