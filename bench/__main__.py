"""The benchmark suite: runs each benchmark in its own process and collects the tables.

    python -m bench [--tiny] [--rounds 3] [--out FILE] [NAME ...]

NAMEs (default: all, in this order): outbox, defer, push, latency, sweeper,
scheduler, dbqueue, once, dashboard, pubsub, django, pgqueuer, ambient. Each prints its
own Markdown table; the suite prints them together, with the machine and its
load, and writes them to `--out` (default .tq-run/bench/results.md). Logs:
.tq-run/bench/<name>.log.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import _common as c

SUITE = (
    "outbox",
    "defer",
    "push",
    "latency",
    "sweeper",
    "scheduler",
    "dbqueue",
    "once",
    "dashboard",
    "pubsub",
    "django",
    "pgqueuer",
    "ambient",
)
# Benchmarks that run in an interpreter of their own (Django 6 needs Python 3.12+).
PYTHONS = {"django": "TQ_BENCH_DJANGO_PYTHON"}


def table_of(output: str) -> str:
    """The Markdown a benchmark printed after its table mark."""
    _, mark, rest = output.partition(c.TABLE_MARK)
    return rest.strip() if mark else ""


def main() -> None:
    ap = argparse.ArgumentParser(description="Runs tq's benchmarks (see docs/benchmarks.md).")
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(SUITE)}")
    ap.add_argument("--tiny", action="store_true", help="a few iterations each (smoke test)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(c.ROOT / ".tq-run" / "bench" / "results.md"))
    a = ap.parse_args()
    names = a.names or list(SUITE)
    unknown = set(names) - set(SUITE)
    if unknown:
        ap.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    head = f"Machine: {c.machine()} (at the start)."
    print(head, flush=True)
    parts = [f"# tq benchmarks\n\n{head}\n"]
    failed = []
    for name in names:
        python = os.environ.get(PYTHONS.get(name, ""), "") or sys.executable
        cmd = [python, "-m", f"bench.{name}", "--rounds", str(a.rounds)]
        if a.tiny:
            cmd.append("--tiny")
        print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=c.ROOT, capture_output=True, text=True)
        log = out.parent / f"{name}.log"
        log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
        table = table_of(proc.stdout)
        if proc.returncode or not table:
            failed.append(name)
            print(f"{name} FAILED (exit {proc.returncode}); see {log}", flush=True)
            print(proc.stderr[-2000:], flush=True)
            continue
        print(table, flush=True)
        print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)
        parts.append(table + "\n")
    parts.append(f"Suite took {time.perf_counter() - started:.0f} s.\n")
    out.write_text("\n".join(parts))
    print(f"\nWritten to {out}.")
    if failed:
        sys.exit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
