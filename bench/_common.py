"""What every benchmark shares: interleaved rounds, medians, the machine, the table.

Absolute figures on a shared 2-core machine swing by a third from one minute
to the next, so every benchmark measures tq and its baseline in the same
run, alternating (round 1: tq, baseline; round 2: tq, baseline; ...), and
reports the median of the rounds and the ratio of the medians.

Each script prints a Markdown table (`Table.print`) whose rows the suite
runner (`python -m bench`) collects into one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TABLE_MARK = "<!-- bench-table -->"


def args(doc: str | None, **extra: Any) -> argparse.ArgumentParser:
    """The common command line: --tiny (the smoke test's mode) and --rounds."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a few iterations only (smoke test)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    return ap


def interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Runs each variant once per round, alternating; returns every round's figure."""
    out: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        # Alternate the order too, so neither side always runs on a warmer cache.
        names = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in names:
            out[name].append(variants[name]())
    return out


async def interleaved_async(
    variants: dict[str, Callable[[], Awaitable[float]]], rounds: int
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        names = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in names:
            out[name].append(await variants[name]())
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def rate(
    fn: Callable[[int], None],
    n: int,
    warmup: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Calls fn(i) n times (after `warmup` untimed calls); returns calls per second.

    `clock=time.process_time` counts this process's CPU seconds instead of
    wall time: for work that stays in the process, a figure that other
    processes on a busy machine disturb far less.
    """
    for i in range(warmup):
        fn(i)
    t0 = clock()
    for i in range(n):
        fn(i)
    return n / (clock() - t0)


def race(
    fns: dict[str, Callable[[int], None]],
    n: int,
    *,
    chunk: int = 25,
    warmup: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    around: dict[str, Callable[[], contextlib.AbstractContextManager[Any]]] | None = None,
    settle: dict[str, Callable[[], None]] | None = None,
) -> dict[str, float]:
    """Calls per second of each fn(i), n calls each, alternating every `chunk` calls.

    Fine-grained alternation puts every variant through the same swings of a
    shared machine's load (they last seconds; a chunk lasts milliseconds).
    `around[name]()` is entered (untimed) around each chunk of that variant;
    `settle[name]()` runs at the end of each of its chunks, timed (work the
    variant left running in the background, paid for in its own chunk).
    """
    around = around or {}
    settle = settle or {}
    for name, f in fns.items():
        with around.get(name, contextlib.nullcontext)():
            for i in range(warmup):
                f(i)
    spent = dict.fromkeys(fns, 0.0)
    names = list(fns)
    done = 0
    while done < n:
        k = min(chunk, n - done)
        names.reverse()  # neither side always goes first
        for name in names:
            f = fns[name]
            then = settle.get(name)
            with around.get(name, contextlib.nullcontext)():
                t0 = clock()
                for i in range(done, done + k):
                    f(i)
                if then is not None:
                    then()
                spent[name] += clock() - t0
        done += k
    return {name: n / t for name, t in spent.items()}


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "?"
    return f"{one:.1f}/{five:.1f}"


def reference_loop_ms() -> float:
    """CPU milliseconds of a fixed pure-Python loop (best of 3): this core's speed now.

    Lets absolute figures from different runs (and machines) be compared: on
    a busy machine it grows with the contention for the cores' caches.
    """
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        x = 0
        for i in range(1_000_000):
            x += i
        best = min(best, time.process_time() - t0)
    return best * 1000


def machine() -> str:
    """One line about the machine the figures come from."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB"
    return (
        f"{os.cpu_count()} cores ({cpu}){mem}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}, load average {load_average()}, "
        f"reference loop {reference_loop_ms():.0f} ms CPU"
    )


@dataclasses.dataclass
class Row:
    """One line of the results: tq's figure against the baseline's."""

    case: str
    tq: float
    baseline: float | None = None
    unit: str = "/s"
    goal: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline:
            return None
        return self.tq / self.baseline


def fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if x >= 100:
        s = f"{x:,.0f}"
    elif x >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.2f}"
    return s + unit


@dataclasses.dataclass
class Table:
    """The rows one benchmark script prints (Markdown)."""

    title: str
    rows: list[Row] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def ratio_row(
        self,
        case: str,
        tq_rounds: list[float],
        base_rounds: list[float] | None,
        *,
        goal: float | None = None,
        unit: str = "/s",
        note: str = "",
    ) -> Row:
        """A row of medians; `goal` is the least ratio tq / baseline that meets it."""
        tq_m = median(tq_rounds)
        base_m = median(base_rounds) if base_rounds is not None else None
        row = Row(case, tq_m, base_m, unit=unit, note=note)
        if goal is not None and row.ratio is not None:
            row.goal = f">= {goal:g}x"
            row.met = row.ratio >= goal
        return self.add(row)

    def print(self) -> None:
        print()
        print(TABLE_MARK)
        print(f"### {self.title}")
        print()
        print("| case | tq | baseline | ratio | goal | met |")
        print("| --- | ---: | ---: | ---: | --- | --- |")
        for r in self.rows:
            met = "" if r.met is None else ("yes" if r.met else "**no**")
            ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
            case = r.case + (f" ({r.note})" if r.note else "")
            print(
                f"| {case} | {fmt(r.tq, r.unit)} | {fmt(r.baseline, r.unit)} | {ratio} "
                f"| {r.goal} | {met} |"
            )
        for n in self.notes:
            print(f"\n{n}")
        print(f"\nMachine: {machine()}.")
        sys.stdout.flush()


@contextlib.contextmanager
def happy_path(on: bool) -> Iterator[None]:
    """With on=False, stores skip the post-commit happy path (reminders stay).

    Replaces `tq._outbox.after_commit(_async)` wherever a tq module holds it,
    so that only the work inside the transaction is timed.
    """
    if on:
        yield
        return
    from tq import _outbox

    def skip(store: Any, pending: Any) -> None:
        pass

    async def skip_async(store: Any, pending: Any) -> None:
        pass

    fakes = {"after_commit": skip, "after_commit_async": skip_async}
    reals = {attr: getattr(_outbox, attr) for attr in fakes}
    undo: list[tuple[Any, str, Any]] = []
    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == "tq" or name.startswith("tq.")):
            continue
        for attr, fake in fakes.items():
            real = reals[attr]
            if getattr(mod, attr, None) is real:
                undo.append((mod, attr, real))
                setattr(mod, attr, fake)
    try:
        yield
    finally:
        for mod, attr, real in undo:
            setattr(mod, attr, real)


class Background:
    """A `tq.BackgroundSubmits` that takes the happy paths only inside `on()` blocks.

    So that one variant of a race runs its happy path in the background
    while the others run theirs inline (or not at all), on the same threads
    for the whole race. `settle()` waits for everything queued so far
    (submitted, and the reminders deleted).
    """

    def __init__(self) -> None:
        import tq
        from tq import _outbox

        self._outbox = _outbox
        self.submits = tq.BackgroundSubmits().start()
        self._offer = _outbox.offload
        _outbox.offload = None

    @contextlib.contextmanager
    def on(self) -> Iterator[None]:
        self._outbox.offload = self._offer
        try:
            yield
        finally:
            self._outbox.offload = None

    def settle(self) -> None:
        if not self.submits.drain(60):
            raise RuntimeError("background submits did not settle within 60 s")

    def close(self) -> None:
        self.submits.stop()


def reminder_payload(disp: Any, task: Any) -> bytes:
    """The reminder payload `disp.add_task(task)` writes in a transaction."""
    from tq.txn._store import ambient

    saved: list[Any] = []

    class Capture:
        name = "bench-capture"
        max_payload_size = 1 << 20
        store = property(lambda self: self)
        deadline = None

        def save_reminder(self, pending: Any) -> None:
            saved.append(pending)

    with ambient(Capture()):
        disp.add_task(task)
    return bytes(saved[0].reminder.payload)


class NullSubmitter:
    """A submitter that creates nothing, instantly (isolates tq from Cloud Tasks)."""

    def __init__(self) -> None:
        self.count = 0

    def submit(self, submission: Any) -> None:
        self.count += 1

    async def submit_async(self, submission: Any) -> None:
        self.count += 1


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A SQLAlchemy URL of PostgreSQL: $TQ_BENCH_PG_URL, or a throwaway local cluster.

    The cluster is the tests' (fsync off, loopback, temporary directory).
    """
    url = os.environ.get("TQ_BENCH_PG_URL")
    if url:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)
        return
    from tests._services.postgres import throwaway_cluster

    with throwaway_cluster() as u:
        yield u


def fresh_database(admin_url: str, name: str) -> str:
    """Creates (drops first) database `name` on the server; returns its URL."""
    import psycopg

    libpq = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rpartition("/")[0] + "/" + name


def run_async(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def instructions(*args: str) -> int:
    """Instructions (cachegrind's I refs) of `python -m <args>`, every thread's."""
    cmd = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        sys.executable, "-m", *args,
    ]  # fmt: skip
    # One hash seed for every count: dict layouts (and so the instructions
    # spent on them) vary with it from process to process.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    m = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if m is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(m.group(1).replace(",", ""))
