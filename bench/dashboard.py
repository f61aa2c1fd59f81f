"""9. The dashboard: time to serve each page with 10,000 tasks in a queue.

Each page is requested through the dashboard's ASGI app in process (httpx's
ASGI transport: the server's whole work, rendering and database reads, with
no socket), signed in by token, on two databases made the same way:

  tq          a database with 10,000 more waiting tasks in the `emails`
              queue (besides tasks in every state, reminders, parked ones)
  baseline    the same database without the 10,000 (a dozen tasks)

so the ratio says what the 10,000 tasks cost each page. Pages: the
overview, the queue's first page, a page 5,000 tasks deep (keyset paging),
the waiting tasks most overdue first, one class only, one task, the
reminders and the parked reminders. Figures are the median wall time of one
request, in milliseconds, on SQLite and on PostgreSQL.

Goal: every page under 250 ms at 10,000 tasks (usable; absolute, so a busy
machine reads high: compare with the baseline of the same run).

Usage: python -m bench.dashboard [--tasks 10000] [--rounds 3] [--sqlite-only]
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

import tq.dashboard
from bench import _common as c
from tests import _dashboard_data as dd
from tq import dbqueue

TOKEN = "bench-operator-token"
GOAL_MS = 250.0
REQUESTS = 10  # per page per round


def pages(engine: sa.Engine, data: dd.Data) -> dict[str, str]:
    """The pages to time: name -> path."""
    admin = dbqueue.Admin(engine)
    cursor = None
    for _ in range(100):  # 100 pages of 50 in: 5,000 tasks deep, if there are that many
        _, nxt = admin.page_tasks(queue=dd.QUEUE, limit=50, cursor=cursor)
        if nxt is None:
            break
        cursor = nxt
    return {
        "overview": "/",
        "queue, first page": "/queues/emails",
        "queue, 5,000 tasks deep": f"/queues/emails?cursor={cursor or ''}",
        "queue, waiting, most overdue first": "/queues/emails?state=pending&order=overdue",
        "queue, one class": "/queues/emails?class=greet&order=newest",
        "task": f"/queues/emails/tasks/{data.names['failed']}",
        "reminders": "/reminders",
        "parked": "/parked",
    }


async def _time(app: Any, paths: dict[str, str], rounds: int) -> dict[str, list[float]]:
    """Median ms per request of each page, per round (pages interleaved)."""
    out: dict[str, list[float]] = {k: [] for k in paths}
    transport = httpx.ASGITransport(app=app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://b", headers=auth) as client:
        for path in paths.values():  # warm up
            (await client.get(path)).raise_for_status()
        for _ in range(rounds):
            for name, path in paths.items():
                times = []
                for _ in range(REQUESTS):
                    t0 = time.perf_counter()
                    r = await client.get(path)
                    times.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()
                out[name].append(c.median(times))
    return out


def measure(make_engine: Callable[[str], sa.Engine], tasks: int, rounds: int) -> dict[str, Any]:
    results = {}
    for label, extra in (("tq", tasks), ("baseline", 0)):
        engine = make_engine(label)
        try:
            data = dd.populate(engine)
            if extra:
                dd.add_waiting(engine, extra)
            app = tq.dashboard.app(data.dispatcher, engine=engine, stores=[data.store],
                                   access=tq.dashboard.Access(operator_tokens=[TOKEN]))  # fmt: skip
            results[label] = asyncio.run(_time(app, pages(engine, data), rounds))
        finally:
            engine.dispose()
    return results


def table(title: str, res: dict[str, Any], tasks: int) -> c.Table:
    t = c.Table(title)
    for page in res["tq"]:
        row = t.ratio_row(page, res["tq"][page], res["baseline"][page], unit=" ms")
        row.goal, row.met = f"< {GOAL_MS:.0f} ms", row.tq < GOAL_MS
    t.notes.append(
        f"Median wall time of one request (ms; lower is better), {REQUESTS} requests per page "
        f"per round, in process through the ASGI app. tq: {tasks:,} more waiting tasks in the "
        f"queue; baseline: the same database without them. Load average {c.load_average()}."
    )
    return t


def main() -> None:
    ap = c.args(__doc__)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--sqlite-only", action="store_true")
    a = ap.parse_args()
    tasks, rounds = (300, 1) if a.tiny else (a.tasks, a.rounds)
    with tempfile.TemporaryDirectory(prefix="tq-bench-dash-") as tmp:
        res = measure(lambda label: dbqueue.sqlite_engine(Path(tmp) / f"{label}.db"), tasks,
                      rounds)  # fmt: skip
    table("9. Dashboard pages at 10,000 tasks: SQLite (ms per page)", res, tasks).print()
    if a.sqlite_only:
        return
    with c.postgres() as admin_url:
        res = measure(lambda label: sa.create_engine(c.fresh_database(admin_url,
                                                                      f"tq_bench_dash_{label}")),
                      tasks, rounds)  # fmt: skip
    table("9. Dashboard pages at 10,000 tasks: PostgreSQL (ms per page)", res, tasks).print()


if __name__ == "__main__":
    main()
