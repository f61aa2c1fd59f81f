"""Helpers of the sweeper tests: a Cloud Tasks stand-in counting by name, reminders."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

import grpc

import tq
from sweeper import InProcSweeper, SweepStats
from tests.testpb import payloads_pb2 as pb
from tq._pb import reminder_pb2
from tq._reminder import Reminder
from tq._request import CreateTaskRequest
from tq.txn import PendingTask, ReminderStore
from tqtesting import FakeClock, MemoryStore


class Cloud:
    """Cloud Tasks as far as the sweeper can tell: task names created once.

    `created` counts successful creations by task name (each at most 1: a
    second one raises ALREADY_EXISTS, as Cloud Tasks does); `calls` counts
    every submit by name, failed ones included. `fail(sub)` may return a
    gRPC code to fail that call with.
    """

    def __init__(self, fail: Callable[[tq.Submission], grpc.StatusCode | None] | None = None):
        self._lock = threading.Lock()
        self._fail = fail
        self.created: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.absorbed = 0
        self.failed = 0

    def submit(self, sub: tq.Submission) -> None:
        name = sub.task_name
        code = self._fail(sub) if self._fail is not None else None
        with self._lock:
            self.calls[name] += 1
            if code is not None:
                self.failed += 1
                raise tq.SubmitError(code, "injected")
            if name in self.created:
                self.absorbed += 1
                raise tq.SubmitError(grpc.StatusCode.ALREADY_EXISTS, f"{name} exists")
            self.created[name] += 1

    async def submit_async(self, sub: tq.Submission) -> None:
        self.submit(sub)

    def ids(self) -> set[str]:
        """The reminder IDs (task IDs) created."""
        return {n.rsplit("/", 1)[-1] for n in self.created}


class Via:
    """A submitter that notes which names it passed on, then forwards them."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self._lock = threading.Lock()
        self.names: collections.Counter[str] = collections.Counter()

    def submit(self, sub: tq.Submission) -> None:
        with self._lock:
            self.names[sub.task_name] += 1
        self.cloud.submit(sub)

    async def submit_async(self, sub: tq.Submission) -> None:
        self.submit(sub)


def dispatcher(
    *,
    submitter: tq.Submitter | None = None,
    sweeper: tq.Sweeper | None = None,
    ids: Iterator[int] | None = None,
) -> tq.Dispatcher:
    """A dispatcher with a TRANSACTIONAL class `greet` (pb.Greet, queue "greetings").

    `ids` gives the integer reminder IDs to use, in order (default random).
    """
    random_bytes = None
    if ids is not None:
        source = ids

        def random_bytes(n: int) -> bytes:
            return next(source).to_bytes(n, "big")

    d = tq.Dispatcher(
        cloud_project="proj",
        cloud_region="us-central1",
        default_target_host="app.example.com",
        submitter=submitter,
        sweeper=sweeper,
        **({"random_bytes": random_bytes} if random_bytes is not None else {}),
    )
    d.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="greetings")
    )
    return d


def unique_ids(n: int, space: int, seed: int = 7) -> Iterator[int]:
    """`n` distinct integers below `space`, in a random (seeded) order."""
    rng = random.Random(seed)
    if space <= 1 << 62:
        return iter(rng.sample(range(space), n))
    seen: dict[int, None] = {}
    while len(seen) < n:
        seen[rng.randrange(space)] = None
    return iter(seen)


@dataclasses.dataclass
class _Capture:
    """A transaction whose commit the process never follows up (it died)."""

    store: ReminderStore
    deadline: dt.datetime | None = None
    pending: list[PendingTask] = dataclasses.field(default_factory=list)

    def save_reminder(self, pending: PendingTask) -> None:
        self.pending.append(pending)


def reminders_for(
    disp: tq.Dispatcher,
    store: ReminderStore,
    names: Iterable[str],
    *,
    deadline: dt.datetime | None = None,
) -> list[Reminder]:
    """The reminders `add_task` writes for Greet tasks named `names` (not stored)."""
    txn = _Capture(store, deadline)
    batch: list[tq.Task] = []
    with tq.txn.ambient(txn):
        for name in names:
            batch.append(tq.Task(payload=pb.Greet(name=name)))
            if len(batch) == 1000:
                disp.add_task(*batch)
                batch = []
        if batch:
            disp.add_task(*batch)
    return [p.reminder for p in txn.pending]


def ids_of(reminders: Sequence[Reminder]) -> set[str]:
    return {r.id for r in reminders}


def clones(template: Reminder, keys: Iterable[int], fresh_until: dt.datetime) -> Iterator[Reminder]:
    """Copies of `template` under other IDs (its task renamed to match), cheaply.

    For big backlogs: `add_task` builds each request from scratch.
    """
    payload = reminder_pb2.ReminderPayload.FromString(template.payload)
    req = CreateTaskRequest.FromString(payload.create_task_request)
    queue = req.parent
    for key in keys:
        rid = f"{key:032x}"
        req.task.name = f"{queue}/tasks/{rid}"
        payload.create_task_request = req.SerializeToString()
        yield Reminder(rid, fresh_until, payload.SerializeToString())


# A tiny in-process sweep over MemoryStore (tests/unit/test_sweeper*.py).

SPACE = 1 << 12  # a tiny key space: IDs 0..4095


def stale_backlog(
    store: MemoryStore, clock: FakeClock, n: int, space: int = SPACE, seed: int = 7
) -> tq.Dispatcher:
    """`n` stale reminders in `store` with IDs below `space`; returns their dispatcher."""
    disp = dispatcher(submitter=Cloud(), ids=unique_ids(n, space, seed))
    names = [f"g{i}" for i in range(n)]
    store.put_reminders(reminders_for(disp, store, names, deadline=clock.now()))
    return disp


def tiny_sweeper(store: MemoryStore, **kw: object) -> InProcSweeper:
    """An InProcSweeper over `store` with small shards, scans and batches."""
    opts: dict[str, object] = {
        "stores": [store],
        "key_space": SPACE,
        "sweep_shards": 4,
        "tasks_per_scan": 5,
        "secondary_scan_shards": 4,
        "max_depth": 10,
        "submit_batch_size": 3,
        "submit_concurrent_batches": 2,
        "submit_concurrency": 4,
    }
    opts.update(kw)
    return InProcSweeper(**opts)  # type: ignore[arg-type]


def run_sweep(sweeper: InProcSweeper, cloud: Cloud, mode: str) -> SweepStats:
    """One sweep through a dispatcher, `sweep()` or `sweep_async()` by `mode`; its stats."""
    disp = dispatcher(submitter=cloud, sweeper=sweeper)
    if mode == "sync":
        disp.sweep()
    else:
        asyncio.run(disp.sweep_async())
    assert sweeper.last_stats is not None
    return sweeper.last_stats
