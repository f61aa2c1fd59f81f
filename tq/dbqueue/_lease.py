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
from tq.dbqueue import _db, _pick
from tq.dbqueue._queuedb import QueueState, state_of
from tq.dbqueue._queues import QueueConfig
from tq.dbqueue._schema import State, from_us, queues, tasks, to_us

log = logging.getLogger("tq.dbqueue")

_LEASED = State.LEASED.value
# A literal, not a parameter: only then can PostgreSQL's generic plans use the
# partial index "WHERE priority <> 0".
_ZERO: sa.ColumnElement[int] = sa.literal_column("0")
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
    headers: dict[str, str]  # read-only: tasks with the same headers share one dict
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
    priority: int
    rank_us: int | None  # None for priority 0 (ranks by eta_us)
    tag: str | None
    config: QueueConfig


MAX_RESULT_BYTES = 64 * 1024
"""The most a task's stored result (or failure) may hold."""


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """What to write about an attempt.

    `state` is DONE, FAILED, or PENDING (retry at `eta_us`). `responded`
    says whether the handler answered with a non-5xx status (it counts as
    an execution). `data` is stored as the task's result (DONE) or failure
    (otherwise); at most MAX_RESULT_BYTES.
    """

    task: Leased
    state: State
    status: int | None
    error: str | None
    responded: bool
    now_us: int
    eta_us: int | None = None
    data: bytes | None = None


def shifted_rank(t: Leased, eta_us: int) -> int | None:
    """The rank of `t` moved to a new ETA (its priority's head start kept)."""
    return None if t.rank_us is None else t.rank_us + (eta_us - t.eta_us)


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


LEASED_COLUMNS = [
    tasks.c.id, tasks.c.queue, tasks.c.name, tasks.c.task_class, tasks.c.url, tasks.c.method,
    tasks.c.headers, tasks.c.body, tasks.c.oidc_email, tasks.c.oidc_audience,
    tasks.c.app_engine, tasks.c.dispatch_deadline_s, tasks.c.eta_us, tasks.c.attempts,
    tasks.c.executions, tasks.c.last_status, tasks.c.last_error, tasks.c.first_attempt_us,
    tasks.c.lease_owner, tasks.c.lease_expires_us, tasks.c.priority, tasks.c.rank_us,
    tasks.c.tag,
]  # fmt: skip


def _p(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name)


@functools.cache
def _statements(dialect: str) -> SimpleNamespace:
    """The hot-path statements, built once per dialect with bound parameters.

    Building SQLAlchemy constructs costs more than running them on SQLite.
    """
    pg = dialect != "sqlite"
    returning = dialect in ("sqlite", "postgresql")
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
    # The one-statement lease in ETA order, taken only while no task of another
    # priority is due (an uncorrelated check of the partial priority index,
    # evaluated once); otherwise it leases nothing and `_pick` merges.
    other = tasks.alias("prioritized")
    no_prioritized_due = ~sa.exists().where(
        other.c.queue == _p("q"),
        other.c.state == _PENDING,
        other.c.priority != _ZERO,
        other.c.eta_us <= _p("now"),
    )
    lease_stmt = (
        sa.update(tasks).where(tasks.c.id.in_(due), no_prioritized_due).values(lease_values)
    )
    ids: sa.BindParameter[Any] = sa.bindparam("ids", expanding=True)
    lease_ids = sa.update(tasks).where(tasks.c.id.in_(ids), tasks.c.state == _PENDING)
    lease_ids = lease_ids.values(lease_values)
    return SimpleNamespace(
        returning=returning,
        lease_ids=lease_ids.returning(*LEASED_COLUMNS) if returning else lease_ids,
        lease_ids_for=(
            lease_ids.values(lease_expires_us=_p("until")).returning(*LEASED_COLUMNS)
            if returning
            else lease_ids.values(lease_expires_us=_p("until"))
        ),
        read_leased=sa.select(*LEASED_COLUMNS).where(
            tasks.c.id.in_(ids), tasks.c.state == _LEASED, tasks.c.lease_owner == _p("owner")
        ),
        all_queues=all_queues,
        some_queues=all_queues.where(queues.c.name.in_(sa.bindparam("names", expanding=True))),
        lock_queue=lock_queue,
        in_flight=sa.select(sa.func.count())
        .select_from(tasks)
        .where(tasks.c.queue == _p("q"), tasks.c.state == _LEASED),
        lease=lease_stmt.returning(*LEASED_COLUMNS),
        # Pull consumers name the lease's length themselves.
        lease_for=lease_stmt.values(lease_expires_us=_p("until")).returning(*LEASED_COLUMNS),
        spend_tokens=sa.update(queues)
        .where(queues.c.name == _p("q"))
        .values(tokens=_p("new_tokens"), tokens_at_us=_p("now")),
        retry=sa.update(tasks)
        .where(mine)
        .values(
            state=_PENDING,
            eta_us=_p("eta"),
            rank_us=_p("rank"),
            failure=_p("data"),
            **outcome,
        ),
        finish=sa.update(tasks)
        .where(mine)
        .values(state=_p("new_state"), finished_us=_p("now"), **outcome),
        finish_done=sa.update(tasks)
        .where(mine)
        .values(state=_p("new_state"), finished_us=_p("now"), result=_p("data"), **outcome),
        finish_failed=sa.update(tasks)
        .where(mine)
        .values(state=_p("new_state"), finished_us=_p("now"), failure=_p("data"), **outcome),
        extend=sa.update(tasks).where(mine).values(lease_expires_us=_p("until")),
        heartbeat=sa.update(tasks)
        .where(mine)
        .values(lease_expires_us=_p("until"), progress=_p("progress")),
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
    tag: object = None,
) -> list[Leased]:
    """Leases up to `want` due tasks of `queue`, within its limits.

    In rank order (ETA, priorities; see `_pick`), or by tag: `tag` a string
    or `_pick.OLDEST_TAG` (pull consumers). The lease lasts each task's
    dispatch deadline (else `default_deadline_s`) plus `grace_s`; or exactly
    `lease_s` when given (pull consumers).
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
        if lease_s is not None:
            params["until"] = now_us + int(lease_s * 1e6)
        rows: list[Any] = []
        if tag is None and st.returning:
            # The common case in one statement (see _statements); nothing back:
            # nothing due, or tasks of other priorities are (then merge).
            rows = list(conn.execute(st.lease if lease_s is None else st.lease_for, params))
            if not rows:
                ids = _pick.due_ids(conn, queue, now_us, n)
                if ids:
                    rows = _lease_ids(conn, st, ids, params, lease_s is not None)
        else:
            ids = _pick.due_ids(conn, queue, now_us, n, tag)
            if ids is None:
                ids = _pick.first_ids_by_eta(conn, queue, now_us, n)
            rows = _lease_ids(conn, st, ids, params, lease_s is not None)
        if rows:
            conn.execute(
                st.spend_tokens, {"q": queue, "new_tokens": tokens - len(rows), "now": now_us}
            )
    leased = [leased_of(r, cfg) for r in rows]
    if len(leased) > 1:
        leased.sort(key=rank)
    return leased


def rank(t: Leased) -> tuple[int, int]:
    return (t.eta_us if t.rank_us is None else t.rank_us), t.id


def _lease_ids(
    conn: sa.Connection,
    st: SimpleNamespace,
    ids: Sequence[int],
    params: dict[str, Any],
    fixed: bool,
) -> list[Any]:
    """Leases the pending tasks `ids` (locked by the caller); their rows."""
    if not ids:
        return []
    params = {**params, "ids": list(ids)}
    stmt = st.lease_ids_for if fixed else st.lease_ids
    if st.returning:
        return list(conn.execute(stmt, params).all())
    conn.execute(stmt, params)  # MySQL: no UPDATE ... RETURNING
    return list(conn.execute(st.read_leased, params).all())


_parsed_headers: dict[str, dict[str, str]] = {}


def _headers_of(text: str) -> dict[str, str]:
    """The headers of a leased row, parsed once per distinct JSON text (the tasks of a
    class usually share theirs): read-only, shared by the Leased tasks that have them."""
    h = _parsed_headers.get(text)
    if h is None:
        if len(_parsed_headers) >= 512:
            _parsed_headers.clear()
        h = _parsed_headers[text] = json.loads(text)
    return h


def leased_of(row: Any, cfg: QueueConfig) -> Leased:
    # Positional: the columns of LEASED_COLUMNS are Leased's fields, in order
    # (by name, a row costs about as much to read as the lease itself).
    (id_, queue, name, task_class, url, method, headers, body, oidc_email, oidc_audience,
     app_engine, deadline_s, eta_us, attempts, executions, last_status, last_error,
     first_attempt_us, lease_owner, lease_expires_us, priority, rank_us, tag) = row  # fmt: skip
    return Leased(
        id_, queue, name, task_class, url, method, _headers_of(headers), bytes(body),
        oidc_email, oidc_audience, bool(app_engine), deadline_s, eta_us, attempts,
        executions, last_status, last_error, first_attempt_us, lease_owner, lease_expires_us,
        priority, rank_us, tag, cfg,
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
    finishes: list[tuple[Any, ...]] = []
    done_with_data: list[dict[str, Any]] = []
    failed_with_data: list[dict[str, Any]] = []
    for r in results:
        if r.data is None and r.state is not State.PENDING:  # the usual outcome
            t = r.task
            responded = 1 if r.responded else 0
            finishes.append((r.state.value, r.now_us, r.status, r.error, responded, t.id,
                             t.lease_owner, t.attempts))  # fmt: skip
            continue
        params = {
            **_mine(r.task), "status": r.status, "error": r.error,
            "responded": 1 if r.responded else 0, "now": r.now_us,
        }  # fmt: skip
        if r.state is State.PENDING:
            assert r.eta_us is not None
            retries.append(
                {**params, "eta": r.eta_us, "rank": shifted_rank(r.task, r.eta_us), "data": r.data}
            )
        elif r.state is State.DONE:
            done_with_data.append({**params, "new_state": r.state.value, "data": r.data})
        else:
            failed_with_data.append({**params, "new_state": r.state.value, "data": r.data})
    kept = 0
    batches = (
        (st.retry, retries), (st.finish_done, done_with_data),
        (st.finish_failed, failed_with_data),
    )  # fmt: skip
    with _db.write_txn(engine) as conn:
        # executemany: one statement for the batch, not one round trip per task;
        # the usual outcome's as the driver's SQL (no per-row parameter processing).
        if finishes:
            kept += conn.exec_driver_sql(_finish_sql(conn.dialect.name), finishes).rowcount
        for stmt, batch in batches:
            if batch:
                kept += conn.execute(stmt, batch).rowcount
        exact = conn.dialect.supports_sane_multi_rowcount or (
            len(finishes) <= 1 and all(len(b) <= 1 for _, b in batches)
        )
    if exact and kept < len(results):
        log.warning(
            "tq.dbqueue: %d of %d outcomes were not recorded: their leases were lost "
            "(expired and reclaimed, or the tasks deleted)",
            len(results) - kept,
            len(results),
        )
    return kept


@functools.cache
def _finish_sql(dialect: str) -> str:
    """`finish` (a task done or failed, no data kept) in the driver's positional style:
    state, finished_us, last_status, last_error, responded, then the lease (id, owner,
    attempt)."""
    m = "?" if dialect == "sqlite" else "%s"
    return (
        f"UPDATE {tasks.name} SET state = {m}, finished_us = {m}, lease_owner = NULL, "
        f"lease_expires_us = NULL, last_status = {m}, last_error = {m}, "
        f"executions = executions + {m} "
        f"WHERE id = {m} AND state = '{_LEASED}' AND lease_owner = {m} AND attempts = {m}"
    )


def extend(engine: sa.Engine, t: Leased, until_us: int, progress: str | None = None) -> bool:
    """Moves a held lease's expiry (and records `progress` if given); False if the
    lease was lost."""
    st = _statements(engine.dialect.name)
    params = {**_mine(t), "until": until_us}
    with engine.begin() as conn:
        if progress is None:
            res = conn.execute(st.extend, params)
        else:
            res = conn.execute(st.heartbeat, {**params, "progress": progress})
    return bool(res.rowcount)
