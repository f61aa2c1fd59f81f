"""Rows of `tq_queues`: each queue's configuration, pause state and token bucket."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from tq import clock
from tq.dbqueue import _db
from tq.dbqueue._queues import QueueConfig
from tq.dbqueue._schema import queues, to_us

CONFIG_COLUMNS = (
    "rate_per_s", "bucket_size", "max_concurrent", "max_attempts", "max_retry_duration_s",
    "min_backoff_s", "max_backoff_s", "max_doublings", "pull",
)  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class QueueState:
    """A queue as stored: its configuration, whether paused, its token bucket."""

    config: QueueConfig
    paused: bool
    tokens: float
    tokens_at_us: int

    @property
    def name(self) -> str:
        return self.config.name


def config_values(cfg: QueueConfig) -> dict[str, Any]:
    return {c: getattr(cfg, c) for c in CONFIG_COLUMNS}


def state_of(row: Any) -> QueueState:
    m = {**row._mapping}
    m["pull"] = bool(m["pull"])  # SQLite gives 0 / 1
    return QueueState(
        config=QueueConfig(
            name=m["name"],
            **{c: m[c] for c in CONFIG_COLUMNS if c != "pull"},
            pull=bool(m["pull"]),
        ),
        paused=bool(m["paused"]),
        tokens=float(m["tokens"]),
        tokens_at_us=int(m["tokens_at_us"]),
    )


def _new_row(cfg: QueueConfig, now_us: int) -> dict[str, Any]:
    return {
        "name": cfg.name, **config_values(cfg), "paused": False,
        "tokens": float(cfg.bucket_size), "tokens_at_us": now_us,
        "created_us": now_us, "updated_us": now_us,
    }  # fmt: skip


def apply_queues(engine: sa.Engine, configs: Iterable[QueueConfig]) -> None:
    """Creates or updates queues from configuration; keeps pause states."""
    now_us = to_us(clock.now())
    with _db.write_txn(engine) as conn:
        for cfg in configs:
            cfg.validate()
            _db.upsert(
                conn, queues, _new_row(cfg, now_us), ["name"],
                {**config_values(cfg), "updated_us": now_us},
            )  # fmt: skip


def ensure_queue(conn: sa.Connection, name: str) -> None:
    """Creates queue `name` with the default configuration unless it exists."""
    _db.insert_ignore(conn, queues, _new_row(QueueConfig(name), to_us(clock.now())), ["name"])


def queue_exists(conn: sa.Connection, name: str) -> bool:
    return conn.execute(sa.select(queues.c.name).where(queues.c.name == name)).first() is not None


def get_queue(conn: sa.Connection, name: str) -> QueueState | None:
    row = conn.execute(sa.select(queues).where(queues.c.name == name)).first()
    return None if row is None else state_of(row)


def list_queues(conn: sa.Connection) -> list[QueueState]:
    return [state_of(r) for r in conn.execute(sa.select(queues).order_by(queues.c.name))]


def set_paused(engine: sa.Engine, name: str, paused: bool) -> bool:
    """Pauses or resumes a queue; False if there is no such queue."""
    with engine.begin() as conn:
        res = conn.execute(
            sa.update(queues)
            .where(queues.c.name == name)
            .values(paused=paused, updated_us=to_us(clock.now()))
        )
    return bool(res.rowcount)
