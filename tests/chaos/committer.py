"""A process that commits transactions with tasks until the parent kills it (SIGKILL).

Usage: python -m tests.chaos.committer FACTORY ARG PREFIX THREADS SUBMISSIONS

Opens a conformance harness with FACTORY(ARG) (see
tests/conformance/harness.py) and, in THREADS threads, commits transaction
after transaction: a business row `PREFIX-<thread>-<n>` and a TRANSACTIONAL
Greet task named the same. The happy path submits each task to the file
SUBMISSIONS, which stands for Cloud Tasks: one line per submission, written
with a single write() (so a SIGKILL leaves whole lines, and at most a cut
last one), then deletes the reminder. After each commit it prints
`committed <name>` on stdout. The parent kills it at a random one of those
lines: by then other threads are anywhere in their transactions, between a
commit and its submit, or between a submit and the reminder's delete.
"""

from __future__ import annotations

import base64
import importlib
import itertools
import os
import sys
import threading

import tq
from tests import _sweeping as sw
from tests.conformance.harness import RowWriter, StoreHarness
from tests.testpb import payloads_pb2 as pb
from tq._request import CreateTaskRequest

LIMIT = 10_000  # transactions per thread, should the parent never kill it


class FileCloud:
    """Appends each submission to a file, as `<task class> <base64 request>` lines."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def submit(self, sub: tq.Submission) -> None:
        request = base64.b64encode(sub.request.SerializeToString()).decode()
        os.write(self._fd, f"{sub.task_class} {request}\n".encode())

    async def submit_async(self, sub: tq.Submission) -> None:
        self.submit(sub)


def read_submissions(path: str) -> list[tuple[str, CreateTaskRequest]]:
    """The whole lines of a submissions file (a line cut by the kill is not one)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in data.split(b"\n")[:-1]:  # after the last newline: a cut line, or nothing
        task_class, _, request = line.decode().partition(" ")
        out.append((task_class, CreateTaskRequest.FromString(base64.b64decode(request))))
    return out


def main() -> None:
    factory, arg, prefix = sys.argv[1], sys.argv[2], sys.argv[3]
    threads, submissions = int(sys.argv[4]), sys.argv[5]
    module, _, function = factory.partition(":")
    harness: StoreHarness = getattr(importlib.import_module(module), function)(arg)
    disp = sw.dispatcher(submitter=FileCloud(submissions))
    out_lock = threading.Lock()

    def commit_forever(t: int) -> None:
        for n in itertools.count():
            if n >= LIMIT:
                return
            name = f"{prefix}-{t}-{n}"

            def body(rows: RowWriter, name: str = name) -> None:
                rows.insert_row(name)
                disp.add_task(tq.Task(payload=pb.Greet(name=name)))

            harness.run_in_transaction(body)
            with out_lock:
                print(f"committed {name}", flush=True)

    workers = [threading.Thread(target=commit_forever, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    sys.exit(3)  # not killed


if __name__ == "__main__":
    main()
