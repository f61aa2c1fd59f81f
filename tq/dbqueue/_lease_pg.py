"""The worker's round on PostgreSQL with psycopg 3: few round trips, no thread hop.

The same semantics as `_lease` (whose statements every other database and
every other caller use), in fewer round trips, with the driver's own SQL,
on a connection of the worker's own (`Session`: psycopg's async connection
in autocommit mode, used from the event loop, so that a round costs no
hop to a thread and back, and no pool checkout):

* `read_queues`: the queues and their next ETAs in one statement (no
  BEGIN / ROLLBACK around it); a queue's `QueueConfig` is kept while its
  configuration does not change.
* `lease`: one flush of the connection (a pipeline): BEGIN, lock the queue's
  row, then one statement that refills the bucket from the time elapsed,
  counts the tasks in flight when the queue limits them, picks the due tasks
  (`FOR UPDATE SKIP LOCKED`), leases them and spends their tokens, then
  COMMIT. The statement runs after the lock is held, so its snapshot sees
  every lease committed before (the in-flight count is exact). While a task
  of another priority is due it leases nothing and says so; `_lease.lease`
  then merges the priorities.
* `record`: the usual outcome (done or failed, nothing kept) of a batch of
  tasks in one UPDATE from a JSON array, atomic on its own; other outcomes
  go through `_lease.record`.

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
# Runs with the queue's row locked (LOCK_QUEUE, same transaction): `_lease.lease`
# in one statement. Always one row back: the leased tasks, or one row of NULLs,
# with the ETA of the queue's next pending task (after those leased) and
# `blocked` (tasks of another priority are due: nothing was leased).
# Written for the generic plan the driver's prepared statement gets, whose row
# estimates know nothing of the backlog: `due` orders by `eta_us` alone, the
# order of the due index (ties in that index's order, their insertion order in
# practice), as `ORDER BY eta_us, id` made that plan sort every due task on every
# lease (0.8 ms a lease at 2,500 due); `u` takes its rows by primary key
# (`= ANY (ARRAY(...))`), where a join with `due` could hash the whole table.
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
SELECT {_LEASED_NAMES}, nxt.eta, blocked.b FROM blocked CROSS JOIN nxt LEFT JOIN u ON true
"""
# `_lease._finish_sql` for a batch: one statement (atomic on its own), the
# outcomes as one JSON array of [state, now, status, error, responded, id,
# owner, attempt] (one parameter, which the driver passes as it is), and their
# IDs: the rows are found by primary key. The state is tested so that the lease
# index cannot serve it (`IS TRUE`): that index holds an entry for every version
# of a leased row until vacuum, thousands when a worker is busy.
FINISH = f"""
UPDATE {_T} t SET state = v->>0, finished_us = (v->>1)::bigint, lease_owner = NULL,
  lease_expires_us = NULL, last_status = (v->>2)::int, last_error = v->>3,
  executions = t.executions + (v->>4)::int
FROM jsonb_array_elements(%(v)s::jsonb) AS v
WHERE t.id = ANY (%(ids)s::bigint[]) AND t.id = (v->>5)::bigint AND (t.state = '{_LEASED}') IS TRUE
  AND t.lease_owner = v->>6 AND t.attempts = (v->>7)::int
"""
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
    ) -> tuple[list[Leased], int | None]:
        """`_lease.lease` of a worker (no tag, the lease as long as the deadline) in one
        flush, and the ETA of the queue's next pending task after them (None: none);
        with tasks of other priorities due, `_lease.lease` itself (in a thread), and
        the ETA of the first task due (`now_us`: look again soon)."""
        if want <= 0:
            return [], None
        params = {
            "q": config.name, "now": now_us, "n": want, "owner": owner,
            "deadline": default_deadline_s, "grace": grace_s,
        }  # fmt: skip
        async with self._using() as conn:
            async with conn.pipeline():
                await conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                await conn.execute(LOCK_QUEUE, params)
                cur = await conn.execute(LEASE, params)
                await conn.execute("COMMIT")
            rows = await cur.fetchall()
        next_eta = rows[0][-2]
        if rows[0][0] is None:
            if not rows[0][-1]:
                return [], next_eta
            merge = functools.partial(
                _lease.lease, self.engine, config.name, want=want, owner=owner, now_us=now_us,
                default_deadline_s=default_deadline_s, grace_s=grace_s,
            )  # fmt: skip
            return await asyncio.to_thread(merge), now_us
        leased = [_lease.leased_of(r[:-2], config) for r in rows]
        if len(leased) > 1:
            leased.sort(key=_lease.rank)
        return leased, next_eta

    async def record(self, results: Sequence[Result]) -> int:
        """`_lease.record`: the usual outcomes in one statement, the rest through it
        (in a thread)."""
        usual: list[Result] = []
        other: list[Result] = []
        for r in results:
            (usual if r.data is None and r.state is not State.PENDING else other).append(r)
        kept = 0
        if usual:
            rows = [
                (r.state.value, r.now_us, r.status, r.error, 1 if r.responded else 0,
                 r.task.id, r.task.lease_owner, r.task.attempts)
                for r in usual
            ]  # fmt: skip
            params = {"v": _dumps(rows), "ids": [r.task.id for r in usual]}
            async with self._using() as conn:
                cur = await conn.execute(FINISH, params)
                kept = cur.rowcount
            if kept < len(usual):
                log.warning(
                    "tq.dbqueue: %d of %d outcomes were not recorded: their leases were lost "
                    "(expired and reclaimed, or the tasks deleted)",
                    len(usual) - kept,
                    len(usual),
                )
        if other:
            kept += await asyncio.to_thread(_lease.record, self.engine, other)
        return kept
