"""11. Instrumented SQLAlchemy: ordinary transactions that add_task writes into.

Per stack (SQLAlchemy Core and ORM on SQLite and PostgreSQL), the same
transaction (one business row) one after another, happy path off (only the
work inside the transaction, as in bench/outbox.py):

  plain              the transaction alone, on an engine and sessionmaker
                     tq was not told about
  baseline           the same plus ONE hand-written INSERT of a
                     reminder-sized row: the least any outbox can do
  helper             tq.txn.sql.transaction(...) and add_task
  instrumented       plain SQLAlchemy (`with engine.begin()`,
                     `with Session.begin()`) on an engine or sessionmaker
                     given to tq.txn.sql.instrument, and add_task
  instrumented, no task
                     the same transaction without add_task: what being
                     instrumented costs the transactions that add nothing

Goal: instrumented >= 0.9x baseline, as for the helpers. 'instrumented, no
task' is read against 'plain'. Every variant runs on one engine, instrumented
only around the chunks of Core's instrumented variants (instrumenting
changes the class of the engine's connections; a second engine would give
SQLite a second connection, and each would invalidate the other's page
cache at every switch of variant).

`--count N --stack S --variant V` runs N SQLite transactions of one variant
and nothing else; `--instructions` runs every variant that way under
valgrind (cachegrind, no cache simulation) with N = 200 and N = 1,200 and
prints the difference per transaction (see docs/benchmarks.md, Profiling).

Usage: python -m bench.ambient [--n 1000] [--rounds 3] [--only sqlite,postgres]
       python -m bench.ambient --instructions
PostgreSQL: $TQ_BENCH_PG_URL, else a throwaway local cluster (fsync off).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

import tq
import tq.txn.sql
from bench import _common as c
from bench.outbox import HAND_INSERT, ORDERS, Order, _Base, dispatcher, sql_engine
from tests.testpb import payloads_pb2 as pb

VARIANTS = ("plain", "baseline", "helper", "instrumented", "instrumented, no task")


Variants = dict[str, Callable[[int], None]]
Around = dict[str, Callable[[], contextlib.AbstractContextManager[Any]]]


def sql_variants(url: str) -> tuple[Variants, Around, Callable[[], None]]:
    """Transactions by "<stack> <variant>" (each takes a sequence number), what to
    enter around each (Core's instrumented ones: the engine instrumented), and a closer.

    One engine serves every variant: with two, SQLite's connections would
    invalidate each other's page cache at every switch of variant.
    """
    engine = sql_engine(url)
    store = tq.txn.sql.SQLStore(engine, name=f"bench-ambient-{engine.dialect.name}")
    store.create_schema()
    _Base.metadata.drop_all(engine)
    _Base.metadata.create_all(engine)

    @contextlib.contextmanager
    def instrumented() -> Iterator[None]:
        tq.txn.sql.instrument(engine, store=store)
        try:
            yield
        finally:
            tq.txn.sql.uninstrument(engine)

    sessions = sessionmaker(engine)
    told = sessionmaker(engine)
    tq.txn.sql.instrument(told, store=store)
    disp = dispatcher()
    task = tq.Task(payload=pb.Greet(name="bench"))
    sqlite = engine.dialect.name == "sqlite"
    new_id = os.urandom
    payload = c.reminder_payload(disp, task)

    def reminder_row() -> dict[str, Any]:
        fu: Any = tq.clock.now()
        if sqlite:  # the schema keeps times as integer microseconds there
            fu = int(fu.timestamp() * 1_000_000)
        return {"id": new_id(16).hex(), "fu": fu, "extra": b"", "payload": payload}

    def core(e: sa.Engine, add: bool = False, hand: bool = False) -> Callable[[int], None]:
        def run(i: int) -> None:
            with e.begin() as conn:
                conn.execute(ORDERS.insert(), {"id": new_id(16).hex(), "n": i})
                if hand:
                    conn.execute(HAND_INSERT, reminder_row())
                if add:
                    disp.add_task(task)

        return run

    def core_helper(i: int) -> None:
        with tq.txn.sql.transaction(engine, store=store) as conn:
            conn.execute(ORDERS.insert(), {"id": new_id(16).hex(), "n": i})
            disp.add_task(task)

    def orm(maker: Any, add: bool = False, hand: bool = False) -> Callable[[int], None]:
        def run(i: int) -> None:
            with maker.begin() as s:
                s.add(Order(id=new_id(16).hex(), n=i))
                if hand:
                    s.execute(HAND_INSERT, reminder_row())
                if add:
                    disp.add_task(task)

        return run

    def orm_helper(i: int) -> None:
        with tq.txn.sql.transaction(sessions, store=store) as s:
            s.add(Order(id=new_id(16).hex(), n=i))
            disp.add_task(task)

    fns = {
        "core plain": core(engine), "core baseline": core(engine, hand=True),
        "core helper": core_helper, "core instrumented": core(engine, add=True),
        "core instrumented, no task": core(engine),
        "orm plain": orm(sessions), "orm baseline": orm(sessions, hand=True),
        "orm helper": orm_helper, "orm instrumented": orm(told, add=True),
        "orm instrumented, no task": orm(told),
    }  # fmt: skip

    def close() -> None:
        store.close()
        engine.dispose()

    around: Around = {"core instrumented": instrumented, "core instrumented, no task": instrumented}
    return fns, around, close


def clean(url: str) -> None:
    """Empties the tables (alike sizes in every round)."""
    e = sa.create_engine(url)
    try:
        with e.begin() as conn:
            conn.execute(sa.text("DELETE FROM tq_reminders"))
            conn.execute(sa.text("DELETE FROM bench_orders"))
    finally:
        e.dispose()


def measure_sql(label: str, url: str, n: int, rounds: int, table: c.Table) -> None:
    fns, around, close = sql_variants(url)
    res: dict[str, list[float]] = {k: [] for k in fns}
    try:
        with c.happy_path(False):
            for _ in range(rounds):
                for k, v in c.race(fns, n, warmup=min(100, n), around=around).items():
                    res[k].append(v)
                clean(url)
    finally:
        close()
    for stack in ("core", "orm"):
        r = {v: res[f"{stack} {v}"] for v in VARIANTS}
        table.ratio_row(f"{label}, {stack}: instrumented", r["instrumented"], r["baseline"],
                        goal=0.9)  # fmt: skip
        table.ratio_row(f"{label}, {stack}: helper (same run)", r["helper"], r["baseline"],
                        goal=0.9)  # fmt: skip
        table.ratio_row(f"{label}, {stack}: instrumented vs helper", r["instrumented"],
                        r["helper"], note="baseline column: helper")  # fmt: skip
        table.ratio_row(f"{label}, {stack}: instrumented, no task vs plain",
                        r["instrumented, no task"], r["plain"],
                        note="baseline column: plain")  # fmt: skip


def _count(stack: str, variant: str, n: int) -> None:
    """Runs n SQLite transactions of one variant, untimed (for instruction counts)."""
    with tempfile.TemporaryDirectory() as d:
        fns, around, close = sql_variants(f"sqlite:///{d}/bench.db")
        try:
            name = f"{stack} {variant}"
            fn = fns[name]
            with c.happy_path(False), around.get(name, contextlib.nullcontext)():
                for i in range(20):  # warm: caches, compiled statements
                    fn(i)
                for i in range(n):
                    fn(i)
        finally:
            close()


def _instructions(stack: str, variant: str, n: int) -> int:
    return c.instructions(
        "bench.ambient", "--count", str(n), "--stack", stack, "--variant", variant
    )


def count_instructions(table: c.Table, low: int = 200, high: int = 1200) -> None:
    """Instructions per SQLite transaction of every variant, as rows of `table`."""
    per: dict[str, float] = {}
    for stack in ("core", "orm"):
        for v in VARIANTS:
            a, b = _instructions(stack, v, low), _instructions(stack, v, high)
            per[f"{stack} {v}"] = (b - a) / (high - low)
    for stack in ("core", "orm"):
        for v, against in (("instrumented", "baseline"), ("helper", "baseline"),
                           ("instrumented", "helper"), ("instrumented, no task", "plain"),
                           ("baseline", "plain")):  # fmt: skip
            table.add(c.Row(f"SQLite, {stack}: {v} vs {against}, instructions per transaction",
                            per[f"{stack} {v}"], per[f"{stack} {against}"], unit=""))  # fmt: skip
    table.notes.append(
        f"Instructions: valgrind --tool=cachegrind --cache-sim=no, (I refs at N = {high} "
        f"- I refs at N = {low}) / {high - low}, one process per count (PYTHONHASHSEED=0), "
        "happy path off. "
        "Here the ratio is tq's count over the baseline's: lower is better (1.11x is what "
        "0.9x of the baseline's speed allows)."
    )


def main() -> None:
    ap = c.args(__doc__)
    ap.add_argument("--n", type=int, default=1000, help="transactions per variant and round")
    ap.add_argument("--only", default="sqlite,postgres")
    ap.add_argument("--count", type=int, default=0, help="N transactions of one SQLite variant")
    ap.add_argument("--stack", default="orm", choices=["orm", "core"])
    ap.add_argument("--variant", default="instrumented", choices=VARIANTS)
    ap.add_argument("--instructions", action="store_true", help="count instructions (valgrind)")
    a = ap.parse_args()
    if a.count:
        _count(a.stack, a.variant, a.count)
        return
    table = c.Table("11. Instrumented SQLAlchemy transactions vs the helper and a hand INSERT")
    started = time.perf_counter()
    if a.instructions:
        if shutil.which("valgrind") is None:
            raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
        count_instructions(table)
        table.notes.append(f"Took {time.perf_counter() - started:.0f} s.")
        table.print()
        return
    n, rounds = (20, 1) if a.tiny else (a.n, a.rounds)
    only = set(a.only.split(","))
    table.notes.append(
        "Transactions per second, one after another on one connection, happy path off. "
        "'instrumented': `with engine.begin()` / `with Session.begin()` on an instrumented "
        "engine / sessionmaker, and add_task; 'helper': tq.txn.sql.transaction and add_task; "
        "baseline: the same transaction plus one hand-written reminder-sized INSERT, tq not "
        "told. 'no task': an instrumented transaction that adds no task, against the same "
        "transaction tq was not told about."
    )
    if "sqlite" in only:
        with tempfile.TemporaryDirectory() as d:
            measure_sql("SQLite (WAL)", f"sqlite:///{d}/bench.db", n, rounds, table)
    if "postgres" in only:
        with c.postgres() as url:
            measure_sql("PostgreSQL", c.fresh_database(url, "tq_bench_ambient"), n, rounds, table)
    table.notes.append(f"Took {time.perf_counter() - started:.0f} s.")
    table.print()


if __name__ == "__main__":
    main()
