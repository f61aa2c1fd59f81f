"""The database queue's workers against the bare push path, and its latency.

    python -m bench.dbqueue_workers [--tasks 3000] [--concurrency 32] [--processes 2]

Every figure pushes the same task (the JSON envelope of a `Greet`) into the
same in-process push endpoint, `tq.asgi.app(dispatcher)` with authentication
off, whose `async def` handler does nothing:

* baselines, no database: the bare ASGI push path, the same POSTs sent
  straight to the app at the same concurrency, (a) through httpx's
  ASGITransport and (b) as the direct ASGI call the worker makes in
  process (`tq.dbqueue._asgi_call`): the ceiling for an in-process worker;
* SQLite and PostgreSQL: `add_task` rate into the queue (one at a time),
  then one in-process `Worker` draining the backlog (delivered/s, timed
  until every outcome is recorded), and on PostgreSQL also N worker
  processes (`python -m tq.dbqueue worker`) draining one backlog together;
* latency: with a worker running, one `add_task_async` at a time, from the
  call until the handler runs (p50 / p90), on SQLite.

PostgreSQL is $TQ_BENCH_PG_URL or a throwaway local cluster (fsync off).
The queue's rate and concurrency limits are lifted for the drains.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

import httpx
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.routing import Mount

import tq
import tq.asgi
from bench import _common as c
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue
from tq.dbqueue import _asgi_call

QUEUE = dbqueue.QueueConfig("bench", rate_per_s=1_000_000, bucket_size=1_000_000, max_concurrent=0)
_arrived: asyncio.Event | None = None


async def greet(payload: pb.Greet) -> None:
    if _arrived is not None:
        _arrived.set()


def make_dispatcher(submitter: Any = None) -> tq.Dispatcher:
    disp = tq.Dispatcher(
        cloud_project="bench", cloud_region="local", default_target_host="app.local",
        submitter=submitter,
    )  # fmt: skip
    disp.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, queue="bench")(
        greet
    )
    return disp


def make_app(disp: tq.Dispatcher) -> Starlette:
    return Starlette(
        routes=[Mount("/internal/tasks", tq.asgi.app(disp, auth=tq.asgi.INSECURE_NO_AUTH))]
    )


# What the worker processes push into (`--app bench.dbqueue_workers:app`).
app = make_app(make_dispatcher())


PUSH_URL = "https://app.local/internal/tasks/t/greet"


def push_headers(i: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-CloudTasks-QueueName": "bench",
        "X-CloudTasks-TaskName": str(i),
    }


async def baseline(n: int, concurrency: int, direct: bool) -> float:
    """Pushes per second through the bare ASGI push path (no queue)."""
    target = make_app(make_dispatcher())
    body = tq._envelope.encode("greet", pb.Greet(name="x"))
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=target)) as client:

        async def one(i: int) -> None:
            async with sem:
                if direct:
                    status, _, _ = await _asgi_call.call(
                        target, "POST", PUSH_URL, push_headers(i), body
                    )
                else:
                    r = await client.post(PUSH_URL, content=body, headers=push_headers(i))
                    status = r.status_code
                if status != 200:
                    raise RuntimeError(f"baseline push got {status}")

        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t)


def fill(engine: sa.Engine, n: int) -> float:
    """add_task per second, n tasks one at a time."""
    disp = make_dispatcher(dbqueue.DbQueueSubmitter(engine))
    t = time.perf_counter()
    for i in range(n):
        disp.add_task(tq.Task(pb.Greet(name=str(i))))
    return n / (time.perf_counter() - t)


async def until_done(engine: sa.Engine, n: int) -> None:
    admin = dbqueue.Admin(engine)
    # Polls the table as an operator would: a task counts once its outcome is recorded.
    while admin.count_tasks(state="done") < n:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


async def drain_in_process(engine: sa.Engine, n: int, concurrency: int) -> float:
    target = make_app(make_dispatcher())
    t = time.perf_counter()
    async with dbqueue.Worker(engine, app=target, concurrency=concurrency) as w:
        await w.start()
        await until_done(engine, n)
    return n / (time.perf_counter() - t)


async def drain_processes(url: str, engine: sa.Engine, n: int, procs: int, conc: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(c.ROOT)}
    admin = dbqueue.Admin(engine)
    admin.pause_queue("bench")  # so that every process starts before the clock does
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tq.dbqueue", "--db", url, "worker",
            "--app", "bench.dbqueue_workers:app", "--concurrency", str(conc),
            "--log-level", "WARNING", env=env, cwd=c.ROOT,
        )
        for _ in range(procs)
    ]  # fmt: skip
    try:
        await asyncio.sleep(10)  # imports take seconds on a loaded machine
        admin.resume_queue("bench")
        t = time.perf_counter()
        await until_done(engine, n)
        return n / (time.perf_counter() - t)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            await w.wait()


async def latency(engine: sa.Engine, samples: int) -> tuple[float, float]:
    global _arrived
    disp = make_dispatcher(dbqueue.DbQueueSubmitter(engine))
    times = []
    async with dbqueue.Worker(engine, app=make_app(disp)) as w:
        await w.start()
        for i in range(samples):
            _arrived = asyncio.Event()
            t = time.perf_counter()
            await disp.add_task_async(tq.Task(pb.Greet(name=str(i))))
            await _arrived.wait()
            times.append(time.perf_counter() - t)
    _arrived = None
    return statistics.median(times) * 1000, statistics.quantiles(times, n=10)[8] * 1000


def reset(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM tq_tasks"))
    dbqueue.apply_queues(engine, [QUEUE])


async def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--tiny", action="store_true", help="a few tasks only (smoke test)")
    a = ap.parse_args()
    n, conc = (50 if a.tiny else a.tasks), a.concurrency
    print(f"{n} tasks, concurrency {conc}; {c.machine()}; load {c.load_average()}")
    via_httpx = await baseline(n, conc, direct=False)
    print(f"baseline, push path via httpx:   {via_httpx:7.0f} pushes/s")
    print(f"baseline, push path direct ASGI: {await baseline(n, conc, direct=True):7.0f} pushes/s")
    with tempfile.TemporaryDirectory() as d:
        lite = dbqueue.sqlite_engine(f"{d}/bench.db")
        dbqueue.create_schema(lite)
        reset(lite)
        print(f"SQLite add_task:                 {fill(lite, n):7.0f} tasks/s")
        rate = await drain_in_process(lite, n, conc)
        print(f"SQLite, 1 worker in-process:     {rate:7.0f} delivered/s")
        p50, p90 = await latency(lite, 20 if a.tiny else 300)
        print(f"SQLite add_task -> handler:      p50 {p50:.1f} ms, p90 {p90:.1f} ms")
        lite.dispose()
    with c.postgres() as server:
        url = c.fresh_database(server, "tq_bench_dbqueue_workers")
        pg = sa.create_engine(url, pool_size=20)
        try:
            dbqueue.create_schema(pg)
            reset(pg)
            print(f"PostgreSQL add_task:             {fill(pg, n):7.0f} tasks/s")
            rate = await drain_in_process(pg, n, conc)
            print(f"PostgreSQL, 1 worker in-process: {rate:7.0f} delivered/s")
            reset(pg)
            fill(pg, n)
            rate = await drain_processes(url, pg, n, a.processes, conc)
            print(f"PostgreSQL, {a.processes} worker processes:  {rate:7.0f} delivered/s")
        finally:
            pg.dispose()
    print(f"load afterwards {c.load_average()}")


if __name__ == "__main__":
    asyncio.run(main())
