"""Returning tasks whose lease expired to their queue (or failing them)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import sqlalchemy as sa

from tq.dbqueue import _db
from tq.dbqueue._queuedb import state_of
from tq.dbqueue._queues import QueueConfig
from tq.dbqueue._schema import IS_LEASED, State, from_us, queues, tasks

log = logging.getLogger("tq.dbqueue")

_LEASED = State.LEASED.value
_PENDING = State.PENDING.value


@dataclasses.dataclass(frozen=True, slots=True)
class _Expired:
    id: int
    queue: str
    name: str
    attempts: int
    first_attempt_us: int
    lease_owner: str
    eta_us: int
    rank_us: int | None


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
            tasks.c.first_attempt_us, tasks.c.lease_owner, tasks.c.eta_us, tasks.c.rank_us,
        )
        .where(IS_LEASED, tasks.c.lease_expires_us <= now_us)  # the partial lease index
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
                eta = now_us + backoff_us
                rank = None if e.rank_us is None else e.rank_us + (eta - e.eta_us)
                values.update(state=_PENDING, eta_us=eta, rank_us=rank)
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
