"""A process that commits transactions with tasks, then is killed before submitting.

Usage: python -m tests.chaos.child FACTORY ARG PREFIX THREADS

Opens a conformance harness with FACTORY(ARG) (see
tests/conformance/harness.py), and in THREADS threads commits one
transaction each: a business row `PREFIX-<i>` and a TRANSACTIONAL Greet
task named the same. The happy path's submit waits until every thread has
committed (or 20 s), then the process dies with `os._exit(17)`: the commits
are done, the tasks were never submitted. Exits 3 if it was not killed.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading

import tq
from tests import _sweeping as sw
from tests.conformance.harness import RowWriter, StoreHarness
from tests.testpb import payloads_pb2 as pb

KILLED = 17


class Dying:
    """Kills the process once `parties` threads are submitting (all have committed)."""

    def __init__(self, parties: int) -> None:
        self._barrier = threading.Barrier(parties)

    def submit(self, sub: tq.Submission) -> None:
        try:
            self._barrier.wait(20)
        finally:
            os._exit(KILLED)

    async def submit_async(self, sub: tq.Submission) -> None:
        self.submit(sub)


def main() -> None:
    factory, arg, prefix, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    module, _, function = factory.partition(":")
    harness: StoreHarness = getattr(importlib.import_module(module), function)(arg)
    disp = sw.dispatcher(submitter=Dying(threads))

    def commit(i: int) -> None:
        name = f"{prefix}-{i}"

        def body(rows: RowWriter) -> None:
            rows.insert_row(name)
            disp.add_task(tq.Task(payload=pb.Greet(name=name)))

        harness.run_in_transaction(body)

    workers = [threading.Thread(target=commit, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    sys.exit(3)


if __name__ == "__main__":
    main()
