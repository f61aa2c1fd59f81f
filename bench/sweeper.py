"""5. The sweeper: stale reminders resubmitted per second, and peak memory, on PostgreSQL.

N stale reminders (real payloads, random IDs, fresh_until an hour ago) are
written straight into `tq_reminders`; then one sweep runs in a child
process (so its peak RSS is its own) with a no-op submitter:

  tq sync     `InProcSweeper().sweep(dispatcher)` (threads), defaults
  tq async    `await dispatcher.sweep_async()`, defaults
  baseline    the least a sweep must do against the database, hand-written
              with psycopg: key-ordered pages of 512 (id, payload) rows
              read, then deleted by ID, one after another; no decoding, no
              leases, no submits

Reported: reminders gone per second (N / sweep time), and the child's peak
RSS above what it held before the sweep ("memory flat": the same at 100,000
and 1,000,000). Goal: >= 20,000/s.

Usage: python -m bench.sweeper [--sizes 100000,1000000] [--rounds 3] [--large-rounds 1]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import tq
import tq.txn.sql
from bench import _common as c
from tests.testpb import payloads_pb2 as pb

MODES = ("tq sync", "tq async", "baseline")


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def dispatcher() -> tq.Dispatcher:
    import sweeper

    disp = tq.Dispatcher(
        cloud_project="bench", cloud_region="us-central1",
        default_target_host="app.example.com", submitter=c.NullSubmitter(),
        sweeper=sweeper.InProcSweeper(),
    )  # fmt: skip
    disp.register_task_class(
        tq.TaskClass(id="bench", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="q")
    )
    return disp


def seed(url: str, n: int) -> None:
    """Empties the outbox and writes n stale reminders with a real payload."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        store = tq.txn.sql.SQLStore(engine, name="bench-seed", register=False)
        store.create_schema()
        payload = c.reminder_payload(dispatcher(), tq.Task(payload=pb.Greet(name="stale")))
        with engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE tq_reminders, tq_leases"))
            conn.execute(
                sa.text(
                    "INSERT INTO tq_reminders (id, fresh_until, payload) "
                    "SELECT md5(random()::text || i::text), now() - interval '1 hour', :p "
                    "FROM generate_series(1, :n) AS i"
                ),
                {"p": payload, "n": n},
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM ANALYZE tq_reminders"))
    finally:
        engine.dispose()


def child(url: str, mode: str) -> dict[str, Any]:
    """One sweep in this process; returns what the parent reports."""
    import asyncio

    import sqlalchemy as sa

    engine = sa.create_engine(url, pool_size=20, max_overflow=20)
    store = tq.txn.sql.SQLStore(engine, name="bench")
    disp = dispatcher()
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM tq_reminders")).scalar_one()
        conn.rollback()
    before = rss_kib()
    t0 = time.perf_counter()
    if mode == "tq sync":
        disp.sweep()
    elif mode == "tq async":
        asyncio.run(disp.sweep_async())
    else:
        drain(url)
    took = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    left, _ = store.count_reminders()
    engine.dispose()
    return {"n": n, "left": left, "seconds": took, "rss_before_kib": before, "peak_kib": peak}


def drain(url: str) -> None:
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        after = ""
        while True:
            rows = conn.execute(
                "SELECT id, payload FROM tq_reminders WHERE id > %s AND NOT parked "
                "AND fresh_until < now() ORDER BY id LIMIT 512",
                (after,),
            ).fetchall()
            conn.commit()
            if not rows:
                return
            after = rows[-1][0]
            conn.execute("DELETE FROM tq_reminders WHERE id = ANY(%s)", ([r[0] for r in rows],))
            conn.commit()


def run_child(url: str, mode: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.sweeper", "--child", url, mode],
        cwd=c.ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"sweep child ({mode}) failed:\n{out.stderr[-3000:]}")
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if res["left"]:
        raise RuntimeError(f"{mode}: {res['left']} of {res['n']} reminders left after the sweep")
    return res


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3])))
        return
    ap = c.args(__doc__)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument(
        "--large-rounds", type=int, default=1, help="rounds for sizes of 500,000 and up (1)"
    )
    a = ap.parse_args()
    sizes = [500] if a.tiny else [int(s) for s in a.sizes.split(",")]
    rounds = 1 if a.tiny else a.rounds
    table = c.Table("5. Sweeper: stale reminders resubmitted per second, PostgreSQL")
    started = time.perf_counter()
    with c.postgres() as server:
        url = c.fresh_database(server, "tq_bench_sweeper")
        for n in sizes:
            rates: dict[str, list[float]] = {m: [] for m in MODES}
            rss: dict[str, list[float]] = {m: [] for m in MODES}

            def one(mode: str, n: int = n, rss: dict[str, list[float]] = rss) -> float:
                seed(url, n)
                # --tiny (the smoke test) sweeps in this process: no RSS, less start-up.
                r = child(url, mode) if a.tiny else run_child(url, mode)
                rss[mode].append((r["peak_kib"] - r["rss_before_kib"]) / 1024)
                return float(r["n"]) / float(r["seconds"])

            k = min(rounds, a.large_rounds) if n >= 500_000 else rounds
            res = c.interleaved({m: (lambda m=m: one(m)) for m in MODES}, k)
            for m in MODES:
                rates[m] = res[m]
            for m in ("tq sync", "tq async"):
                row = table.ratio_row(
                    f"{n:,} reminders, {m}", rates[m], rates["baseline"], note=f"{k} round(s)"
                )
                row.goal, row.met = ">= 20,000/s", row.tq >= 20_000
            for m in MODES:
                table.add(
                    c.Row(f"{n:,} reminders, {m}: peak RSS growth", c.median(rss[m]), unit=" MiB")
                )
    table.notes.append(
        "Reminders per second (N / sweep wall time), no-op submitter; baseline: a "
        "hand-written key-ordered page-read-and-delete loop (pages of 512). Peak RSS "
        "growth: the sweep process's peak RSS above its RSS just before the sweep. "
        f"PostgreSQL on loopback (fsync off). Took {time.perf_counter() - started:.0f} s; "
        f"load average {c.load_average()}."
    )
    table.print()


if __name__ == "__main__":
    main()
