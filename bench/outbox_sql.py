"""Transactions per second with and without add_task, on SQLite and PostgreSQL.

Each variant runs the same ORM transaction (sessionmaker, one business row)
one after another on one connection:

  plain           the transaction alone
  +insert         plus one hand-written INSERT of a reminder-sized row
  +save_reminder  tq.txn.sql.transaction + the reminder write, without
                  add_task's request building (the store's share alone)
  +add_task       tq.txn.sql.transaction + add_task (the reminder write);
                  happy path switched off
  +add_task+happy the same with the happy path (a no-op submitter, then
                  DELETE of the reminder: a second, short transaction)

Usage (from the repository root):
  .venv/bin/python bench/outbox_sql.py [--n 2000] [--rounds 3] [--pg-url URL] [--no-pg]
Without --pg-url a throwaway PostgreSQL cluster is started (as in the tests).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Engine, text
from sqlalchemy.orm import sessionmaker

import tq
import tq.txn.sql
from tests.conformance.harness_sql import make_engine
from tests.testpb import payloads_pb2 as pb
from tq import _outbox
from tq._reminder import Reminder
from tq.txn import PendingTask


class NoopSubmitter:
    def submit(self, submission: Any) -> None:
        pass

    async def submit_async(self, submission: Any) -> None:
        pass


def _setup(engine: Engine) -> tuple[tq.Dispatcher, tq.txn.sql.SQLStore, bytes]:
    store = tq.txn.sql.SQLStore(engine, name="bench")
    store.create_schema()
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS bench_rows"))
        conn.execute(text("CREATE TABLE bench_rows (id TEXT PRIMARY KEY, n INTEGER)"))
    disp = tq.Dispatcher(
        cloud_project="bench", cloud_region="us-central1",
        default_target_host="app.example.com", submitter=NoopSubmitter(),
    )  # fmt: skip
    disp.register_task_class(
        tq.TaskClass(id="bench", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="q")
    )
    # A reminder payload as add_task makes it, for the hand-written INSERT.
    sample = b""

    def capture(s: Any, pending: Any) -> None:
        nonlocal sample
        sample = pending[0].reminder.payload

    orig, _outbox.after_commit = _outbox.after_commit, capture
    try:
        with tq.txn.sql.transaction(sessionmaker(engine), store=store):
            disp.add_task(tq.Task(payload=pb.Greet(name="sample")))
    finally:
        _outbox.after_commit = orig
    return disp, store, sample


def variants(engine: Engine) -> dict[str, Callable[[int], None]]:
    disp, store, payload = _setup(engine)
    sessions = sessionmaker(engine)
    row = text("INSERT INTO bench_rows (id, n) VALUES (:id, :n)")
    rem = text(
        "INSERT INTO tq_reminders (id, fresh_until, parked, extra, payload) "
        "VALUES (:id, :fu, :parked, :extra, :payload)"
    )
    is_sqlite = engine.dialect.name == "sqlite"
    task = tq.Task(payload=pb.Greet(name="bench"))

    def plain(i: int) -> None:
        with sessions() as s:
            s.execute(row, {"id": os.urandom(16).hex(), "n": i})
            s.commit()

    def with_insert(i: int) -> None:
        with sessions() as s:
            s.execute(row, {"id": os.urandom(16).hex(), "n": i})
            fu: Any = tq.clock.now()
            if is_sqlite:
                fu = int(fu.timestamp() * 1_000_000)
            s.execute(rem, {"id": os.urandom(16).hex(), "fu": fu, "parked": False,
                            "extra": b"", "payload": payload})  # fmt: skip
            s.commit()

    def with_add_task(i: int) -> None:
        with tq.txn.sql.transaction(sessions, store=store) as s:
            s.execute(row, {"id": os.urandom(16).hex(), "n": i})
            disp.add_task(task)

    def with_save_reminder(i: int) -> None:
        # The store's share alone: the helper and the reminder write, with the
        # request add_task would build made once up front.
        with tq.txn.sql.transaction(sessions, store=store) as s:
            s.execute(row, {"id": os.urandom(16).hex(), "n": i})
            reminder = Reminder(os.urandom(16).hex(), tq.clock.now(), payload)
            txn = tq.txn.current_transaction()
            assert txn is not None
            txn.save_reminder(PendingTask(reminder, template.submission, template.submitter))

    template = _pending_template(disp, sessions, store)
    return {"plain": plain, "+insert": with_insert, "+save_reminder": with_save_reminder,
            "+add_task": with_add_task, "+add_task+happy": with_add_task}  # fmt: skip


def _pending_template(
    disp: tq.Dispatcher, sessions: Any, store: tq.txn.sql.SQLStore
) -> PendingTask:
    class Capture:
        store: Any = None
        deadline = None
        saved: list[PendingTask] = []  # noqa: RUF012

        def save_reminder(self, p: PendingTask) -> None:
            self.saved.append(p)

    cap = Capture()
    cap.store = store
    with tq.txn.ambient(cap):
        disp.add_task(tq.Task(payload=pb.Greet(name="bench")))
    return cap.saved[0]


def run(name: str, engine: Engine, n: int, rounds: int) -> dict[str, float]:
    """Runs the variants in interleaved blocks, so load drift hits all alike."""
    fns = variants(engine)
    results: dict[str, list[float]] = {k: [] for k in fns}
    orig = _outbox.after_commit
    block = 100
    for fn in fns.values():  # warm-up
        for i in range(block):
            fn(i)
    for _ in range(rounds):
        for start in range(0, n, block):
            for variant, fn in fns.items():
                _outbox.after_commit = orig if variant.endswith("happy") else (lambda s, p: None)
                try:
                    t0 = time.perf_counter()
                    for i in range(start, start + block):
                        fn(i)
                    results[variant].append(block / (time.perf_counter() - t0))
                finally:
                    _outbox.after_commit = orig
        with engine.begin() as conn:  # keep table sizes alike between rounds
            conn.execute(text("DELETE FROM tq_reminders"))
            conn.execute(text("DELETE FROM bench_rows"))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\n{name} ({rounds} x {n} transactions per variant, median of {block}-tx blocks)")
    for k, v in med.items():
        print(f"  {k:<16} {v:8.0f} tx/s  ({v / med['+insert']:.2f}x of +insert)")
    return med


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg-url")
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        engine = make_engine(f"sqlite:///{d}/bench.db")
        try:
            run("SQLite (file, WAL)", engine, args.n, args.rounds)
        finally:
            engine.dispose()
    if args.no_pg:
        return
    if args.pg_url:
        engine = make_engine(args.pg_url)
        try:
            run("PostgreSQL", engine, args.n, args.rounds)
        finally:
            engine.dispose()
        return
    from tests._services.postgres import throwaway_cluster

    with throwaway_cluster() as url:
        engine = make_engine(url)
        try:
            run("PostgreSQL (local, fsync=off)", engine, args.n, args.rounds)
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
