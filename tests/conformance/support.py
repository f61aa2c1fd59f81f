"""What the conformance scenarios share: a recording submitter, a clock, a dispatcher."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Callable, Iterable

import grpc

import tq
from tests.conformance.harness import StoreHarness
from tests.testpb import payloads_pb2 as pb
from tq._submitter import Submission
from tq.txn import KEY_SPACE, key_bound

GREET = "conformance-greet"  # TRANSACTIONAL
COUNT = "conformance-count"  # FOLLOWS_CONTEXT
BLOB = "conformance-blob"  # TRANSACTIONAL


class RecordingSubmitter:
    """Records submissions; `fail_with` makes every submit fail with that code."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.submitted: list[Submission] = []
        self.attempts = 0
        self.fail_with: grpc.StatusCode | None = None

    def submit(self, submission: Submission) -> None:
        with self._lock:
            self.attempts += 1
            if self.fail_with is not None:
                raise tq.SubmitError(self.fail_with, "injected by the test")
            self.submitted.append(submission)

    async def submit_async(self, submission: Submission) -> None:
        self.submit(submission)

    def reminder_ids(self) -> list[str]:
        with self._lock:
            return [s.reminder_id or "" for s in self.submitted]


class SettableClock:
    """A clock that reads the real time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset.total_seconds()


class IdSource:
    """Dispatcher.random_bytes that hands out chosen reminder IDs, then random ones."""

    def __init__(self) -> None:
        self._queue: list[str] = []
        self._lock = threading.Lock()

    def push(self, ids: Iterable[str]) -> None:
        with self._lock:
            self._queue.extend(ids)

    def __call__(self, n: int) -> bytes:
        with self._lock:
            if self._queue and n == 16:
                return bytes.fromhex(self._queue.pop(0))
        return os.urandom(n)


def make_dispatcher(submitter: RecordingSubmitter, ids: IdSource | None = None) -> tq.Dispatcher:
    disp = tq.Dispatcher(
        cloud_project="conformance",
        cloud_region="us-central1",
        default_target_host="app.example.com",
        submitter=submitter,
        random_bytes=ids or IdSource(),
    )
    kinds = ((GREET, pb.Greet, tq.Kind.TRANSACTIONAL), (COUNT, pb.Count, tq.Kind.FOLLOWS_CONTEXT),
             (BLOB, pb.Blob, tq.Kind.TRANSACTIONAL))  # fmt: skip
    for class_id, proto, kind in kinds:
        disp.register_task_class(tq.TaskClass(id=class_id, prototype=proto, kind=kind, queue="q"))
    return disp


def all_keys(harness: StoreHarness) -> list[str]:
    """IDs of every unparked reminder, ascending."""
    return [k.id for k in harness.store.fetch_reminder_keys("", key_bound(KEY_SPACE), 1_000_000)]


def seed(harness: StoreHarness, ids: list[str]) -> None:
    """Commits reminders with exactly these IDs and no happy path (they stay).

    The happy path skips reminders past their fresh_until, so the clock moves
    two minutes ahead between add_task and the commit.
    """
    clock = SettableClock()
    source = IdSource()
    source.push(ids)
    disp = make_dispatcher(RecordingSubmitter(), source)

    def body(_rows: object) -> None:
        clock.offset = dt.timedelta(0)
        disp.add_task(*(tq.Task(payload=pb.Greet(name=i)) for i in ids))
        clock.offset = dt.timedelta(minutes=2)

    with tq.clock.use_clock(clock):
        harness.run_in_transaction(body)


def poll(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    """Polls `condition` until it holds or the bounded deadline passes."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
