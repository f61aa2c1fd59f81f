"""7. The database queue: delivered tasks per second, against procrastinate's worker.

N tasks are queued (not timed), then one worker delivers them all; timed
from the worker's start until it has stopped with every outcome recorded:

  tq SQLite       `tq.dbqueue.Worker` on a SQLite file (WAL), pushing each
                  task through the real push path (`tq.asgi.app`, in process,
                  no socket) to an `async def` no-op handler
  tq PostgreSQL   the same on PostgreSQL
  procrastinate   procrastinate's worker (`run_worker_async(wait=False)`) on
                  the same PostgreSQL server, an `async def` no-op task

The same concurrency for every worker (16). The tq queue's rate and
concurrency limits are lifted (its defaults, Cloud Tasks' 500/s, would be
the bound otherwise). Goal: tq >= 2x procrastinate. Needs procrastinate
(installed by `scripts/bench` in .tq-run/benchenv); without it only tq's
figures are printed.

Usage: python -m bench.dbqueue [--n 2000] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import asyncio
import importlib.util
import tempfile
import time
from typing import Any

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.routing import Mount

import tq
import tq.asgi
import tq.txn.sql
from bench import _common as c
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue

QUEUE = dbqueue.QueueConfig("q", rate_per_s=1_000_000, bucket_size=1_000_000, max_concurrent=0)


async def tq_round(engine: sa.Engine, n: int, concurrency: int) -> float:
    """Queues n tasks, then times one worker delivering them; tasks per second."""
    disp = tq.Dispatcher(
        cloud_project="bench", cloud_region="local", default_target_host="app.local",
        target_scheme="http", submitter=dbqueue.DbQueueSubmitter(engine),
    )  # fmt: skip
    seen = 0
    all_seen = asyncio.Event()

    @disp.task_class(id="count", prototype=pb.Count, kind=tq.Kind.FOLLOWS_CONTEXT, queue="q")
    async def count(payload: pb.Count) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            all_seen.set()

    app = Starlette(
        routes=[Mount("/internal/tasks", tq.asgi.app(disp, auth=tq.asgi.INSECURE_NO_AUTH))]
    )
    store = tq.txn.sql.SQLStore(engine, name="bench-dbqueue", register=False)
    for start in range(0, n, 1000):
        with tq.txn.sql.transaction(engine, store=store):
            disp.add_task(
                *(tq.Task(payload=pb.Count(n=i)) for i in range(start, min(n, start + 1000)))
            )
    worker = dbqueue.Worker(engine, app=app, concurrency=concurrency)
    t0 = time.perf_counter()
    await worker.start()
    await asyncio.wait_for(all_seen.wait(), 600)
    await worker.aclose()
    took = time.perf_counter() - t0
    with engine.connect() as conn:
        done = conn.execute(
            sa.text("SELECT count(*) FROM tq_tasks WHERE state = :s"),
            {"s": dbqueue.State.DONE.value},
        ).scalar_one()
    if done != n:
        raise RuntimeError(f"tq: {done} of {n} tasks recorded done")
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM tq_tasks"))
    return n / took


class Procrastinate:
    def __init__(self, url: str) -> None:
        import procrastinate

        libpq = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=libpq))
        self.seen = 0

        @self.app.task(name="count", queue="q")
        async def count(n: int) -> None:
            self.seen += 1

        self.task = count

    async def round(self, n: int, concurrency: int) -> float:
        async with self.app.open_async():
            try:
                await self.app.schema_manager.apply_schema_async()
            except Exception:
                pass  # applied already
            for start in range(0, n, 1000):
                await self.task.batch_defer_async(
                    *({"n": i} for i in range(start, min(n, start + 1000)))
                )
            self.seen = 0
            t0 = time.perf_counter()
            await self.app.run_worker_async(
                queues=["q"], concurrency=concurrency, wait=False, install_signal_handlers=False
            )
            took = time.perf_counter() - t0
            if self.seen != n:
                raise RuntimeError(f"procrastinate: {self.seen} of {n} jobs ran")
            await self.app.connector.execute_query_async("TRUNCATE procrastinate_jobs CASCADE")
        return n / took


def main() -> None:
    ap = c.args(__doc__)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    a = ap.parse_args()
    n, rounds = (30, 1) if a.tiny else (a.n, a.rounds)
    has_peer = importlib.util.find_spec("procrastinate") is not None
    table = c.Table("7. Database queue: delivered tasks/s through the push path")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as d, c.postgres() as server:
        lite = dbqueue.sqlite_engine(f"{d}/tasks.db")
        pg = sa.create_engine(c.fresh_database(server, "tq_bench_dbqueue"), pool_size=10)
        peer = Procrastinate(c.fresh_database(server, "bench_procrastinate")) if has_peer else None
        for engine in (lite, pg):
            dbqueue.create_schema(engine)
            dbqueue.apply_queues(engine, [QUEUE])
        variants: dict[str, Any] = {
            "tq SQLite": lambda: tq_round(lite, n, a.concurrency),
            "tq PostgreSQL": lambda: tq_round(pg, n, a.concurrency),
        }
        if peer is not None:
            variants["procrastinate"] = lambda: peer.round(n, a.concurrency)
        try:
            res = asyncio.run(c.interleaved_async(variants, rounds))
        finally:
            lite.dispose()
            pg.dispose()
    base = res.get("procrastinate")
    table.ratio_row("tq workers, SQLite", res["tq SQLite"], base, goal=2.0, unit=" tasks/s")
    table.ratio_row("tq workers, PostgreSQL", res["tq PostgreSQL"], base, goal=2.0, unit=" tasks/s")
    if peer is None:
        table.notes.append("procrastinate is not installed here: no baseline (see scripts/bench).")
    else:
        import procrastinate

        table.notes.append(f"Baseline: procrastinate {procrastinate.__version__}'s worker.")
    table.notes.append(
        f"Tasks per second, {n} tasks queued beforehand, one worker with concurrency "
        f"{a.concurrency}, timed until it stopped with every outcome recorded. PostgreSQL on "
        f"loopback (fsync off). Took {time.perf_counter() - started:.0f} s; load average "
        f"{c.load_average()}."
    )
    table.print()


if __name__ == "__main__":
    main()
