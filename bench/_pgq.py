"""What bench/pgqueuer.py runs: both sides' databases, workers and latency children.

The latency children (`python -m bench.pgqueuer --child tq|pgq URL PORT`)
run one idle worker each and answer every job they run with a UDP datagram
to 127.0.0.1:PORT holding the job's number and `time.monotonic()` at the
handler's start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.routing import Mount

import tq
import tq.asgi
import tq.txn.sql
from bench import _common as c
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue

T = TypeVar("T")
QUEUE = dbqueue.QueueConfig("q", rate_per_s=1_000_000, bucket_size=1_000_000, max_concurrent=0)
ORDERS_DDL = "CREATE TABLE bench_orders (id text PRIMARY KEY, n integer)"


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def asyncpg_version() -> str:
    import asyncpg

    return str(asyncpg.__version__)


class _Seen:
    """What the handlers of a drain count, and how long they sleep."""

    def __init__(self) -> None:
        self.n = 0
        self.want = 0
        self.sleep_s = 0.0
        self.all: asyncio.Event | None = None

    def reset(self, want: int, sleep_s: float) -> None:
        self.n, self.want, self.sleep_s, self.all = 0, want, sleep_s, asyncio.Event()

    async def one(self) -> None:
        if self.sleep_s:
            await asyncio.sleep(self.sleep_s)
        self.n += 1
        if self.n >= self.want and self.all is not None:
            self.all.set()


SEEN = _Seen()


def tq_dispatcher(submitter: Any, kind: tq.Kind = tq.Kind.FOLLOWS_CONTEXT) -> tq.Dispatcher:
    disp = tq.Dispatcher(
        cloud_project="bench", cloud_region="local", default_target_host="app.local",
        target_scheme="http", submitter=submitter,
    )  # fmt: skip
    disp.register_task_class(tq.TaskClass(id="count", prototype=pb.Count, kind=kind, queue="q"))
    return disp


def push_app(disp: tq.Dispatcher) -> Starlette:
    return Starlette(
        routes=[Mount("/internal/tasks", tq.asgi.app(disp, auth=tq.asgi.INSECURE_NO_AUTH))]
    )


class Env:
    """Both sides' databases on one server, and an event loop for the async parts."""

    def __init__(self, server: str) -> None:
        self.server = server

    def __enter__(self) -> Env:
        import asyncpg
        import psycopg
        from pgqueuer.db import AsyncpgDriver, SyncPsycopgDriver
        from pgqueuer.queries import Queries, SyncQueries

        self.loop = asyncio.new_event_loop()
        self.tq_url = c.fresh_database(self.server, "tq_bench_pgq")
        self.pgq_url = c.fresh_database(self.server, "bench_pgqueuer")
        self.tq_engine = sa.create_engine(self.tq_url, pool_size=10)
        self.pgq_engine = sa.create_engine(self.pgq_url, pool_size=5)
        self.store = tq.txn.sql.SQLStore(self.tq_engine, name="bench-pgq", register=False)
        dbqueue.create_schema(self.tq_engine)
        dbqueue.apply_queues(self.tq_engine, [QUEUE])
        for engine in (self.tq_engine, self.pgq_engine):
            with engine.begin() as conn:
                conn.execute(sa.text(ORDERS_DDL))
        self.apg_conn = self.run(asyncpg.connect(libpq(self.pgq_url)))
        self.apg_queries = Queries(AsyncpgDriver(self.apg_conn))
        self.run(self.apg_queries.install())
        self.psy_conn = psycopg.connect(libpq(self.pgq_url), autocommit=True)
        self.autocommit_queries = SyncQueries(SyncPsycopgDriver(self.psy_conn))
        self._sync_queries: dict[int, tuple[Any, Any]] = {}
        self._pg_pids = _server_pids(self.tq_engine)
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(self.apg_conn.close())
        self.psy_conn.close()
        self.tq_engine.dispose()
        self.pgq_engine.dispose()
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def dispatcher(self, kind: tq.Kind) -> tq.Dispatcher:
        return tq_dispatcher(dbqueue.DbQueueSubmitter(self.tq_engine), kind)

    def sync_queries(self, conn: sa.Connection) -> Any:
        """PgQueuer's SyncQueries on the DBAPI connection of `conn` (its open transaction)."""
        from pgqueuer.db import SyncPsycopgDriver
        from pgqueuer.queries import SyncQueries

        raw = conn.connection.dbapi_connection
        kept = self._sync_queries.get(id(raw))
        if kept is None or kept[0] is not raw:
            # The driver insists on autocommit when it is made, and never looks again:
            # its statements then run in the SQLAlchemy transaction like the row's.
            raw.autocommit = True  # type: ignore[union-attr]
            queries = SyncQueries(SyncPsycopgDriver(raw))  # type: ignore[arg-type]
            raw.autocommit = False  # type: ignore[union-attr]
            kept = self._sync_queries[id(raw)] = (raw, queries)
        return kept[1]

    def clean(self) -> None:
        with self.tq_engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE bench_orders, tq_tasks"))
        with self.pgq_engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE bench_orders, pgqueuer, pgqueuer_log"))

    def server_cpu_s(self) -> float:
        """CPU seconds the PostgreSQL server's processes have used (NaN if unknown)."""
        if not self._pg_pids:
            return math.nan
        pids = self._pg_pids()
        return sum(_cpu_s(p) for p in pids) if pids else math.nan


def _server_pids(engine: sa.Engine) -> Any:
    """A function listing the local server's processes (the postmaster's children), or None."""
    with engine.connect() as conn:
        backend = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    try:
        postmaster = _ppid(backend)
    except OSError:
        return None

    def pids() -> list[int]:
        out = [postmaster]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if _ppid(int(entry)) == postmaster:
                        out.append(int(entry))
                except OSError:
                    pass
        return out

    return pids


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _ppid(pid: int) -> int:
    return int(_stat(pid)[1])


def _cpu_s(pid: int) -> float:
    try:
        f = _stat(pid)
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Drain:
    rate: float  # jobs per second of wall time
    cpu_us: float  # the worker process's CPU per job
    server_cpu_us: float  # the PostgreSQL server's CPU per job


async def _timed(env: Env, n: int, run: Any) -> Drain:
    cpu0, srv0, t0 = time.process_time(), env.server_cpu_s(), time.perf_counter()
    await run()
    took = time.perf_counter() - t0
    cpu, srv = time.process_time() - cpu0, env.server_cpu_s() - srv0
    return Drain(n / took, cpu / n * 1e6, srv / n * 1e6)


async def tq_drain(env: Env, n: int, sleep_s: float, conc: int) -> Drain:
    """Queues n tasks (untimed), then times one tq worker delivering them all."""
    disp = env.dispatcher(tq.Kind.FOLLOWS_CONTEXT)
    disp.attach_handler("count", _count)
    for start in range(0, n, 1000):
        tasks = [tq.Task(payload=pb.Count(n=i)) for i in range(start, min(n, start + 1000))]
        with tq.txn.sql.transaction(env.tq_engine, store=env.store):
            disp.add_task(*tasks)
    SEEN.reset(n, sleep_s)
    worker = dbqueue.Worker(env.tq_engine, app=push_app(disp), concurrency=conc, batch_size=conc)

    async def run() -> None:
        await worker.start()
        assert SEEN.all is not None
        await asyncio.wait_for(SEEN.all.wait(), 600)
        await worker.stop()  # every outcome recorded; its connections still open

    d = await _timed(env, n, run)  # (the server's CPU of a closed connection is lost)
    await worker.aclose()
    with env.tq_engine.connect() as conn:
        done = conn.execute(
            sa.text("SELECT count(*) FROM tq_tasks WHERE state = :s"),
            {"s": dbqueue.State.DONE.value},
        ).scalar_one()
    if done != n:
        raise RuntimeError(f"tq: {done} of {n} tasks recorded done")
    env.clean()
    return d


async def _count(payload: pb.Count) -> None:
    await SEEN.one()


async def pgq_drain(env: Env, n: int, sleep_s: float, conc: int) -> Drain:
    """Queues n jobs (untimed), then times one PgQueuer QueueManager draining them."""
    import asyncpg
    from pgqueuer import QueueManager
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    for start in range(0, n, 1000):
        k = min(n, start + 1000) - start
        payloads = [json.dumps({"n": i}).encode() for i in range(start, start + k)]
        await env.apg_queries.enqueue(["count"] * k, list(payloads), [0] * k)
    SEEN.reset(n, sleep_s)
    conn = await asyncpg.connect(libpq(env.pgq_url))
    try:
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("count")
        async def count(job: Any) -> None:
            await SEEN.one()

        async def run() -> None:
            if sleep_s:  # jobs in flight capped like tq's worker (batches of half)
                await qm.run(mode=QueueExecutionMode.drain, batch_size=conc // 2,
                             max_concurrent_tasks=conc)  # fmt: skip
            else:
                await qm.run(mode=QueueExecutionMode.drain, batch_size=conc)

        d = await _timed(env, n, run)
    finally:
        await conn.close()
    if SEEN.n != n:
        raise RuntimeError(f"PgQueuer: {SEEN.n} of {n} jobs ran")
    env.clean()
    return d


async def latencies(env: Env, side: str, samples: int) -> list[float]:
    """Milliseconds from before an enqueue to the handler's start in another process."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    url = env.tq_url if side == "tq" else env.pgq_url
    child = subprocess.Popen(  # noqa: ASYNC220 (started once, before the timing)
        [sys.executable, "-m", "bench.pgqueuer", "--child", side, url, str(port)],
        cwd=c.ROOT, env={**os.environ, "PYTHONPATH": str(c.ROOT)},
    )  # fmt: skip
    disp = env.dispatcher(tq.Kind.FOLLOWS_CONTEXT)
    rng = random.Random(side)

    async def one(i: int, wait_s: float) -> float:
        t0 = time.monotonic()
        if side == "tq":
            disp.add_task(tq.Task(payload=pb.Count(n=i)))
        else:
            await env.apg_queries.enqueue("count", json.dumps({"n": i}).encode())
        while True:
            data = await asyncio.wait_for(loop.sock_recv(sock, 256), wait_s)
            got, started = data.decode().split()
            if int(got) == i:
                return (float(started) - t0) * 1000

    try:
        await one(-1, 300)  # the child is up and its worker running
        for i in range(-3, -1):
            await one(i, 30)
        out = []
        for i in range(samples):
            # A random phase against any poll interval, the worker idle again.
            await asyncio.sleep(rng.uniform(0.02, 0.12))
            out.append(await one(i, 30))
        return out
    finally:
        child.send_signal(signal.SIGTERM)
        child.wait(60)
        sock.close()
        env.clean()


# The latency children.


def is_child() -> bool:
    return len(sys.argv) > 1 and sys.argv[1] == "--child"


def child_main() -> None:
    side, url, port = sys.argv[2], sys.argv[3], int(sys.argv[4])
    asyncio.run(_child(side, url, port))


async def _child(side: str, url: str, port: int) -> None:
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    def answer(n: int) -> None:
        out.sendto(f"{n} {time.monotonic()!r}".encode(), ("127.0.0.1", port))

    if side == "tq":
        engine = sa.create_engine(url, pool_size=5)
        disp = tq_dispatcher(None)

        async def count(payload: pb.Count) -> None:
            answer(payload.n)

        disp.attach_handler("count", count)
        async with dbqueue.Worker(engine, app=push_app(disp)) as worker:
            await worker.start()
            await stop.wait()
        engine.dispose()
        return
    import asyncpg
    from pgqueuer import QueueManager
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(libpq(url))
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint("count")
    async def pgq_count(job: Any) -> None:
        answer(json.loads(job.payload)["n"])

    running = asyncio.create_task(qm.run())
    await stop.wait()
    qm.shutdown.set()
    await running
    await conn.close()
