"""8. What a done marker costs: a handler's transaction with and without `once`.

Per stack (SQLAlchemy ORM Session and Core on SQLite and PostgreSQL; Spanner
on the emulator), the same handler transaction one after another:

  handler       tq's transaction helper and the handler's work: one
                business row (what a handler without `once` does)
  once(handler) the same handler decorated with `tq.txn.sql.once` (or
                `tq.txn.spanner.once`), called as a push calls it: the
                marker key from the task's ExecutionInfo, the marker
                written first in the transaction (SQL: INSERT ... ON
                CONFLICT DO NOTHING; Spanner: a read of the key and an
                insert mutation), then the handler
  by hand       (SQL) the handler with a marker written by hand: the same
                INSERT as a `text()` statement on the session or connection,
                its key from the task's queue and name: the least a marker
                costs through SQLAlchemy

The ratio once / handler is the marker's toll on the transaction rate;
the notes give it per transaction in microseconds. Every delivery is a
new task (a new key): the marker is always written, never found. The
marker table starts with `--prefill` markers (default 100,000), as a
busy service's would hold.

`--count N --stack S --variant V` runs N transactions of one variant and
nothing else (for `valgrind --tool=cachegrind`, see docs/benchmarks.md).

Usage: python -m bench.once [--n 1000] [--rounds 3] [--only sqlite,postgres,spanner]
PostgreSQL: $TQ_BENCH_PG_URL, else a throwaway local cluster (fsync off).
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

import tq
import tq.txn.sql
from bench import _common as c
from bench.outbox import ORDERS, Order, _Base, sql_engine
from tq._execution import ExecutionInfo, enter, leave

GREET: Any = None  # the payload (any object: the handler ignores it)
_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _info(i: int) -> ExecutionInfo:
    """The ExecutionInfo of delivery `i`: a new task each time, as tq names them."""
    return ExecutionInfo(
        task_class="bench", queue="bench", task_id=os.urandom(16).hex(),
        expected_eta=_EPOCH + dt.timedelta(microseconds=i),
    )  # fmt: skip


def _as_push(fn: Callable[[Any], None]) -> Callable[[int], None]:
    """fn(payload) called the way the push path calls a handler, with its ExecutionInfo."""

    def call(i: int) -> None:
        token = enter(_info(i))
        try:
            fn(GREET)
        finally:
            leave(token)

    return call


def _prefill_sql(engine: sa.Engine, n: int) -> None:
    if n <= 0:
        return
    far = tq.clock.now() + dt.timedelta(days=35)
    rows = [{"id": f"bench/{os.urandom(16).hex()}/0.000000", "expires_at": far} for _ in range(n)]
    with engine.begin() as conn:
        for i in range(0, n, 10_000):
            conn.execute(tq.txn.sql._schema.done.insert(), rows[i : i + 10_000])


def sql_variants(engine: sa.Engine, prefill: int) -> dict[str, Callable[[int], None]]:
    store = tq.txn.sql.SQLStore(engine, name=f"bench-once-{engine.dialect.name}")
    store.create_schema()
    _Base.metadata.drop_all(engine)
    _Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM tq_done"))
    _prefill_sql(engine, prefill)
    sessions = sessionmaker(engine)
    new_id = os.urandom

    def orm_work(payload: Any, s: Any) -> None:
        s.add(Order(id=new_id(16).hex(), n=1))

    def core_work(payload: Any, conn: Any) -> None:
        conn.execute(ORDERS.insert(), {"id": new_id(16).hex(), "n": 1})

    sqlite = engine.dialect.name == "sqlite"
    by_hand = sa.text(
        "INSERT INTO tq_done (id, expires_at) VALUES (:id, :e) ON CONFLICT (id) DO NOTHING"
    )
    retention = dt.timedelta(days=35)

    def hand_marker(s: Any) -> bool:
        info = tq.execution_info()
        e: Any = tq.clock.now() + retention
        if sqlite:  # integer microseconds there
            e = int(e.timestamp() * 1_000_000)
        return bool(s.execute(by_hand, {"id": f"{info.queue}/{info.task_id}", "e": e}).rowcount)

    def orm_by_hand(payload: Any) -> None:
        with tq.txn.sql.transaction(sessions, store=store) as s:
            if hand_marker(s):
                orm_work(payload, s)

    def core_by_hand(payload: Any) -> None:
        with tq.txn.sql.transaction(engine, store=store) as conn:
            if hand_marker(conn):
                core_work(payload, conn)

    def orm_handler(payload: Any) -> None:
        with tq.txn.sql.transaction(sessions, store=store) as s:
            orm_work(payload, s)

    def core_handler(payload: Any) -> None:
        with tq.txn.sql.transaction(engine, store=store) as conn:
            core_work(payload, conn)

    return {
        "orm handler": _as_push(orm_handler),
        "orm once(handler)": _as_push(tq.txn.sql.once(sessions, store=store)(orm_work)),
        "orm by hand": _as_push(orm_by_hand),
        "core handler": _as_push(core_handler),
        "core once(handler)": _as_push(tq.txn.sql.once(engine, store=store)(core_work)),
        "core by hand": _as_push(core_by_hand),
    }


def measure_sql(label: str, engine: sa.Engine, n: int, rounds: int, prefill: int,
                table: c.Table) -> None:  # fmt: skip
    fns = sql_variants(engine, prefill)
    res: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, v in c.race(fns, n, warmup=min(100, n)).items():
            res[k].append(v)
    for stack in ("orm", "core"):
        plain, once = res[f"{stack} handler"], res[f"{stack} once(handler)"]
        table.ratio_row(f"{label}, {stack}: once(handler) vs handler", once, plain)
        table.ratio_row(
            f"{label}, {stack}: once(handler) vs a marker by hand", once, res[f"{stack} by hand"]
        )
        table.notes.append(_per_txn(f"{label}, {stack}", once, plain))


def _per_txn(label: str, once: list[float], plain: list[float]) -> str:
    extra_us = (1 / c.median(once) - 1 / c.median(plain)) * 1e6
    return f"{label}: the marker adds {extra_us:,.0f} us per transaction (medians)."


def measure_spanner(n: int, rounds: int, table: c.Table) -> None:
    from tests._services.spanner import find_emulator, running_emulator, start

    binary = find_emulator()
    if binary is None:
        table.notes.append("Spanner: skipped (no Cloud Spanner emulator on this machine).")
        return
    import tq.txn.spanner
    from tq.txn.spanner import SpannerStore

    with tempfile.TemporaryDirectory() as d, running_emulator(binary, Path(d, "emu.log")) as host:
        emu = start(host)
        db = emu.create_database(["CREATE TABLE Orders (ID STRING(MAX) NOT NULL) PRIMARY KEY (ID)"])
        try:
            SpannerStore(db, name="bench-once-spanner")

            def work(payload: Any, t: Any) -> None:
                t.insert("Orders", ["ID"], [[os.urandom(16).hex()]])

            def handler(payload: Any) -> None:
                tq.txn.spanner.run_in_transaction(db, lambda t: work(payload, t))

            fns = {
                "handler": _as_push(handler),
                "once(handler)": _as_push(tq.txn.spanner.once(db)(work)),
            }
            res: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(rounds):
                for k, v in c.race(fns, n, chunk=10, warmup=min(20, n)).items():
                    res[k].append(v)
            table.ratio_row(
                "Spanner emulator: once(handler) vs handler", res["once(handler)"], res["handler"]
            )
            table.notes.append(_per_txn("Spanner emulator", res["once(handler)"], res["handler"]))
        finally:
            db.close()


def _count(stack: str, variant: str, n: int, prefill: int) -> None:
    """Runs n transactions of one variant, untimed (for instruction counts)."""
    with tempfile.TemporaryDirectory() as d:
        engine = sql_engine(f"sqlite:///{d}/bench.db")
        try:
            fn = sql_variants(engine, prefill)[f"{stack} {variant}"]
            for i in range(n):
                fn(i)
        finally:
            engine.dispose()


def main() -> None:
    ap = c.args(__doc__)
    ap.add_argument("--n", type=int, default=1000, help="SQL transactions per variant and round")
    ap.add_argument("--spanner-n", type=int, default=300)
    ap.add_argument("--prefill", type=int, default=100_000, help="markers in the table at start")
    ap.add_argument("--only", default="sqlite,postgres,spanner")
    ap.add_argument("--count", type=int, default=0, help="N transactions of one SQLite variant")
    ap.add_argument("--stack", default="orm", choices=["orm", "core"])
    ap.add_argument(
        "--variant", default="once(handler)", choices=["handler", "once(handler)", "by hand"]
    )
    a = ap.parse_args()
    if a.count:
        _count(a.stack, a.variant, a.count, a.prefill)
        return
    n, sn, rounds, prefill = (20, 5, 1, 100) if a.tiny else (a.n, a.spanner_n, a.rounds, a.prefill)
    only = set(a.only.split(","))
    table = c.Table("8. A handler's transaction with and without its done marker (once)")
    table.notes.append(
        "Transactions per second, one after another on one connection; each a new task, so "
        f"the marker is always written. 'handler': tq's transaction helper and one business "
        f"row; 'once(handler)': the same through tq.txn.sql.once / tq.txn.spanner.once, "
        f"called with the task's ExecutionInfo as a push calls it. The marker table starts "
        f"with {prefill:,} markers. Baseline column: 'handler', or the handler with a marker "
        f"written by hand (a text() INSERT)."
    )
    started = time.perf_counter()
    if "sqlite" in only:
        with tempfile.TemporaryDirectory() as d:
            engine = sql_engine(f"sqlite:///{d}/bench.db")
            try:
                measure_sql("SQLite (WAL)", engine, n, rounds, prefill, table)
            finally:
                engine.dispose()
    if "postgres" in only:
        with c.postgres() as url:
            engine = sql_engine(c.fresh_database(url, "tq_bench_once"))
            try:
                measure_sql("PostgreSQL", engine, n, rounds, prefill, table)
            finally:
                engine.dispose()
    if "spanner" in only:
        measure_spanner(sn, rounds, table)
    table.notes.append(f"Took {time.perf_counter() - started:.0f} s.")
    table.print()


if __name__ == "__main__":
    main()
