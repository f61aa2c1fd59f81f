"""The worker's round on PostgreSQL with psycopg 3: few round trips, little client work.

The same semantics as `_lease` (whose statements every other database and
every other caller use), in fewer round trips, on a pooled connection in
autocommit mode with the driver's own SQL:

* `read_queues`: the queues and their next ETAs in one statement (no
  BEGIN / ROLLBACK around it); the queue states are kept while their rows
  do not change, so an unchanged queue costs no new `QueueConfig`.
* `lease`: one flush of the connection (a pipeline): BEGIN, lock the queue's
  row, then one statement that refills the bucket from the time elapsed,
  counts the tasks in flight when the queue limits them, picks the due tasks
  (`FOR UPDATE SKIP LOCKED`), leases them and spends their tokens, then
  COMMIT. The statement runs after the lock is held, so its snapshot sees
  every lease committed before (the in-flight count is exact). While a task
  of another priority is due it leases nothing and says so; `_lease.lease`
  then merges the priorities.
* `record`: the usual outcome (done or failed, nothing kept) of a batch of
  tasks in one UPDATE from arrays, atomic on its own; other outcomes go
  through `_lease.record`.

A connection that fails mid-way is discarded from the pool (its transaction
state is unknown); the caller's error handling is the same as `_lease`'s.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from tq.dbqueue import _lease
from tq.dbqueue._lease import Leased, Result
from tq.dbqueue._queuedb import CONFIG_COLUMNS, QueueState, state_of
from tq.dbqueue._queues import QueueConfig
from tq.dbqueue._schema import State, queues, tasks

_PENDING = State.PENDING.value
_LEASED = State.LEASED.value
_T, _Q = tasks.name, queues.name
_LEASED_NAMES = ", ".join(f"u.{c.name}" for c in _lease.LEASED_COLUMNS)
_QUEUE_COLUMNS = tuple(c.name for c in queues.columns)
_QUEUE_NAMES = ", ".join(_QUEUE_COLUMNS)
_CONFIG_KEY = ("name", *CONFIG_COLUMNS)


def usable(engine: sa.Engine) -> bool:
    """Whether `engine` is PostgreSQL through psycopg 3 (the fast path's driver)."""
    return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"


READ_QUEUES = (
    f"SELECT {_QUEUE_NAMES}, (SELECT min(t.eta_us) FROM {_T} t "
    f"WHERE t.queue = q.name AND t.state = '{_PENDING}') FROM {_Q} q"
)
LOCK_QUEUE = f"SELECT 1 FROM {_Q} WHERE name = %(q)s FOR UPDATE"
# Runs with the queue's row locked (LOCK_QUEUE, same transaction): `_lease.lease`
# in one statement. Always one row back: the leased tasks, or one row of NULLs,
# with `blocked` (tasks of another priority are due: nothing was leased).
LEASE = f"""
WITH q AS (
  SELECT max_concurrent, CASE WHEN paused OR rate_per_s <= 0 THEN 0.0::float8 ELSE
    LEAST(bucket_size::float8, tokens + GREATEST(0, %(now)s - tokens_at_us)::float8
      / 1e6::float8 * rate_per_s) END AS tokens
  FROM {_Q} WHERE name = %(q)s
), lim AS (
  SELECT tokens, GREATEST(0, LEAST(%(n)s, floor(tokens)::bigint, CASE
    WHEN max_concurrent > 0 THEN max_concurrent - (SELECT count(*) FROM {_T}
      WHERE queue = %(q)s AND state = '{_LEASED}')
    ELSE %(n)s END)) AS n
  FROM q
), blocked AS (
  SELECT EXISTS (SELECT 1 FROM {_T} WHERE queue = %(q)s AND state = '{_PENDING}'
    AND priority <> 0 AND eta_us <= %(now)s) AS b
), due AS (
  SELECT id FROM {_T}
  WHERE queue = %(q)s AND state = '{_PENDING}' AND eta_us <= %(now)s
    AND NOT (SELECT b FROM blocked)
  ORDER BY eta_us, id LIMIT COALESCE((SELECT n FROM lim), 0)
  FOR UPDATE SKIP LOCKED
), u AS (
  UPDATE {_T} t SET state = '{_LEASED}', lease_owner = %(owner)s,
    lease_expires_us = %(now)s + CAST((COALESCE(t.dispatch_deadline_s, %(deadline)s)
      + %(grace)s) * 1e6::float8 AS BIGINT),
    attempts = t.attempts + 1, first_attempt_us = COALESCE(t.first_attempt_us, %(now)s),
    last_attempt_us = %(now)s
  FROM due WHERE t.id = due.id
  RETURNING {", ".join(f"t.{c.name}" for c in _lease.LEASED_COLUMNS)}
), spent AS (
  UPDATE {_Q} SET tokens = (SELECT tokens FROM lim) - (SELECT count(*) FROM u),
    tokens_at_us = %(now)s
  WHERE name = %(q)s AND EXISTS (SELECT 1 FROM u)
)
SELECT {_LEASED_NAMES}, blocked.b FROM blocked LEFT JOIN u ON true
"""
# `_lease._finish_sql` for a batch: one statement (atomic on its own), the
# outcomes as one JSON array of [state, now, status, error, responded, id,
# owner, attempt] (one parameter, which the driver passes as it is).
FINISH = f"""
UPDATE {_T} t SET state = v->>0, finished_us = (v->>1)::bigint, lease_owner = NULL,
  lease_expires_us = NULL, last_status = (v->>2)::int, last_error = v->>3,
  executions = t.executions + (v->>4)::int
FROM json_array_elements(%s::json) AS v
WHERE t.id = (v->>5)::bigint AND t.state = '{_LEASED}' AND t.lease_owner = v->>6
  AND t.attempts = (v->>7)::int
"""
_dumps = json.JSONEncoder(separators=(",", ":")).encode


@contextlib.contextmanager
def _autocommit(engine: sa.Engine) -> Iterator[Any]:
    """A pooled psycopg connection in autocommit mode (given back as it was taken)."""
    raw = engine.raw_connection()
    ok = False
    try:
        pg = raw.driver_connection
        assert pg is not None
        was = pg.autocommit
        pg.autocommit = True
        yield pg
        pg.autocommit = was
        ok = True
    finally:
        if not ok:
            raw.invalidate()  # mid-pipeline or mid-transaction: not reusable as is
        raw.close()


_configs: dict[tuple[Any, ...], QueueConfig] = {}


def _state(row: Sequence[Any]) -> QueueState:
    """The QueueState of a `tq_queues` row (its QueueConfig kept while unchanged)."""
    m = dict(zip(_QUEUE_COLUMNS, row, strict=False))
    key = tuple(m[c] for c in _CONFIG_KEY)
    cfg = _configs.get(key)
    if cfg is None:
        if len(_configs) > 1000:
            _configs.clear()
        cfg = _configs[key] = state_of(_QueueRow(m)).config
    return QueueState(cfg, bool(m["paused"]), float(m["tokens"]), int(m["tokens_at_us"]))


class _QueueRow:
    """A `tq_queues` row by column name, as `state_of` reads it."""

    __slots__ = ("_mapping",)

    def __init__(self, mapping: dict[str, Any]) -> None:
        self._mapping = mapping


def read_queues(
    engine: sa.Engine, names: Sequence[str] | None
) -> list[tuple[QueueState, int | None]]:
    """`_lease.read_queues` in one round trip."""
    with _autocommit(engine) as pg:
        rows = pg.execute(READ_QUEUES).fetchall()
    wanted = None if names is None else set(names)
    found = [(_state(r[:-1]), r[-1]) for r in rows if wanted is None or r[0] in wanted]
    found.sort(key=lambda f: f[0].name)
    return found


def lease(
    engine: sa.Engine,
    config: QueueConfig,
    *,
    want: int,
    owner: str,
    now_us: int,
    default_deadline_s: float,
    grace_s: float,
) -> list[Leased]:
    """`_lease.lease` of a worker (no tag, the lease as long as the deadline) in one
    flush; with tasks of other priorities due, `_lease.lease` itself."""
    if want <= 0:
        return []
    params = {
        "q": config.name, "now": now_us, "n": want, "owner": owner,
        "deadline": default_deadline_s, "grace": grace_s,
    }  # fmt: skip
    with _autocommit(engine) as pg:
        with pg.pipeline():
            pg.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            pg.execute(LOCK_QUEUE, params)
            cur = pg.execute(LEASE, params)
            pg.execute("COMMIT")
        rows = cur.fetchall()
    if rows[0][0] is None:
        if not rows[0][-1]:
            return []
        return _lease.lease(
            engine, config.name, want=want, owner=owner, now_us=now_us,
            default_deadline_s=default_deadline_s, grace_s=grace_s,
        )  # fmt: skip
    leased = [_lease.leased_of(r[:-1], config) for r in rows]
    if len(leased) > 1:
        leased.sort(key=_lease.rank)
    return leased


def record(engine: sa.Engine, results: Sequence[Result]) -> int:
    """`_lease.record`: the usual outcomes in one statement, the rest through it."""
    usual: list[Result] = []
    other: list[Result] = []
    for r in results:
        (usual if r.data is None and r.state is not State.PENDING else other).append(r)
    kept = 0
    if usual:
        rows = [
            (r.state.value, r.now_us, r.status, r.error, 1 if r.responded else 0, r.task.id,
             r.task.lease_owner, r.task.attempts)
            for r in usual
        ]  # fmt: skip
        with _autocommit(engine) as pg:
            kept = pg.execute(FINISH, (_dumps(rows),)).rowcount
        if kept < len(usual):
            _lease.log.warning(
                "tq.dbqueue: %d of %d outcomes were not recorded: their leases were lost "
                "(expired and reclaimed, or the tasks deleted)",
                len(usual) - kept,
                len(usual),
            )
    if other:
        kept += _lease.record(engine, other)
    return kept
