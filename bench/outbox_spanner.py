"""Read-write transactions per second on the Cloud Spanner emulator, with and
without a transactional add_task (the reminder insert plus the happy path:
submit to a no-op submitter, then delete the reminder).

Run: .venv/bin/python bench/outbox_spanner.py [seconds per round]
Figures on the emulator say little about production Spanner; the ratio of
the variants, measured in the same run, is what this is for.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.cloud.spanner_v1 import KeySet

import tq
from tests._services.spanner import find_emulator, running_emulator, start
from tests.testpb import payloads_pb2 as pb
from tq.txn.spanner import SpannerStore


class NullSubmitter:
    def submit(self, submission: tq.Submission) -> None:
        pass

    async def submit_async(self, submission: tq.Submission) -> None:
        pass


def rate(fn: Callable[[], None], seconds: float) -> float:
    n = 0
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < end:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    binary = find_emulator()
    if binary is None:
        sys.exit("Cloud Spanner emulator not found")
    log = Path(tempfile.mkdtemp()) / "emulator.log"
    with running_emulator(binary, log) as host:
        emu = start(host)
        db = emu.create_database(["CREATE TABLE Orders (ID STRING(MAX) NOT NULL) PRIMARY KEY (ID)"])
        store = SpannerStore(db)
        disp = tq.Dispatcher(
            cloud_project="p", cloud_region="r", default_target_host="app.example.com",
            submitter=NullSubmitter(),
        )  # fmt: skip
        disp.register_task_class(
            tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="q")
        )
        ids = itertools.count()

        def plain(t: Any) -> None:
            t.insert("Orders", ["ID"], [[f"o{next(ids)}"]])

        def with_task(t: Any) -> None:
            plain(t)
            disp.add_task(tq.Task(payload=pb.Greet(name="ann")))

        def two_inserts(t: Any) -> None:
            plain(t)
            t.insert("Orders", ["ID"], [[f"o{next(ids)}"]])

        def batch_delete() -> None:
            with db.batch() as b:
                b.delete("Orders", KeySet(keys=[["nope"]]))

        variants = {
            "txn: 1 insert": lambda: db.run_in_transaction(plain),
            "txn: 2 inserts (as with a reminder)": lambda: db.run_in_transaction(two_inserts),
            "batch: 1 delete (the happy path's)": batch_delete,
            "txn: 1 insert + add_task, happy path": lambda: store.run_in_transaction(with_task),
        }
        for f in variants.values():  # warm up
            for _ in range(20):
                f()
        results: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(3):  # interleaved rounds
            for name, f in variants.items():
                results[name].append(rate(f, seconds))
        for name, rs in results.items():
            print(f"{name:40s} {max(rs):7.0f}/s  (rounds: {', '.join(f'{r:.0f}' for r in rs)})")
        print("reminders left:", store.count_reminders())
        db.close()


if __name__ == "__main__":
    main()
