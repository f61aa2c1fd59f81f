"""The worker's round on PostgreSQL with psycopg 3: few round trips, no thread hop.

The same semantics as `_lease` (whose statements every other database and
every other caller use), in fewer round trips, with the driver's own SQL,
on a connection of the worker's own (`Session`: psycopg's async connection
in autocommit mode, used from the event loop, so that a round costs no
hop to a thread and back, and no pool checkout):

* `read_queues`: the queues and their next ETAs in one statement (no
  BEGIN / ROLLBACK around it); a queue's `QueueConfig` is kept while its
  configuration does not change.
* `lease`: one statement that records the outcomes given (the usual ones,
  done or failed with nothing kept: a busy worker's since its last round),
  locks the queue's row, refills the bucket from the time elapsed, picks the
  due tasks (`FOR UPDATE SKIP LOCKED`), leases them and spends their tokens.
  A queue that limits the tasks in flight runs it after taking that lock in
  a transaction of one flush (a pipeline: BEGIN, the lock, the statement,
  COMMIT), so that its snapshot sees every lease committed before (the
  in-flight count is exact). While a task of another priority is due it
  leases nothing and says so; `_lease.lease` then merges the priorities.
* `record`: the usual outcomes of a batch of tasks in one UPDATE from a JSON
  array, atomic on its own; other outcomes go through `_lease.record`.

A connection that fails is dropped (its transaction state is unknown) and
the next operation connects again; the worker's error handling is the same
as with `_lease`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import sqlalchemy as sa

from tq.dbqueue import _lease
from tq.dbqueue._lease import Leased, Result
from tq.dbqueue._queuedb import CONFIG_COLUMNS, QueueState, state_of
from tq.dbqueue._queues import QueueConfig
from tq.dbqueue._schema import State, queues, tasks

log = logging.getLogger("tq.dbqueue")

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
# `_lease._finish_sql` for a batch: one statement (atomic on its own), the
# outcomes as one JSON array of [state, now, status, error, responded, id,
# owner, attempt] (one parameter, which the driver passes as it is), and their
# IDs: the rows are found by primary key. The state is tested so that the lease
# index cannot serve it (`IS TRUE`): that index holds an entry for every version
# of a leased row until vacuum, thousands when a worker is busy.
_FINISH = f"""
UPDATE {_T} t SET state = v->>0, finished_us = (v->>1)::bigint, lease_owner = NULL,
  lease_expires_us = NULL, last_status = (v->>2)::int, last_error = v->>3,
  executions = t.executions + (v->>4)::int
FROM jsonb_array_elements(%(v)s::jsonb) AS v
WHERE t.id = ANY (%(ids)s::bigint[]) AND t.id = (v->>5)::bigint
  AND (t.state = '{_LEASED}') IS TRUE AND t.lease_owner = v->>6 AND t.attempts = (v->>7)::int
"""
FINISH = _FINISH
# `_lease.lease` in one statement, which also records the outcomes given
# (`fin`, FINISH; none: an empty array), so that a busy worker writes the last
# round's outcomes with the next lease; they are written before the queue's row
# is locked (`q` waits for `fin`), so that no holder of that lock waits for a
# task row (a deadlock with another worker's outcomes). It locks the queue's
# row (`q`) before leasing: rounds of one queue take turns, and the tokens are those of the
# row's last version. Its snapshot is the statement's, taken before that lock:
# tasks another worker leased meanwhile are skipped (their rows are locked or
# no longer pending), but the count of tasks in flight could miss them, so a
# queue that limits them (`max_concurrent`) runs it after LOCK_QUEUE in a
# transaction instead. Always one row back: the leased tasks, or one row of
# NULLs, with the ETA of the queue's next pending task (after those leased),
# `blocked` (tasks of another priority are due: nothing was leased), and the
# outcomes recorded.
# Written for the generic plan the driver's prepared statement gets, whose row
# estimates know nothing of the backlog: `due` orders by `eta_us` alone, the
# order of the due index (ties in that index's order, their insertion order in
# practice), as `ORDER BY eta_us, id` made that plan sort every due task on every
# lease (0.8 ms a lease at 2,500 due); `u` takes its rows by primary key
# (`= ANY (ARRAY(...))`), where a join with `due` could hash the whole table.
LEASE = f"""
WITH fin AS ({_FINISH.strip()}
  RETURNING t.queue
), q AS (
  SELECT max_concurrent, CASE WHEN paused OR rate_per_s <= 0 THEN 0.0::float8 ELSE
    LEAST(bucket_size::float8, tokens + GREATEST(0, %(now)s - tokens_at_us)::float8
      / 1e6::float8 * rate_per_s) END AS tokens
  FROM {_Q} WHERE name = %(q)s AND (SELECT count(*) FROM fin) >= 0
  FOR UPDATE
), lim AS (
  SELECT tokens, GREATEST(0, LEAST(%(n)s, floor(tokens)::bigint, CASE
    WHEN max_concurrent > 0 THEN max_concurrent - (SELECT count(*) FROM {_T}
      WHERE queue = %(q)s AND state = '{_LEASED}')
      + (SELECT count(*) FROM fin WHERE fin.queue = %(q)s)
    ELSE %(n)s END)) AS n
  FROM q
), blocked AS (
  SELECT EXISTS (SELECT 1 FROM {_T} WHERE queue = %(q)s AND state = '{_PENDING}'
    AND priority <> 0 AND eta_us <= %(now)s) AS b
), due AS (
  SELECT id FROM {_T}
  WHERE queue = %(q)s AND state = '{_PENDING}' AND eta_us <= %(now)s
    AND NOT (SELECT b FROM blocked)
  ORDER BY eta_us LIMIT COALESCE((SELECT n FROM lim), 0)
  FOR UPDATE SKIP LOCKED
), u AS (
  UPDATE {_T} t SET state = '{_LEASED}', lease_owner = %(owner)s,
    lease_expires_us = %(now)s + CAST((COALESCE(t.dispatch_deadline_s, %(deadline)s)
      + %(grace)s) * 1e6::float8 AS BIGINT),
    attempts = t.attempts + 1, first_attempt_us = COALESCE(t.first_attempt_us, %(now)s),
    last_attempt_us = %(now)s
  WHERE t.id = ANY (ARRAY(SELECT id FROM due))
  RETURNING {", ".join(f"t.{c.name}" for c in _lease.LEASED_COLUMNS)}
), nxt AS (
  SELECT min(eta_us) AS eta FROM {_T}
  WHERE queue = %(q)s AND state = '{_PENDING}' AND id NOT IN (SELECT id FROM u)
), spent AS (
  UPDATE {_Q} SET tokens = (SELECT tokens FROM lim) - (SELECT count(*) FROM u),
    tokens_at_us = %(now)s
  WHERE name = %(q)s AND EXISTS (SELECT 1 FROM u)
)
SELECT {_LEASED_NAMES}, nxt.eta, blocked.b, (SELECT count(*) FROM fin)
FROM blocked CROSS JOIN nxt LEFT JOIN u ON true
"""
_NO_OUTCOMES = {"v": "[]", "ids": []}
_dumps = json.JSONEncoder(separators=(",", ":")).encode


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


class Session:
    """A worker's own connection for its rounds and outcomes (psycopg's async
    connection, autocommit, from the engine's URL like the listener's): no thread
    hop, no pool checkout. Made on first use and dropped after any error (its
    state is then unknown); one operation at a time.

    If it cannot connect (e.g. the engine connects with arguments its URL does
    not hold), `usable` turns False and the worker goes through the engine.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.usable = True
        self._conn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._conn is not None and self._loop is not loop:
            # Made in another event loop (a worker stepped from several): unusable here.
            with contextlib.suppress(Exception):
                self._conn.pgconn.finish()
            self._conn = None
        self._loop = loop
        if self._conn is None or self._conn.closed:
            import psycopg

            args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
            try:
                self._conn = await psycopg.AsyncConnection.connect(*args, **kwargs, autocommit=True)
            except psycopg.OperationalError:
                if self._ever_connected:
                    raise  # the database is down: the worker pauses and tries again
                self.usable = False
                log.warning(
                    "tq.dbqueue: a worker cannot connect to PostgreSQL from the engine's "
                    "URL alone; its rounds go through the engine's pool",
                    exc_info=True,
                )
                raise
            self._ever_connected = True
        return self._conn

    _ever_connected = False

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[Any]:
        if self._loop is not asyncio.get_running_loop():
            self._lock = asyncio.Lock()  # a lock is bound to the loop it first waited in
        async with self._lock:
            conn = await self._connection()
            try:
                yield conn
            except BaseException:
                self._conn = None
                with contextlib.suppress(Exception):
                    await conn.close()
                raise

    async def aclose(self) -> None:
        async with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close()
                self._conn = None

    async def read_queues(self, names: Sequence[str] | None) -> list[tuple[QueueState, int | None]]:
        """`_lease.read_queues` in one round trip."""
        async with self._using() as conn:
            cur = await conn.execute(READ_QUEUES)
            rows = await cur.fetchall()
        wanted = None if names is None else set(names)
        found = [(_state(r[:-1]), r[-1]) for r in rows if wanted is None or r[0] in wanted]
        found.sort(key=lambda f: f[0].name)
        return found

    async def lease(
        self,
        config: QueueConfig,
        *,
        want: int,
        owner: str,
        now_us: int,
        default_deadline_s: float,
        grace_s: float,
        outcomes: Sequence[Result] = (),
    ) -> tuple[list[Leased], int | None]:
        """`_lease.lease` of a worker (no tag, the lease as long as the deadline) in one
        round trip, and the ETA of the queue's next pending task after them (None:
        none); with tasks of other priorities due, `_lease.lease` itself (in a thread),
        and the ETA of the first task due (`now_us`: look again soon).

        `outcomes` (usual ones: see `usual`) are recorded by the same statement.
        """
        if want <= 0 and not outcomes:
            return [], None
        params = {
            "q": config.name, "now": now_us, "n": max(want, 0), "owner": owner,
            "deadline": default_deadline_s, "grace": grace_s,
            **(_outcome_params(outcomes) if outcomes else _NO_OUTCOMES),
        }  # fmt: skip
        async with self._using() as conn:
            if config.max_concurrent <= 0:
                cur = await conn.execute(LEASE, params)
            else:
                async with conn.pipeline():
                    await conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                    await conn.execute(LOCK_QUEUE, params)
                    cur = await conn.execute(LEASE, params)
                    await conn.execute("COMMIT")
            rows = await cur.fetchall()
        first = rows[0]
        if outcomes:
            _check_kept(first[-1], len(outcomes))
        next_eta = first[-3]
        if first[0] is None:
            if not first[-2] or want <= 0:
                return [], next_eta
            merge = functools.partial(
                _lease.lease, self.engine, config.name, want=want, owner=owner, now_us=now_us,
                default_deadline_s=default_deadline_s, grace_s=grace_s,
            )  # fmt: skip
            return await asyncio.to_thread(merge), now_us
        leased = [_lease.leased_of(r[:-3], config) for r in rows]
        if len(leased) > 1:
            leased.sort(key=_lease.rank)
        return leased, next_eta

    async def record(self, results: Sequence[Result]) -> int:
        """`_lease.record`: the usual outcomes in one statement, the rest through it
        (in a thread)."""
        ours: list[Result] = []
        other: list[Result] = []
        for r in results:
            (ours if usual(r) else other).append(r)
        kept = 0
        if ours:
            params = _outcome_params(ours)
            async with self._using() as conn:
                cur = await conn.execute(FINISH, params)
                kept = cur.rowcount
            _check_kept(kept, len(ours))
        if other:
            kept += await asyncio.to_thread(_lease.record, self.engine, other)
        return kept


def usual(r: Result) -> bool:
    """Whether FINISH (and so a lease) can record `r`: done or failed, nothing kept."""
    return r.data is None and r.state is not State.PENDING


def _outcome_params(results: Sequence[Result]) -> dict[str, Any]:
    rows = [
        (r.state.value, r.now_us, r.status, r.error, 1 if r.responded else 0,
         r.task.id, r.task.lease_owner, r.task.attempts)
        for r in results
    ]  # fmt: skip
    return {"v": _dumps(rows), "ids": [r.task.id for r in results]}


def _check_kept(kept: int, given: int) -> None:
    if kept < given:
        log.warning(
            "tq.dbqueue: %d of %d outcomes were not recorded: their leases were lost "
            "(expired and reclaimed, or the tasks deleted)",
            given - kept,
            given,
        )
