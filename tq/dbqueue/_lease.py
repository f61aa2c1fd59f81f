"""Leasing due tasks, recording what became of them, reclaiming expired leases.

A lease is the triple (row ID, lease owner, attempt number): every write a
worker makes about a leased task is conditional on all three and on the
task still being leased, so a worker whose lease expired (and whose task
was handed to another worker) can never overwrite the newer attempt.

Rate and concurrency limits hold over every worker of a database: the
token bucket lives in the queue's row, and leasing a queue's tasks takes
that row's lock (PostgreSQL `FOR UPDATE`; SQLite's write lock), refills the
bucket from the time elapsed, counts the tasks in flight and leases at most
what both allow (`FOR UPDATE SKIP LOCKED` on PostgreSQL).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa

from tq import clock
from tq.dbqueue import _db
from tq.dbqueue._queuedb import QueueState, state_of
from tq.dbqueue._queues import QueueConfig
from tq.dbqueue._schema import State, from_us, queues, tasks, to_us

log = logging.getLogger("tq.dbqueue")

_LEASED = State.LEASED.value
_PENDING = State.PENDING.value


@dataclasses.dataclass(frozen=True, slots=True)
class Leased:
    """One task a worker holds: the request and the attempt's facts."""

    id: int
    queue: str
    name: str
    task_class: str
    url: str
    method: str
    headers: dict[str, str]
    body: bytes
    oidc_email: str | None
    oidc_audience: str | None
    app_engine: bool
    dispatch_deadline_s: float | None
    eta_us: int
    attempts: int  # including this one
    executions: int  # responses other than 5xx before this attempt
    last_status: int | None
    last_error: str | None
    first_attempt_us: int
    lease_owner: str
    lease_expires_us: int
    config: QueueConfig


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """What to write about an attempt.

    `state` is DONE, FAILED, or PENDING (retry at `eta_us`). `responded`
    says whether the handler answered with a non-5xx status (it counts as
    an execution).
    """

    task: Leased
    state: State
    status: int | None
    error: str | None
    responded: bool
    now_us: int
    eta_us: int | None = None


def decide(
    t: Leased,
    ok: bool,
    status: int | None,
    error: str | None,
    responded: bool,
    retry_after_s: float | None = None,
) -> Result:
    """The outcome of an attempt: done, retried after the queue's backoff, or failed.

    `retry_after_s` (a Retry-After response header) sets the least wait,
    capped at the queue's max backoff.
    """
    now = clock.now()
    now_us = to_us(now)
    if ok:
        return Result(t, State.DONE, status, None, responded, now_us)
    cfg = t.config
    if cfg.gives_up(t.attempts, now - from_us(t.first_attempt_us)):
        return Result(t, State.FAILED, status, error, responded, now_us)
    wait_s = cfg.backoff(t.attempts).total_seconds()
    if retry_after_s is not None:
        wait_s = max(wait_s, min(retry_after_s, cfg.max_backoff_s))
    return Result(t, State.PENDING, status, error, responded, now_us, now_us + int(wait_s * 1e6))


_LEASED_COLUMNS = [
    tasks.c.id, tasks.c.queue, tasks.c.name, tasks.c.task_class, tasks.c.url, tasks.c.method,
    tasks.c.headers, tasks.c.body, tasks.c.oidc_email, tasks.c.oidc_audience,
    tasks.c.app_engine, tasks.c.dispatch_deadline_s, tasks.c.eta_us, tasks.c.attempts,
    tasks.c.executions, tasks.c.last_status, tasks.c.last_error, tasks.c.first_attempt_us,
    tasks.c.lease_owner, tasks.c.lease_expires_us,
]  # fmt: skip


def _p(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name)


@functools.cache
def _statements(dialect: str) -> SimpleNamespace:
    """The hot-path statements, built once per dialect with bound parameters.

    Building SQLAlchemy constructs costs more than running them on SQLite.
    """
    pg = dialect != "sqlite"
    next_eta = (
        sa.select(sa.func.min(tasks.c.eta_us))
        .where(tasks.c.queue == queues.c.name, tasks.c.state == _PENDING)
        .scalar_subquery()
    )
    all_queues = sa.select(queues, next_eta.label("next_eta_us")).order_by(queues.c.name)
    lock_queue = sa.select(queues).where(queues.c.name == _p("q"))
    due = (
        sa.select(tasks.c.id)
        .where(tasks.c.queue == _p("q"), tasks.c.state == _PENDING, tasks.c.eta_us <= _p("now"))
        .order_by(tasks.c.eta_us, tasks.c.id)
        .limit(_p("n"))
    )
    if pg:
        lock_queue = lock_queue.with_for_update()
        due = due.with_for_update(skip_locked=True)
    deadline_s = sa.func.coalesce(tasks.c.dispatch_deadline_s, _p("default_deadline_s"))
    mine = sa.and_(
        tasks.c.id == _p("task_id"),
        tasks.c.state == _LEASED,
        tasks.c.lease_owner == _p("owner"),
        tasks.c.attempts == _p("attempt"),
    )
    outcome = {
        "lease_owner": None,
        "lease_expires_us": None,
        "last_status": _p("status"),
        "last_error": _p("error"),
        "executions": tasks.c.executions + _p("responded"),
    }
    lease_values = {
        "state": _LEASED,
        "lease_owner": _p("owner"),
        "lease_expires_us": _p("now") + sa.cast((deadline_s + _p("grace_s")) * 1e6, sa.BigInteger),
        "attempts": tasks.c.attempts + 1,
        "first_attempt_us": sa.func.coalesce(tasks.c.first_attempt_us, _p("now")),
        "last_attempt_us": _p("now"),
    }
    lease_stmt = sa.update(tasks).where(tasks.c.id.in_(due)).values(lease_values)
    return SimpleNamespace(
        all_queues=all_queues,
        some_queues=all_queues.where(queues.c.name.in_(sa.bindparam("names", expanding=True))),
        lock_queue=lock_queue,
        in_flight=sa.select(sa.func.count())
        .select_from(tasks)
        .where(tasks.c.queue == _p("q"), tasks.c.state == _LEASED),
        lease=lease_stmt.returning(*_LEASED_COLUMNS),
        # Pull consumers name the lease's length themselves.
        lease_for=lease_stmt.values(lease_expires_us=_p("until")).returning(*_LEASED_COLUMNS),
        spend_tokens=sa.update(queues)
        .where(queues.c.name == _p("q"))
        .values(tokens=_p("new_tokens"), tokens_at_us=_p("now")),
        retry=sa.update(tasks).where(mine).values(state=_PENDING, eta_us=_p("eta"), **outcome),
        finish=sa.update(tasks)
        .where(mine)
        .values(state=_p("new_state"), finished_us=_p("now"), **outcome),
        extend=sa.update(tasks).where(mine).values(lease_expires_us=_p("until")),
    )


def read_queues(
    engine: sa.Engine, names: Sequence[str] | None
) -> list[tuple[QueueState, int | None]]:
    """Every queue (or those named) with the ETA of its earliest pending task."""
    st = _statements(engine.dialect.name)
    with engine.connect() as conn:
        if names is None:
            rows = conn.execute(st.all_queues).all()
        else:
            rows = conn.execute(st.some_queues, {"names": list(names)}).all()
    return [(state_of(r), r.next_eta_us) for r in rows]


def lease(
    engine: sa.Engine,
    queue: str,
    *,
    want: int,
    owner: str,
    now_us: int,
    default_deadline_s: float,
    grace_s: float,
    lease_s: float | None = None,
) -> list[Leased]:
    """Leases up to `want` due tasks of `queue` in ETA order, within its limits.

    The lease lasts each task's dispatch deadline (else `default_deadline_s`)
    plus `grace_s`; or exactly `lease_s` when given (pull consumers).
    """
    if want <= 0:
        return []
    st = _statements(engine.dialect.name)
    with _db.write_txn(engine) as conn:
        q_row = conn.execute(st.lock_queue, {"q": queue}).first()
        if q_row is None:
            return []
        q = state_of(q_row)
        cfg = q.config
        if q.paused or cfg.rate_per_s <= 0:
            return []
        elapsed_s = max(0, now_us - q.tokens_at_us) / 1e6
        tokens = min(float(cfg.bucket_size), q.tokens + elapsed_s * cfg.rate_per_s)
        n = min(want, math.floor(tokens))
        if cfg.max_concurrent and n > 0:
            in_flight = conn.execute(st.in_flight, {"q": queue}).scalar_one()
            n = min(n, cfg.max_concurrent - in_flight)
        if n <= 0:
            return []
        params = {
            "q": queue, "now": now_us, "n": n, "owner": owner,
            "default_deadline_s": default_deadline_s, "grace_s": grace_s,
        }  # fmt: skip
        if lease_s is None:
            rows = conn.execute(st.lease, params).all()
        else:
            until = now_us + int(lease_s * 1e6)
            rows = conn.execute(st.lease_for, {**params, "until": until}).all()
        if rows:
            conn.execute(
                st.spend_tokens, {"q": queue, "new_tokens": tokens - len(rows), "now": now_us}
            )
    leased = [_leased_of(r, cfg) for r in rows]
    leased.sort(key=lambda t: (t.eta_us, t.id))
    return leased


def _leased_of(row: Any, cfg: QueueConfig) -> Leased:
    # Positional: the columns of _LEASED_COLUMNS are Leased's fields, in order
    # (by name, a row costs about as much to read as the lease itself).
    (id_, queue, name, task_class, url, method, headers, body, oidc_email, oidc_audience,
     app_engine, deadline_s, eta_us, attempts, executions, last_status, last_error,
     first_attempt_us, lease_owner, lease_expires_us) = row  # fmt: skip
    return Leased(
        id_, queue, name, task_class, url, method, json.loads(headers), bytes(body),
        oidc_email, oidc_audience, bool(app_engine), deadline_s, eta_us, attempts,
        executions, last_status, last_error, first_attempt_us, lease_owner, lease_expires_us,
        cfg,
    )  # fmt: skip


def _mine(t: Leased) -> dict[str, Any]:
    return {"task_id": t.id, "owner": t.lease_owner, "attempt": t.attempts}


def record(engine: sa.Engine, results: Sequence[Result]) -> int:
    """Writes attempts' outcomes in one transaction; returns how many still held their lease.

    Outcomes of leases lost meanwhile (expired and reclaimed, or the task
    deleted) are dropped: the newer attempt owns the row.
    """
    if not results:
        return 0
    st = _statements(engine.dialect.name)
    retries: list[dict[str, Any]] = []
    finishes: list[dict[str, Any]] = []
    for r in results:
        params = {
            **_mine(r.task), "status": r.status, "error": r.error,
            "responded": 1 if r.responded else 0, "now": r.now_us,
        }  # fmt: skip
        if r.state is State.PENDING:
            retries.append({**params, "eta": r.eta_us})
        else:
            finishes.append({**params, "new_state": r.state.value})
    kept = 0
    with _db.write_txn(engine) as conn:
        # executemany: one statement for the batch, not one round trip per task.
        for stmt, batch in ((st.retry, retries), (st.finish, finishes)):
            if batch:
                kept += conn.execute(stmt, batch).rowcount
        exact = conn.dialect.supports_sane_multi_rowcount or (
            len(retries) <= 1 and len(finishes) <= 1
        )
    if exact and kept < len(results):
        log.warning(
            "tq.dbqueue: %d of %d outcomes were not recorded: their leases were lost "
            "(expired and reclaimed, or the tasks deleted)",
            len(results) - kept,
            len(results),
        )
    return kept


def extend(engine: sa.Engine, t: Leased, until_us: int) -> bool:
    """Moves a held lease's expiry; False if the lease was lost."""
    st = _statements(engine.dialect.name)
    with engine.begin() as conn:
        res = conn.execute(st.extend, {**_mine(t), "until": until_us})
    return bool(res.rowcount)


@dataclasses.dataclass(frozen=True, slots=True)
class _Expired:
    id: int
    queue: str
    name: str
    attempts: int
    first_attempt_us: int
    lease_owner: str


def reclaim_expired(
    engine: sa.Engine, *, now_us: int, limit: int = 500, queue: str | None = None
) -> int:
    """Returns tasks whose lease expired to their queue (or fails them); returns how many.

    An expired lease is a failed attempt without a response (the worker died
    or hung): the task is retried after the queue's backoff, or marked
    FAILED when the queue's retry limits are reached.
    """
    stmt = (
        sa.select(
            tasks.c.id, tasks.c.queue, tasks.c.name, tasks.c.attempts,
            tasks.c.first_attempt_us, tasks.c.lease_owner,
        )
        .where(tasks.c.state == _LEASED, tasks.c.lease_expires_us <= now_us)
        .limit(limit)
    )  # fmt: skip
    if queue is not None:
        stmt = stmt.where(tasks.c.queue == queue)
    with engine.connect() as conn:
        expired = [_Expired(*r) for r in conn.execute(stmt)]
    if not expired:
        return 0
    done = 0
    with _db.write_txn(engine) as conn:
        configs = {
            q.name: q.config
            for q in map(
                state_of,
                conn.execute(
                    sa.select(queues).where(queues.c.name.in_({e.queue for e in expired}))
                ),
            )
        }
        for e in expired:
            cfg = configs.get(e.queue) or QueueConfig(e.queue)
            since = from_us(now_us) - from_us(e.first_attempt_us or now_us)
            values: dict[str, Any] = {
                "lease_owner": None, "lease_expires_us": None, "last_status": None,
                "last_error": "lease expired (no response within the dispatch deadline)",
            }  # fmt: skip
            if cfg.gives_up(e.attempts, since):
                values.update(state=State.FAILED.value, finished_us=now_us)
            else:
                backoff_us = int(cfg.backoff(e.attempts).total_seconds() * 1e6)
                values.update(state=_PENDING, eta_us=now_us + backoff_us)
            res = conn.execute(
                sa.update(tasks)
                .where(
                    tasks.c.id == e.id,
                    tasks.c.state == _LEASED,
                    tasks.c.lease_owner == e.lease_owner,
                    tasks.c.attempts == e.attempts,
                    tasks.c.lease_expires_us <= now_us,
                )
                .values(values)
            )
            if res.rowcount:
                done += 1
                log.warning(
                    "tq.dbqueue: task %s/%s: lease of %s (attempt %d) expired; %s",
                    e.queue,
                    e.name,
                    e.lease_owner,
                    e.attempts,
                    values["state"],
                )
    return done
