"""2. Transaction + add_task (SQLAlchemy Core) against procrastinate's defer, PostgreSQL.

Every variant runs the same SQLAlchemy Core transaction on PostgreSQL (one
business row), one after another on one connection, and queues one job in
it:

  procrastinate  `task.configure(connection=<the transaction's psycopg
                 connection>).defer(n=i)`: procrastinate's job INSERT (its
                 defer function and triggers) in the caller's transaction
  tq dbqueue     tq's database queue backend: `add_task` inside
                 `tq.txn.sql.transaction(engine)` writes the task row in the
                 transaction (procrastinate's model: the job exists iff the
                 transaction commits, nothing to do after it)
  tq outbox      the Cloud Tasks backend's outbox: the reminder INSERT, the
                 happy path off (what happens inside the transaction)
  tq outbox + happy  the same plus the post-commit submit (no-op submitter)
                 and DELETE of the reminder, inline; and with background
                 submits (`tq.BackgroundSubmits`: the submit and the batched
                 DELETEs in a thread, the queue settled at the end of each
                 chunk of 200 transactions, timed)
  task row by hand   the database queue's own INSERT of a task row prepared
                 in advance (a fresh name each time), in a plain SQLAlchemy
                 transaction: no `add_task`, no request building. The floor
                 of storing a task row with its indexes; what the
                 `tq dbqueue` variant can at most reach.
  least client work  the same row built from the payload in the fewest
                 steps any client of this table must take (the envelope
                 JSON, a fresh name, the headers JSON with the ETA, the
                 times), then the same INSERT: no validation, no class
                 lookup, no Cloud Tasks request, no transaction helper. What
                 is left of the floor for a client that does anything at all.

Goal: tq >= 1.25x procrastinate. Needs procrastinate, which is not a
dependency of tq: `scripts/bench` installs it in the bench environment
(.tq-run/benchenv); without it the script says so and compares nothing.

Usage: python -m bench.defer [--n 1000] [--rounds 3]
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

import tq
import tq.txn.sql
from bench import _common as c
from tests.testpb import payloads_pb2 as pb
from tq import _envelope, dbqueue
from tq._request import eta_header
from tq.dbqueue._schema import to_us
from tq.dbqueue._taskrow import insert_task, task_row


def dispatcher(submitter: Any, kind: tq.Kind = tq.Kind.TRANSACTIONAL) -> tq.Dispatcher:
    disp = tq.Dispatcher(
        cloud_project="bench", cloud_region="us-central1",
        default_target_host="app.example.com", submitter=submitter,
    )  # fmt: skip
    disp.register_task_class(tq.TaskClass(id="count", prototype=pb.Count, kind=kind, queue="q"))
    return disp


def prepared_row() -> dict[str, Any]:
    """The tq_tasks row of one `add_task` of the benchmark's class, built once."""
    kept: list[tq.Submission] = []

    class Keep:
        def submit(self, submission: tq.Submission) -> None:
            kept.append(submission)

        async def submit_async(self, submission: tq.Submission) -> None:
            kept.append(submission)

    disp = dispatcher(Keep(), tq.Kind.NON_TRANSACTIONAL)
    disp.add_task(tq.Task(payload=pb.Count(n=1)))
    (sub,) = kept
    return task_row(
        sub.request, "count", now_us=time.time_ns() // 1000, reserve_us=0,
        generated_name=lambda: "",
    )  # fmt: skip


def variants(url: str) -> tuple[dict[str, Callable[[int], None]], Callable[[], None], Any]:
    import procrastinate

    engine = sa.create_engine(url, pool_size=5)
    store = tq.txn.sql.SQLStore(engine, name="bench-defer")
    store.create_schema()
    dbqueue.create_schema(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS bench_orders"))
        conn.execute(sa.text("CREATE TABLE bench_orders (id text PRIMARY KEY, n integer)"))
    # Each side gets an engine (and so a pool of connections) of its own:
    # what one leaves on its connections or its engine (procrastinate's
    # adapters, a submitter's listeners) must not slow the others.
    engines = [engine]

    def own_engine() -> sa.Engine:
        engines.append(sa.create_engine(url, pool_size=5))
        return engines[-1]

    outbox_engine, queue_engine, peer_engine, floor_engine = (own_engine() for _ in range(4))
    outbox_store = tq.txn.sql.SQLStore(outbox_engine, name="bench-defer-outbox")
    queue_store = tq.txn.sql.SQLStore(queue_engine, name="bench-defer-queue")
    outbox = dispatcher(c.NullSubmitter())
    queue = dispatcher(dbqueue.DbQueueSubmitter(queue_engine))

    libpq = url.replace("postgresql+psycopg://", "postgresql://", 1)
    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(conninfo=libpq))

    @app.task(name="count", queue="q")
    def count(n: int) -> None:
        pass

    app.open()
    with contextlib.suppress(Exception):
        app.schema_manager.apply_schema()
    orders = sa.text("INSERT INTO bench_orders (id, n) VALUES (:id, :n)")

    def business(conn: sa.Connection, i: int) -> None:
        conn.execute(orders, {"id": os.urandom(16).hex(), "n": i})

    def procrastinate_defer(i: int) -> None:
        with peer_engine.begin() as conn:
            business(conn, i)
            count.configure(connection=conn.connection.driver_connection).defer(n=i)

    def tq_with(
        disp: tq.Dispatcher, engine: sa.Engine, store: tq.txn.sql.SQLStore
    ) -> Callable[[int], None]:
        def go(i: int) -> None:
            with tq.txn.sql.transaction(engine, store=store) as conn:
                business(conn, i)
                disp.add_task(tq.Task(payload=pb.Count(n=i)))

        return go

    row = prepared_row()

    def task_row_by_hand(i: int) -> None:
        with floor_engine.begin() as conn:
            business(conn, i)
            insert_task(conn, {**row, "name": os.urandom(16).hex()})

    def least_client_work(i: int) -> None:
        with floor_engine.begin() as conn:
            business(conn, i)
            now = tq.clock.now()
            now_us = to_us(now)
            headers = {"Content-Type": "application/json", "X-Tq-Expected-Eta": eta_header(now)}
            body = _envelope.encode("count", pb.Count(n=i))
            insert_task(conn, {
                **row, "name": os.urandom(16).hex(), "body": body, "headers": json.dumps(headers),
                "eta_us": now_us, "created_us": now_us,
            })  # fmt: skip

    def clean() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE bench_orders, tq_reminders, tq_tasks"))
            conn.execute(sa.text("TRUNCATE procrastinate_jobs CASCADE"))

    def close() -> None:
        app.close()
        for e in engines:
            e.dispose()

    fns = {
        "procrastinate": procrastinate_defer,
        "tq dbqueue": tq_with(queue, queue_engine, queue_store),
        "tq outbox": tq_with(outbox, outbox_engine, outbox_store),
        "tq outbox + happy": tq_with(outbox, outbox_engine, outbox_store),
        "tq outbox + background": tq_with(outbox, outbox_engine, outbox_store),
        "task row by hand": task_row_by_hand,
        "least client work": least_client_work,
    }
    return fns, clean, close


def main() -> None:
    ap = c.args(__doc__)
    ap.add_argument("--n", type=int, default=1000)
    a = ap.parse_args()
    n, rounds = (20, 1) if a.tiny else (a.n, a.rounds)
    table = c.Table("2. Transaction + add_task vs procrastinate's defer in the same transaction")
    if importlib.util.find_spec("procrastinate") is None:
        table.notes.append(
            "Skipped: procrastinate is not installed here (scripts/bench installs it in "
            ".tq-run/benchenv)."
        )
        table.print()
        return
    import procrastinate

    started = time.perf_counter()
    with c.postgres() as server:
        url = c.fresh_database(server, "tq_bench_defer")
        fns, clean, close = variants(url)
        bg = c.Background()
        try:
            around: dict[str, Any] = {
                k: (lambda k=k: c.happy_path(k.endswith("happy"))) for k in fns
            }
            around["tq outbox + background"] = bg.on
            settle = {"tq outbox + background": bg.settle}
            res: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(rounds):
                got = c.race(fns, n, chunk=200, warmup=min(100, n), around=around, settle=settle)
                for k, v in got.items():
                    res[k].append(v)
                clean()
        finally:
            bg.close()
            close()
    base = res["procrastinate"]
    table.ratio_row("tq database queue (task row in the txn)", res["tq dbqueue"], base, goal=1.25)
    table.ratio_row("tq outbox, write path (reminder row)", res["tq outbox"], base, goal=1.25)
    table.ratio_row("tq outbox + happy path, inline", res["tq outbox + happy"], base)
    table.ratio_row("tq outbox + happy path, background submits",
                    res["tq outbox + background"], base, goal=1.25)  # fmt: skip
    table.ratio_row("task row by hand (floor of the dbqueue row)", res["task row by hand"], base)
    table.ratio_row("least client work for that row (no checks)", res["least client work"], base)
    table.notes.append(
        f"Transactions per second (SQLAlchemy Core, psycopg 3, one business row each), "
        f"baseline: procrastinate {procrastinate.__version__} defer on the transaction's own "
        f"connection. PostgreSQL on loopback, fsync off. {n} transactions per variant and "
        f"round; took {time.perf_counter() - started:.0f} s; load average {c.load_average()}."
    )
    table.print()


if __name__ == "__main__":
    main()
