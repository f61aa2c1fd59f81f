"""Distributed sweeping (sweeper.DistributedSweeper) end to end through tqtesting.Scheduler."""

from __future__ import annotations

import collections
import random
import threading

import pytest

import tq
from sweeper import DistributedSweeper, InProcSweeper
from sweeper._partition import Partition
from tests import _sweeping as sw
from tests.testpb import payloads_pb2 as pb
from tq import _metrics, _push
from tq._pb.sweep_pb2 import SweepTask
from tq.txn import ReminderKey
from tqtesting import FakeClock, MemoryStore, Scheduler, TaskStatus, parallel, stop_when_drained


class World:
    """A dispatcher with a distributed sweeper, a Scheduler, and greetings counted by name."""

    def __init__(self, store: MemoryStore, clock: FakeClock, **sweeper_kw: object) -> None:
        self.store = store
        rng = random.Random(3)
        ids = iter({rng.getrandbits(128): None for _ in range(2000)})
        self.disp = sw.dispatcher(ids=ids)
        self.scheduler = Scheduler(self.disp, clock=clock)
        self.disp.configure(submitter=self.scheduler)
        kw: dict[str, object] = {
            "stores": [store],
            "sweep_shards": 4,
            "tasks_per_scan": 10,
            "secondary_scan_shards": 4,
            "max_depth": 10,
            "submit_batch_size": 3,
        }
        kw.update(sweeper_kw)
        self.sweeper = DistributedSweeper(self.disp, **kw)  # type: ignore[arg-type]
        self.greeted: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

        def greet(payload: pb.Greet) -> None:
            with self._lock:
                self.greeted[payload.name] += 1

        self.disp.attach_handler("greet", greet)  # type: ignore[arg-type]

    def backlog(self, n: int) -> set[str]:
        names = {f"g{i}" for i in range(n)}
        self.store.put_reminders(
            sw.reminders_for(self.disp, self.store, sorted(names), deadline=tq.clock.now())
        )
        return names

    def sweep_tasks(self) -> list[tuple[SweepTask, TaskStatus, int]]:
        out = []
        for t in self.scheduler.tasks().of_class("tq-sweep"):
            assert isinstance(t.payload, SweepTask)
            out.append((t.payload, t.status, t.attempts))
        return out


def test_a_distributed_sweep_runs_every_stale_task_once(clock: FakeClock) -> None:
    world = World(MemoryStore(), clock)
    names = world.backlog(200)
    world.disp.sweep()
    first = world.sweep_tasks()
    assert len(first) == 4
    assert sorted(Partition.from_string(t.partition) for t, _, _ in first) == (
        Partition.full().split(4)
    )
    world.scheduler.run(stop_when_drained(), parallel(4))
    assert world.greeted == dict.fromkeys(names, 1)
    assert world.store.count_reminders() == (0, 0)
    tasks = world.sweep_tasks()
    assert len(tasks) > 4  # follow-up sweep tasks
    assert max(t.level for t, _, _ in tasks) >= 2
    assert {(status, attempts) for _, status, attempts in tasks} == {(TaskStatus.FINISHED, 1)}
    assert world.store.leases() == []


async def test_overlapping_distributed_sweeps_split_the_work_by_leases(clock: FakeClock) -> None:
    world = World(MemoryStore(), clock)
    names = world.backlog(300)
    before = _metrics.value("tq_reminders_processed", task_class="greet", path="sweep")
    await world.disp.sweep_async()
    await world.disp.sweep_async()
    await world.scheduler.run_async(stop_when_drained(), parallel(8))
    assert world.greeted == dict.fromkeys(names, 1)
    assert world.store.count_reminders() == (0, 0)
    # Every reminder was submitted once: the second sweep's tasks found their
    # ranges leased or their reminders gone.
    after = _metrics.value("tq_reminders_processed", task_class="greet", path="sweep")
    assert after - before == 300
    assert len(world.sweep_tasks()) >= 8


class Capture:
    def __init__(self) -> None:
        self.subs: list[tq.Submission] = []

    def submit(self, sub: tq.Submission) -> None:
        self.subs.append(sub)

    async def submit_async(self, sub: tq.Submission) -> None:
        self.subs.append(sub)


class BrokenStore(MemoryStore):
    def fetch_reminder_keys(self, low: str, high: str, limit: int) -> list[ReminderKey]:
        raise RuntimeError("connection reset")


def test_a_failing_sweep_task_is_dropped_not_retried(clock: FakeClock) -> None:
    world = World(BrokenStore("broken"), clock)
    world.disp.sweep()
    world.scheduler.run(stop_when_drained())
    tasks = world.sweep_tasks()
    assert len(tasks) == 4
    assert {(status, attempts) for _, status, attempts in tasks} == {(TaskStatus.FAILED, 1)}
    outcomes = {t.outcome for t in world.scheduler.tasks().of_class("tq-sweep")}
    assert outcomes == {"fatal"}


async def push(world: World, task: SweepTask, retry_count: int = 0) -> _push.PushResult:
    capture = Capture()
    with tq.use_submitter(capture):
        await world.disp.add_task_async(tq.Task(payload=task))
    _, _, headers, body = tq._request.http_parts(capture.subs[0].request)
    lower = {k.lower(): v for k, v in headers.items()}
    lower["x-cloudtasks-taskretrycount"] = str(retry_count)
    return await _push.handle_push(world.disp, "tq-sweep", lower, body)


async def test_a_retried_sweep_push_is_ignored(clock: FakeClock) -> None:
    world = World(MemoryStore(), clock)
    world.backlog(5)
    task = SweepTask(store="memory", partition=str(Partition.full()), shard_count=1)
    result = await push(world, task, retry_count=1)
    assert (result.status, result.outcome) == (204, "ignore")
    assert world.store.count_reminders() == (5, 0)
    result = await push(world, task)
    assert (result.status, result.outcome) == (200, "ok")
    assert world.store.count_reminders() == (0, 0)


@pytest.mark.parametrize(
    "task",
    [
        SweepTask(store="nope", partition=str(Partition.full())),
        SweepTask(store="memory", partition="not-a-range"),
    ],
)
async def test_a_sweep_task_it_cannot_run_is_fatal(clock: FakeClock, task: SweepTask) -> None:
    world = World(MemoryStore(), clock)
    result = await push(world, task)
    assert (result.status, result.outcome) == (202, "fatal")


def test_one_dispatcher_takes_one_distributed_sweeper(clock: FakeClock) -> None:
    world = World(MemoryStore(), clock)
    assert world.disp.sweeper is world.sweeper
    with pytest.raises(tq.ConfigError, match="registered already"):
        DistributedSweeper(world.disp)
    other = sw.dispatcher(submitter=sw.Cloud(), sweeper=world.sweeper)
    with pytest.raises(tq.ConfigError, match="another dispatcher"):
        other.sweep()


def test_sweep_tasks_go_to_their_own_queue(clock: FakeClock) -> None:
    world = World(MemoryStore(), clock, queue="sweeping")
    world.disp.sweep()
    queues = {t.queue for t in world.scheduler.tasks()}
    assert queues == {"sweeping"}
    cls = world.disp.task_class_by_id("tq-sweep")
    assert cls is not None
    assert cls.kind is tq.Kind.NON_TRANSACTIONAL


def test_in_process_and_distributed_sweeps_agree(clock: FakeClock) -> None:
    # The same backlog through both modes: the same tasks come out.
    a, b = MemoryStore("a"), MemoryStore("b")
    world = World(a, clock)
    names = world.backlog(60)
    b.put_reminders(a.reminders())
    world.disp.sweep()
    world.scheduler.run(stop_when_drained())
    cloud = sw.Cloud()
    inproc = InProcSweeper(stores=[b], sweep_shards=4, tasks_per_scan=10)
    sw.dispatcher(submitter=cloud, sweeper=inproc).sweep()
    assert world.greeted == dict.fromkeys(names, 1)
    created = {t.name for t in world.scheduler.tasks().of_class("greet")}
    assert created == set(cloud.created)
