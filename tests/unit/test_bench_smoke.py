"""Every benchmark script runs in its --tiny mode and prints its results table.

No timing is checked here (figures belong to bench/, see docs/benchmarks.md):
only that the scripts still run against the current code. They run a few at
a time, each in its own process, on the test session's PostgreSQL.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import _common
from bench.__main__ import SUITE, table_of

ROOT = Path(__file__).resolve().parents[2]


# How many benchmarks run at a time. All of them at once (a dozen processes on two
# cores) starved each other past their own start-up deadlines.
AT_ONCE = 4
# The longest in --tiny mode (20 to 30 s each), started first.
LONGEST = ("dashboard", "outbox", "pubsub", "once")


@pytest.mark.postgres
def test_every_benchmark_runs_tiny_and_prints_its_table(postgres_url: str) -> None:
    env = {**os.environ, "TQ_BENCH_PG_URL": postgres_url}

    def run(name: str) -> str | None:
        """Why the benchmark `name` failed, or None."""
        try:
            done = subprocess.run(
                [sys.executable, "-m", f"bench.{name}", "--tiny"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
        except subprocess.TimeoutExpired as e:
            err = e.stderr or ""
            err = err.decode(errors="replace") if isinstance(err, bytes) else err
            return f"{name}: timed out\n{err[-1500:]}"
        if done.returncode or "| case | tq | baseline | ratio |" not in table_of(done.stdout):
            return f"{name}: exit {done.returncode}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
        return None

    names = sorted(SUITE, key=lambda n: n not in LONGEST)
    with concurrent.futures.ThreadPoolExecutor(AT_ONCE) as pool:
        failures = [f for f in pool.map(run, names) if f is not None]
    assert not failures, "\n\n".join(failures)


def test_table_prints_ratios_and_goals(capsys: pytest.CaptureFixture[str]) -> None:
    t = _common.Table("demo")
    t.ratio_row("met", [9.0, 10.0, 11.0], [10.0, 10.0, 40.0], goal=0.9)
    t.ratio_row("missed", [1.0], [2.0], goal=0.9)
    t.print()
    out = table_of(capsys.readouterr().out)
    assert "| met | 10.0/s | 10.0/s | 1.00x | >= 0.9x | yes |" in out
    assert "| missed | 1.00/s | 2.00/s | 0.50x | >= 0.9x | **no** |" in out


def test_rounds_alternate_their_order() -> None:
    calls: list[str] = []
    res = _common.interleaved(
        {"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, 3
    )
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert res == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}


def test_happy_path_off_reaches_every_holder_of_after_commit() -> None:
    import tq.txn._spanner_store
    import tq.txn.sql._transaction
    from tq import _outbox

    real = _outbox.after_commit
    with _common.happy_path(False):
        assert _outbox.after_commit is not real
        assert tq.txn._spanner_store.after_commit is _outbox.after_commit  # imported by name
    assert _outbox.after_commit is real
    assert tq.txn._spanner_store.after_commit is real


def test_the_instruction_count_script_adds_and_drains_every_task() -> None:
    for mode in ("add", "drain"):
        out = subprocess.run(
            [sys.executable, "-m", "bench.dbqueue_count", "5", mode],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
