"""A process whose background submits are full when it is killed (SIGKILL).

Usage: python -m tests.chaos.background_child FACTORY ARG LOG N

Opens a conformance harness with FACTORY(ARG) (see
tests/conformance/harness.py), starts `tq.BackgroundSubmits` (a queue of
8 tasks, 2 threads, a full queue left to the sweeper, DELETEs in batches
of 5 that otherwise wait an hour), and commits N transactions one after
another: a business row `bg-<i>` and a TRANSACTIONAL Greet task named the
same. Its Cloud Tasks takes the first 12 tasks (each name written to LOG
once created), then hangs on every submit. Until both threads hang, each
commit waits for the threads to take what is queued (so that none is left
to the sweeper before they hang); the commits after that fill the queue
and overflow it. Once all N have committed (the queue then stays as it
is) it prints `full <stats>` and waits to be killed.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time

import tq
from tests import _sweeping as sw
from tests.conformance.harness import RowWriter, StoreHarness
from tests.testpb import payloads_pb2 as pb

TAKEN = 12
MAX_QUEUED = 8


class Hanging:
    """Creates the first TAKEN tasks (noting their names in LOG), then never answers."""

    def __init__(self, log_path: str) -> None:
        self._log = open(log_path, "a", buffering=1)  # noqa: SIM115 (lives as long as the process)
        self._lock = threading.Lock()
        self._taken = 0
        self.hung = 0

    def submit(self, sub: tq.Submission) -> None:
        with self._lock:
            self._taken += 1
            hang = self._taken > TAKEN
            self.hung += hang
        if hang:
            threading.Event().wait()
        assert isinstance(sub.payload, pb.Greet)
        self._log.write(sub.payload.name + "\n")

    async def submit_async(self, sub: tq.Submission) -> None:
        self.submit(sub)


def main() -> None:
    factory, arg, log_path, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    module, _, function = factory.partition(":")
    harness: StoreHarness = getattr(importlib.import_module(module), function)(arg)
    hanging = Hanging(log_path)
    disp = sw.dispatcher(submitter=hanging)
    bg = tq.BackgroundSubmits(
        max_queued=MAX_QUEUED, concurrency=2, when_full="sweeper",
        delete_batch=5, delete_delay_s=3600,
    ).start()  # fmt: skip
    deadline = time.monotonic() + 60
    for i in range(n):
        name = f"bg-{i}"

        def body(rows: RowWriter, name: str = name) -> None:
            rows.insert_row(name)
            disp.add_task(tq.Task(payload=pb.Greet(name=name)))

        harness.run_in_transaction(body)
        # Until both threads hang, they take what waits (a thread lingers a
        # few ms before it takes): the queue is full only after that.
        while hanging.hung < 2 and bg.stats.queued and time.monotonic() < deadline:
            time.sleep(0.001)
    # Stable once both threads hang: nothing leaves the queue after that.
    while (bg.stats.queued < 1 or hanging.hung < 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    print("full", bg.stats, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
