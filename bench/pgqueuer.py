"""12. The database queue against PgQueuer, the fastest Python queue on PostgreSQL.

One throwaway PostgreSQL (the tests' settings: loopback, fsync off), each
side in a database of its own on it. Cases, each side alternating:

  a. enqueue in the caller's transaction: one business row and one job per
     transaction, one after another on one connection.
       tq          `tq.txn.sql.transaction(engine)` + `add_task`: the database
                   queue's submitter writes the task row in the transaction
       PgQueuer    the same SQLAlchemy + psycopg transaction, the job through
                   PgQueuer's `SyncQueries.enqueue` on its connection (the
                   same stack: the goal's baseline)
       PgQueuer, asyncpg   an asyncpg transaction, `Queries.enqueue` (its
                   fastest path; reported)
  b. 10,000 jobs in batches of 100 (one call per batch):
       tq          `add_task(*100 tasks)` outside a transaction, and inside
                   `tq.txn.sql.transaction(engine)`
       PgQueuer    `SyncQueries.enqueue([...])` on psycopg (the goal's
                   baseline) and `Queries.enqueue([...])` on asyncpg
  c. one worker draining 5,000 no-op jobs queued beforehand, timed until
     it has stopped with every outcome recorded; the worker process's CPU
     per job beside it. tq: `tq.dbqueue.Worker` pushing through the real
     push path (`tq.asgi.app` mounted in a Starlette app, in process);
     PgQueuer: a `QueueManager` in drain mode on asyncpg. Concurrency 32
     and batches of 32 for both.
  d. the same with 1,000 jobs whose handler sleeps 100 ms (I/O), both
     capped at 32 jobs in flight (PgQueuer: batches of 16).
  e. enqueue-to-handler latency, PostgreSQL: an idle worker in another
     process, one job at a time from this one at random intervals, from
     before the enqueue to the handler's start (the handler answers over
     UDP with the time it started; `time.monotonic` is the same clock in
     both processes).

Needs pgqueuer and asyncpg, which are not dependencies of tq: `scripts/bench`
installs them in the bench environment (.tq-run/benchenv); without them the
script says so and compares nothing.

Usage: python -m bench.pgqueuer [--only a,b,c,d,e] [--n 1000] [--rounds 3]
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import time
from collections.abc import Callable

import sqlalchemy as sa

import tq
import tq.txn.sql
from bench import _common as c
from bench import _pgq
from tests.testpb import payloads_pb2 as pb

ORDERS = sa.text("INSERT INTO bench_orders (id, n) VALUES (:id, :n)")


def race_chunks(
    fns: dict[str, Callable[[int, int], None]], n: int, chunk: int = 25, warmup: int = 50
) -> dict[str, float]:
    """Like `c.race`, for variants that run `k` calls from `start` at once (async ones
    run a chunk per event loop step, so no variant pays a loop start per call)."""
    for f in fns.values():
        f(0, warmup)
    spent = dict.fromkeys(fns, 0.0)
    names = list(fns)
    done = 0
    while done < n:
        k = min(chunk, n - done)
        names.reverse()
        for name in names:
            t0 = time.perf_counter()
            fns[name](done, k)
            spent[name] += time.perf_counter() - t0
        done += k
    return {name: n / t for name, t in spent.items()}


def case_a(env: _pgq.Env, n: int, rounds: int, table: c.Table) -> None:
    disp = env.dispatcher(tq.Kind.TRANSACTIONAL)
    store = env.store

    def tq_txn(start: int, k: int) -> None:
        for i in range(start, start + k):
            with tq.txn.sql.transaction(env.tq_engine, store=store) as conn:
                conn.execute(ORDERS, {"id": os.urandom(16).hex(), "n": i})
                disp.add_task(tq.Task(payload=pb.Count(n=i)))

    def pgq_txn(start: int, k: int) -> None:
        for i in range(start, start + k):
            with env.pgq_engine.begin() as conn:
                queries = env.sync_queries(conn)
                conn.execute(ORDERS, {"id": os.urandom(16).hex(), "n": i})
                queries.enqueue("count", json.dumps({"n": i}).encode())

    async def asyncpg_txn(start: int, k: int) -> None:
        conn = env.apg_conn
        for i in range(start, start + k):
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO bench_orders (id, n) VALUES ($1, $2)", os.urandom(16).hex(), i
                )
                await env.apg_queries.enqueue("count", json.dumps({"n": i}).encode())

    fns = {
        "tq": tq_txn,
        "pgq": pgq_txn,
        "pgq asyncpg": lambda s, k: env.run(asyncpg_txn(s, k)),
    }
    res: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, v in race_chunks(fns, n).items():
            res[k].append(v)
        env.clean()
    base = res["pgq"]
    table.ratio_row("a. enqueue in the caller's txn, same stack", res["tq"], base, goal=1.2)
    table.ratio_row("a. the same vs PgQueuer on asyncpg", res["tq"], res["pgq asyncpg"])


def case_b(env: _pgq.Env, total: int, rounds: int, table: c.Table) -> None:
    disp = env.dispatcher(tq.Kind.FOLLOWS_CONTEXT)
    store = env.store
    per = 100

    def batches(fn: Callable[[int], None]) -> Callable[[], float]:
        def timed() -> float:
            t0 = time.perf_counter()
            for start in range(0, total, per):
                fn(start)
            took = time.perf_counter() - t0
            env.clean()
            return total / took

        return timed

    def tq_out(start: int) -> None:
        disp.add_task(*(tq.Task(payload=pb.Count(n=i)) for i in range(start, start + per)))

    def tq_in(start: int) -> None:
        with tq.txn.sql.transaction(env.tq_engine, store=store):
            tq_out(start)

    def pgq_sync(start: int) -> None:
        payloads = [json.dumps({"n": i}).encode() for i in range(start, start + per)]
        env.autocommit_queries.enqueue(["count"] * per, list(payloads), [0] * per)

    async def pgq_async(start: int) -> None:
        payloads = [json.dumps({"n": i}).encode() for i in range(start, start + per)]
        await env.apg_queries.enqueue(["count"] * per, list(payloads), [0] * per)

    variants = {
        "tq out": batches(tq_out),
        "tq in": batches(tq_in),
        "pgq": batches(pgq_sync),
        "pgq asyncpg": batches(lambda s: env.run(pgq_async(s))),
    }
    res = c.interleaved(variants, rounds)
    base = res["pgq"]
    label = f"b. {total:,} jobs in batches of {per}"
    table.ratio_row(f"{label}, tq outside a txn", res["tq out"], base, goal=1.0, unit=" jobs/s")
    table.ratio_row(f"{label}, tq in a txn", res["tq in"], base, goal=1.0, unit=" jobs/s")
    table.ratio_row(f"{label}, tq outside vs asyncpg", res["tq out"], res["pgq asyncpg"],
                    unit=" jobs/s")  # fmt: skip


def case_workers(env: _pgq.Env, n: int, sleep_s: float, rounds: int, table: c.Table) -> None:
    conc = 32
    variants = {
        "tq": lambda: env.run(_pgq.tq_drain(env, n, sleep_s, conc)),
        "pgq": lambda: env.run(_pgq.pgq_drain(env, n, sleep_s, conc)),
    }
    got: dict[str, list[_pgq.Drain]] = {k: [] for k in variants}

    def one(name: str) -> float:
        d = variants[name]()
        got[name].append(d)
        return d.rate

    res = c.interleaved({k: (lambda k=k: one(k)) for k in variants}, rounds)
    what = "no-op jobs" if not sleep_s else f"jobs of {sleep_s * 1000:.0f} ms I/O"
    label = f"{'c' if not sleep_s else 'd'}. one worker, {n:,} {what}"
    table.ratio_row(label, res["tq"], res["pgq"], goal=1.0, unit=" jobs/s")
    for what_cpu, attr in (("worker", "cpu_us"), ("PostgreSQL", "server_cpu_us")):
        tq_cpu = c.median([getattr(d, attr) for d in got["tq"]])
        pgq_cpu = c.median([getattr(d, attr) for d in got["pgq"]])
        if tq_cpu == tq_cpu and pgq_cpu == pgq_cpu:  # not NaN
            table.add(c.Row(f"{label}: {what_cpu} CPU per job", tq_cpu, pgq_cpu, unit=" us"))


def case_e(env: _pgq.Env, samples: int, rounds: int, table: c.Table) -> None:
    res: dict[str, list[list[float]]] = {"tq": [], "pgq": []}
    for r in range(rounds):
        for name in ("tq", "pgq") if r % 2 == 0 else ("pgq", "tq"):
            res[name].append(env.run(_pgq.latencies(env, name, samples)))
    for q, label in ((50, "p50"), (99, "p99")):
        tq_ms = c.median([_pct(x, q) for x in res["tq"]])
        pgq_ms = c.median([_pct(x, q) for x in res["pgq"]])
        row = table.add(c.Row(f"e. enqueue to handler, another process: {label}", tq_ms, pgq_ms,
                              unit=" ms"))  # fmt: skip
        row.goal, row.met = "<= PgQueuer's", tq_ms <= pgq_ms


def _pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100)[q - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    if _pgq.is_child():
        _pgq.child_main()
        return
    ap = c.args(__doc__)
    ap.add_argument("--only", default="a,b,c,d,e")
    ap.add_argument("--n", type=int, default=1000, help="transactions per variant and round (a)")
    ap.add_argument("--batch-total", type=int, default=10_000)
    ap.add_argument("--noop-jobs", type=int, default=5_000)
    ap.add_argument("--io-jobs", type=int, default=1_000)
    ap.add_argument("--samples", type=int, default=200, help="latency samples per round (e)")
    a = ap.parse_args()
    table = c.Table("12. Database queue vs PgQueuer, PostgreSQL")
    if not (importlib.util.find_spec("pgqueuer") and importlib.util.find_spec("asyncpg")):
        table.notes.append(
            "Skipped: pgqueuer and asyncpg are not installed here (scripts/bench installs "
            "them in .tq-run/benchenv)."
        )
        table.print()
        return
    import pgqueuer

    if a.tiny:
        n, total, noop, io, samples, rounds = 20, 200, 100, 40, 5, 1
    else:
        n, total, noop, io = a.n, a.batch_total, a.noop_jobs, a.io_jobs
        samples, rounds = a.samples, a.rounds
    only = set(a.only.split(","))
    started = time.perf_counter()
    with c.postgres() as server, _pgq.Env(server) as env:
        if "a" in only:
            case_a(env, n, rounds, table)
        if "b" in only:
            case_b(env, total, rounds, table)
        if "c" in only:
            case_workers(env, noop, 0.0, rounds, table)
        if "d" in only:
            case_workers(env, io, 0.1, rounds, table)
        if "e" in only:
            case_e(env, samples, rounds, table)
    table.notes.append(
        f"Baseline: PgQueuer {pgqueuer.__version__} (asyncpg {_pgq.asyncpg_version()}), on the "
        "same PostgreSQL server (loopback, fsync off), each side in its own database. Figures "
        "are medians of the rounds; rates per second of wall time; CPU per job: the worker "
        "process's CPU time, and the PostgreSQL server's (every backend) over the drain, "
        f"divided by the jobs. Took {time.perf_counter() - started:.0f} s; load average "
        f"{c.load_average()}."
    )
    table.print()


if __name__ == "__main__":
    main()
