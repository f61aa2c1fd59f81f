"""10. Publish after commit: a topic class on the Pub/Sub emulator next to Cloud Tasks.

What is compared: the same transaction (one business row and one
TRANSACTIONAL add_task, SQLite outbox in WAL mode) with the happy path on,
so every call includes the commit, the post-commit submit and the DELETE of
the reminder:

  Pub/Sub     the task's class names a topic: published through
              tq.pubsub.Publisher (google-cloud-pubsub, batching on) to the
              Pub/Sub emulator (one pull subscription holds the messages).
  Cloud Tasks the same with a class on a queue: created through
              tq.CloudTasksSubmitter in the Cloud Tasks emulator (the queue
              paused, so the emulator pushes nothing during the run).

Both serially (one transaction after another) and from 8 threads at once,
where the publisher's batching gathers messages of different transactions
into one Publish call; and serially with the client's own default batch
latency (10 ms, against tq's 1 ms), which each happy path waits out. Both
emulators run on this machine, so the figures show tq's path and the
clients' costs, not Google's services.

Usage: python -m bench.pubsub [--n 1000] [--rounds 3] [--threads 8]
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import tq
import tq.pubsub
import tq.txn.sql
from bench import _common as c
from tests.testpb import payloads_pb2 as pb

INSERT_ORDER = sa.text("INSERT INTO bench_orders VALUES (:id)")


class _Skip(Exception):
    pass


@contextlib.contextmanager
def emulators(d: str) -> Iterator[tuple[Any, Any]]:
    """(Pub/Sub emulator, Cloud Tasks emulator), started for the run and stopped after."""
    from _pytest.outcomes import Skipped

    from tests._services import cloudtasks, pubsub

    with contextlib.ExitStack() as stack:
        try:
            ps = stack.enter_context(pubsub.run_emulator(Path(d, "pubsub.log")))
            ct = stack.enter_context(cloudtasks.run_emulator(Path(d, "cloudtasks.log")))
        except Skipped as e:
            raise _Skip(str(e)) from None
        yield ps, ct


def engine_at(d: str) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{d}/bench.db", connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _wal(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE bench_orders (id TEXT PRIMARY KEY)"))
    return engine


def threaded_rate(fn: Callable[[int], None], n: int, threads: int) -> float:
    """Calls per second of fn(i), n calls spread over `threads` threads."""
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, range(min(threads * 4, n))))  # warm up every thread's connection
        t0 = time.perf_counter()
        list(pool.map(fn, range(n)))
        return n / (time.perf_counter() - t0)


def measure(d: str, n: int, rounds: int, threads: int, table: c.Table) -> None:
    with emulators(d) as (ps, ct):
        topic = ps.create_topic("bench")
        ps.create_subscription(topic, "bench")
        queue = ct.create_queue("bench")
        ct.retire_queue(queue)  # paused: nothing is pushed while the run creates tasks
        publisher = tq.pubsub.Publisher(endpoint=ps.endpoint)
        slow = tq.pubsub.Publisher(endpoint=ps.endpoint, max_latency_s=0.01)
        tasks = tq.CloudTasksSubmitter(endpoint=ct.endpoint)
        disp = tq.Dispatcher(
            cloud_project=ps.project, default_target_host="127.0.0.1:9", target_scheme="http",
            submitter=tq.Router(queues=tasks, topics=publisher),
        )  # fmt: skip
        disp.register_task_class(
            tq.TaskClass(id="to-topic", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, topic=topic)
        )
        disp.register_task_class(
            tq.TaskClass(id="to-queue", prototype=pb.Count, kind=tq.Kind.TRANSACTIONAL, queue=queue)
        )
        engine = engine_at(d)
        store = tq.txn.sql.SQLStore(engine, name="bench-pubsub")
        store.create_schema()
        greet, count = tq.Task(payload=pb.Greet(name="bench")), tq.Task(payload=pb.Count(n=1))

        def txn(task: tq.Task, submitter: Any = None) -> Callable[[int], None]:
            def one(i: int) -> None:
                with tq.txn.sql.transaction(engine, store=store) as conn:
                    conn.execute(
                        sa.text("INSERT INTO bench_orders VALUES (:id)"),
                        {"id": os.urandom(16).hex()},
                    )
                    disp.add_task(task)

            if submitter is None:
                return one

            def with_submitter(i: int) -> None:
                with tq.use_submitter(submitter):
                    one(i)

            return with_submitter

        try:
            serial: dict[str, list[float]] = {"pubsub": [], "cloudtasks": [], "10ms": []}
            parallel: dict[str, list[float]] = {"pubsub": [], "cloudtasks": []}
            slow_router = tq.Router(queues=tasks, topics=slow)
            for _ in range(rounds):
                got = c.race(
                    {"pubsub": txn(greet), "cloudtasks": txn(count),
                     "10ms": txn(greet, slow_router)},
                    n, warmup=20,
                )  # fmt: skip
                for k, v in got.items():
                    serial[k].append(v)
                for k, task in (("cloudtasks", count), ("pubsub", greet)):
                    parallel[k].append(threaded_rate(txn(task), n, threads))
            left = store.count_reminders()
            table.ratio_row(
                "SQLite txn + add_task, published after commit vs created in Cloud Tasks, serial",
                serial["pubsub"], serial["cloudtasks"],
            )  # fmt: skip
            table.ratio_row(
                f"the same from {threads} threads",
                parallel["pubsub"], parallel["cloudtasks"],
            )  # fmt: skip
            table.ratio_row(
                "serial, with the client's default 10 ms batch latency",
                serial["10ms"], serial["cloudtasks"],
            )  # fmt: skip
            table.notes.append(
                f"Reminders left after the run (pending, parked): {left}; every one was "
                "submitted and deleted by the happy path."
            )
        finally:
            publisher.close()
            slow.close()
            tasks.close()
            store.close()
            engine.dispose()


def main() -> None:
    ap = c.args(__doc__)
    ap.add_argument("--n", type=int, default=1000, help="transactions per variant and round")
    ap.add_argument("--threads", type=int, default=8)
    a = ap.parse_args()
    n, rounds = (20, 1) if a.tiny else (a.n, a.rounds)
    table = c.Table("10. Publish after commit: Pub/Sub emulator vs Cloud Tasks emulator")
    table.notes.append(
        "Transactions per second with the happy path on (commit, submit, DELETE of the "
        "reminder); tq = the topic class through tq.pubsub.Publisher, baseline = a queue "
        "class through tq.CloudTasksSubmitter, each on its emulator on this machine."
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        try:
            measure(d, n, rounds, a.threads, table)
        except _Skip as e:
            table.notes.append(f"Skipped: {e}")
            table.ratio_row("skipped (no emulator)", [float("nan")], None)
    table.notes.append(f"Took {time.perf_counter() - started:.0f} s.")
    table.print()


if __name__ == "__main__":
    main()
