"""What the tests of effectively-once handlers share: a ledger table and an app.

The handler under test appends one row per run to `ledger` (no unique key,
so a repeated run shows as a second row) and adds a FOLLOWS_CONTEXT
`receipt` task, which inside its transaction is a reminder: it too must be
added once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

import tq
import tq.txn.sql
from tests.testpb import payloads_pb2 as pb

LEDGER_DDL = "CREATE TABLE IF NOT EXISTS ledger (name TEXT NOT NULL, pid INTEGER NOT NULL)"
PAY = "pay"
RECEIPT = "receipt"


def ledger(engine: sa.Engine) -> list[str]:
    """The names in the ledger, one per run of the handler that committed."""
    with engine.connect() as conn:
        return sorted(r[0] for r in conn.exec_driver_sql("SELECT name FROM ledger"))


def markers(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(r[0] for r in conn.exec_driver_sql("SELECT id FROM tq_done"))


def dispatcher(**kw: Any) -> tq.Dispatcher:
    kw.setdefault("cloud_project", "once")
    kw.setdefault("cloud_region", "us-central1")
    kw.setdefault("default_target_host", "app.example.com")
    return tq.Dispatcher(**kw)


def register_pay(
    disp: tq.Dispatcher,
    sessions: Callable[[], Session],
    *,
    on_run: Callable[[pb.Greet, Session], None] | None = None,
    queue: str = "default",
) -> None:
    """Registers `pay` (an effectively-once handler) and `receipt` (a no-op) on `disp`."""

    @disp.task_class(id=PAY, prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, queue=queue)
    @tq.txn.sql.once(sessions)
    def pay(payload: pb.Greet, session: Session) -> None:
        session.execute(
            sa.text("INSERT INTO ledger (name, pid) VALUES (:n, :p)"),
            {"n": payload.name, "p": os.getpid()},
        )
        disp.add_task(tq.Task(payload=pb.Count(tag=payload.name)))
        if on_run is not None:
            on_run(payload, session)

    @disp.task_class(id=RECEIPT, prototype=pb.Count, kind=tq.Kind.FOLLOWS_CONTEXT, queue=queue)
    def receipt(payload: pb.Count) -> None:
        pass
