"""CPU instructions per task on the database queue's hot paths, for cachegrind.

    valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \\
        python -m bench.dbqueue_count N add|drain [--db URL]

runs `add_task` N times into a fresh queue (SQLite in a temporary file, or
the database at URL, which must be empty), and with `drain` one in-process
worker (concurrency 32) then pushes every task into `tq.asgi.app` and
records the outcomes. Run it at N and 2N: the difference of the two counts
over N is the marginal count per task, which this machine's load cannot
move (throughput figures here swing by tens of percent with the load). On
SQLite the count covers the database's work too; on a server, only the
client's. Compare two revisions by running it from each checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.routing import Mount

import tq
import tq.asgi
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue


async def _greet(payload: pb.Greet) -> None:
    pass


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("n", type=int)
    ap.add_argument("mode", choices=["add", "drain"])
    ap.add_argument("--db", help="an empty database's SQLAlchemy URL (default: SQLite)")
    a = ap.parse_args()
    if a.db is None:
        engine = dbqueue.sqlite_engine(os.path.join(tempfile.mkdtemp(), "q.db"))
    elif a.db.startswith(("mysql", "mariadb")):
        engine = dbqueue.mysql_engine(a.db)
    else:
        engine = sa.create_engine(a.db)
    dbqueue.create_schema(engine)
    dbqueue.apply_queues(
        engine, [dbqueue.QueueConfig("bench", rate_per_s=1e9, bucket_size=10**6, max_concurrent=0)]
    )
    disp = tq.Dispatcher(
        cloud_project="bench", cloud_region="local", default_target_host="app.local",
        submitter=dbqueue.DbQueueSubmitter(engine),
    )  # fmt: skip
    disp.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="bench")(
        _greet
    )
    push = tq.asgi.app(disp, auth=tq.asgi.INSECURE_NO_AUTH)
    app = Starlette(routes=[Mount("/internal/tasks", push)])
    for _ in range(a.n):
        disp.add_task(tq.Task(pb.Greet(name="x")))
    if a.mode == "drain":

        async def drain() -> None:
            admin = dbqueue.Admin(engine)
            async with dbqueue.Worker(engine, app=app, concurrency=32) as w:
                while admin.count_tasks(state="pending"):
                    await w.run_once()

        asyncio.run(drain())
        assert dbqueue.Admin(engine).count_tasks(state="done") == a.n
    engine.dispose()


if __name__ == "__main__":
    main()
