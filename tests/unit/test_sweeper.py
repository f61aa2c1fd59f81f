"""In-process sweeping (sweeper.InProcSweeper) on MemoryStore."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading

import grpc
import pytest

import tq
from sweeper import InProcSweeper
from sweeper._partition import Partition
from tests import _sweeping as sw
from tests._sweeping import SPACE, stale_backlog, tiny_sweeper
from tests._sweeping import run_sweep as run
from tq import _metrics
from tq.txn import Lease, ReminderKey
from tqtesting import FakeClock, MemoryStore


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_backlog_in_a_tiny_key_space_is_submitted_once_each_and_emptied(
    clock: FakeClock, mode: str
) -> None:
    store = MemoryStore()
    stale_backlog(store, clock, 200)
    want = {r.id for r in store.reminders()}
    cloud = sw.Cloud()
    stats = run(tiny_sweeper(store), cloud, mode)
    assert cloud.ids() == want
    assert set(cloud.calls.values()) == {1}
    assert store.count_reminders() == (0, 0)
    assert stats.submitted == 200
    assert stats.deepest >= 2  # follow-ups of follow-ups were needed
    assert stats.scans == 4 + stats.follow_ups
    assert store.leases() == []


def test_fresh_reminders_are_left_to_the_happy_path(clock: FakeClock) -> None:
    store = MemoryStore()
    disp = sw.dispatcher(submitter=sw.Cloud(), ids=sw.unique_ids(100, SPACE))
    stale = sw.reminders_for(disp, store, [f"s{i}" for i in range(50)], deadline=clock.now())
    fresh = sw.reminders_for(disp, store, [f"f{i}" for i in range(50)])  # fresh for a minute
    store.put_reminders(stale + fresh)
    cloud = sw.Cloud()
    run(tiny_sweeper(store), cloud, "sync")
    assert cloud.ids() == sw.ids_of(stale)
    assert {r.id for r in store.reminders()} == sw.ids_of(fresh)
    clock.advance(dt.timedelta(minutes=1))
    run(tiny_sweeper(store), cloud, "sync")
    assert cloud.ids() == sw.ids_of(stale) | sw.ids_of(fresh)
    assert store.count_reminders() == (0, 0)


def test_a_bounded_depth_leaves_the_rest_to_later_sweeps(clock: FakeClock) -> None:
    store = MemoryStore()
    stale_backlog(store, clock, 200)
    cloud = sw.Cloud()
    sweeper = tiny_sweeper(store, max_depth=0)
    first = run(sweeper, cloud, "sync")
    assert first.submitted == 4 * 5  # one scan per shard, nothing deeper
    assert first.follow_ups == 0
    sweeps = 1
    while store.count_reminders()[0] and sweeps < 20:
        run(sweeper, cloud, "sync")
        sweeps += 1
    assert store.count_reminders() == (0, 0)
    assert len(cloud.created) == 200
    assert set(cloud.calls.values()) == {1}


def test_transient_failures_stay_for_the_next_sweep_and_permanent_ones_park(
    clock: FakeClock,
) -> None:
    store = MemoryStore()
    disp = stale_backlog(store, clock, 30)
    reminders = store.reminders()
    flaky = {r.id for r in reminders[:5]}
    broken = {r.id for r in reminders[5:8]}
    fixed = threading.Event()

    def fail(sub: tq.Submission) -> grpc.StatusCode | None:
        if sub.reminder_id in broken:
            return grpc.StatusCode.NOT_FOUND
        if sub.reminder_id in flaky and not fixed.is_set():
            return grpc.StatusCode.UNAVAILABLE
        return None

    cloud = sw.Cloud(fail)
    stats = run(tiny_sweeper(store), cloud, "sync")
    assert (stats.submitted, stats.kept, stats.parked) == (22, 5, 3)
    assert store.count_reminders() == (5, 3)
    assert {r.id for r in store.list_parked(10)} == broken
    fixed.set()
    stats = run(tiny_sweeper(store), cloud, "sync")
    assert (stats.submitted, stats.kept, stats.parked) == (5, 0, 0)
    assert store.count_reminders() == (0, 3)
    assert disp is not None


def test_an_unreadable_reminder_is_parked_not_retried_forever(clock: FakeClock) -> None:
    store = MemoryStore()
    stale_backlog(store, clock, 10)
    bad = store.reminders()[3]
    store.put_reminders([tq._reminder.Reminder(bad.id, bad.fresh_until, b"\xff\xff garbage")])
    cloud = sw.Cloud()
    stats = run(tiny_sweeper(store), cloud, "sync")
    assert (stats.submitted, stats.parked) == (9, 1)
    assert [r.id for r in store.list_parked(10)] == [bad.id]


def test_ranges_leased_by_another_sweeper_are_left_alone(clock: FakeClock) -> None:
    store = MemoryStore()
    stale_backlog(store, clock, 40)
    sweeper = tiny_sweeper(store, sweep_shards=1, tasks_per_scan=100)
    held = Partition(0, SPACE // 2)
    now = clock.now()
    store.take_lease("memory/1/0", [(held.low, held.high)], now + dt.timedelta(minutes=5), now)
    cloud = sw.Cloud()
    stats = run(sweeper, cloud, "sync")
    left = {r.id for r in store.reminders()}
    assert left
    assert all(int(i, 16) in held for i in left)
    assert all(int(i, 16) not in held for i in cloud.ids())
    assert stats.not_leased == len(left)
    clock.advance(dt.timedelta(minutes=5))  # the other sweeper's lease ran out
    run(sweeper, cloud, "sync")
    assert store.count_reminders() == (0, 0)


def test_no_batch_starts_after_the_lease_ran_out(clock: FakeClock) -> None:
    store = MemoryStore()
    stale_backlog(store, clock, 12)

    def slow(sub: tq.Submission) -> None:
        clock.advance(dt.timedelta(seconds=40))  # each submit "takes" 40 s
        return

    sweeper = tiny_sweeper(
        store, sweep_shards=1, tasks_per_scan=100, submit_batch_size=2, submit_concurrency=1
    )
    cloud = sw.Cloud(slow)
    before = _metrics.value("tq_sweep_lease_expired", store="memory")
    stats = run(sweeper, cloud, "sync")
    assert stats.submitted == 2  # the 2nd batch would start 80 s into a 60 s lease
    assert store.count_reminders() == (10, 0)
    assert _metrics.value("tq_sweep_lease_expired", store="memory") == before + 1


def test_a_sweep_called_while_one_runs_returns_without_sweeping(clock: FakeClock) -> None:
    store = MemoryStore()
    stale_backlog(store, clock, 5)
    entered, release = threading.Event(), threading.Event()

    def hold(sub: tq.Submission) -> None:
        entered.set()
        release.wait(60)
        return

    cloud = sw.Cloud(hold)
    sweeper = tiny_sweeper(store, sweep_shards=1, submit_concurrency=1)
    disp = sw.dispatcher(submitter=cloud, sweeper=sweeper)
    first = threading.Thread(target=disp.sweep)
    first.start()
    try:
        assert entered.wait(60)
        skipped = _metrics.value("tq_sweeps_skipped")
        disp.sweep()  # returns at once: the first sweep is still running
        asyncio.run(disp.sweep_async())
        assert _metrics.value("tq_sweeps_skipped") == skipped + 2
        assert cloud.created == {}
    finally:
        release.set()
        first.join(60)
    assert len(cloud.created) == 5


def test_by_default_every_registered_store_is_swept(clock: FakeClock) -> None:
    stores = [MemoryStore("sweep-test-a"), MemoryStore("sweep-test-b")]
    for i, store in enumerate(stores):
        stale_backlog(store, clock, 10, seed=i)
        tq.txn.register_store(store)
    try:
        sweeper = InProcSweeper(key_space=SPACE, sweep_shards=2)
        assert {s.name for s in sweeper.stores()} >= {"sweep-test-a", "sweep-test-b"}
        cloud = sw.Cloud()
        run(sweeper, cloud, "sync")
    finally:
        for store in stores:
            tq.txn.unregister_store(store.name)
    assert len(cloud.created) == 20
    assert all(s.count_reminders() == (0, 0) for s in stores)


def test_sweeps_submit_with_the_submitter_of_the_calling_context(clock: FakeClock) -> None:
    store = MemoryStore()
    stale_backlog(store, clock, 8)
    default, scoped = sw.Cloud(), sw.Cloud()
    disp = sw.dispatcher(submitter=default, sweeper=tiny_sweeper(store))
    with tq.use_submitter(scoped):
        disp.sweep()
    assert (len(default.created), len(scoped.created)) == (0, 8)


@pytest.mark.parametrize("kw", [{"sweep_shards": 0}, {"tasks_per_scan": 0}, {"key_space": 0}])
def test_tunables_out_of_range_are_refused(kw: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be"):
        InProcSweeper(**kw)  # type: ignore[arg-type]


class Lockstep(MemoryStore):
    """A view of a shared store: both sweepers read each first-level shard, then go on."""

    def __init__(self, shared: MemoryStore, barriers: dict[str, threading.Barrier]) -> None:
        super().__init__(shared.name)
        self.shared = shared
        self.barriers = barriers

    def fetch_reminder_keys(self, low: str, high: str, limit: int) -> list[ReminderKey]:
        keys = self.shared.fetch_reminder_keys(low, high, limit)
        barrier = self.barriers.get(low + high)
        if barrier is not None:
            # After the read: both sweepers found the same keys before either
            # submits (a wait before it let one thread sweep the shard while
            # the other had not read it yet).
            barrier.wait(60)
        return keys

    def fetch_reminders(self, ids: object) -> list[tq._reminder.Reminder]:
        return self.shared.fetch_reminders(ids)  # type: ignore[arg-type]

    def delete_reminders(self, ids: object) -> None:
        self.shared.delete_reminders(ids)  # type: ignore[arg-type]

    def park_reminder(self, reminder_id: str, extra: bytes) -> None:
        self.shared.park_reminder(reminder_id, extra)

    def take_lease(
        self,
        section: str,
        ranges: object,
        expires_at: dt.datetime,
        now: dt.datetime,
    ) -> Lease:
        return self.shared.take_lease(section, ranges, expires_at, now)  # type: ignore[arg-type]

    def release_lease(self, section: str, lease_id: str) -> None:
        self.shared.release_lease(section, lease_id)


@pytest.mark.parametrize("use_leases", [True, False])
def test_two_sweepers_at_once_create_each_task_once(clock: FakeClock, use_leases: bool) -> None:
    shared = MemoryStore()
    stale_backlog(shared, clock, 200)
    want = {r.id for r in shared.reminders()}
    # Both sweepers read each first-level shard at the same moment.
    barriers = {
        "".join(p.query_bounds()): threading.Barrier(2) for p in Partition(0, SPACE).split(4)
    }
    cloud = sw.Cloud()
    vias = [sw.Via(cloud), sw.Via(cloud)]
    sweepers = [tiny_sweeper(Lockstep(shared, barriers), use_leases=use_leases) for _ in range(2)]
    threads = [
        threading.Thread(target=sw.dispatcher(submitter=v, sweeper=s).sweep)
        for v, s in zip(vias, sweepers, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert cloud.ids() == want
    assert set(cloud.created.values()) == {1}
    assert shared.count_reminders() == (0, 0)
    both = [s.last_stats for s in sweepers]
    assert all(s is not None for s in both)
    if use_leases:
        # Each reminder went out through exactly one sweeper, once.
        assert set(cloud.calls.values()) == {1}
        assert not set(vias[0].names) & set(vias[1].names)
        assert sum(s.not_leased + s.gone for s in both if s is not None) > 0
    else:
        # Without leases the sweepers may overlap; the task names absorb it.
        assert sum(cloud.calls.values()) == 200 + cloud.absorbed
