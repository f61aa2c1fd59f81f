"""Paged scans (sweeper._pages): a store that reads whole reminders of a range.

`tq.txn.sql.SQLStore` reads pages of whole reminders (`scan_reminders`);
here `PagedStore` gives MemoryStore the same method, so that the paged
sweep's leases, follow-ups, timeouts and failures run without a database.
"""

from __future__ import annotations

import datetime as dt
import threading

import pytest

import tq
from sweeper._pages import pages_of
from sweeper._partition import Partition
from tests import _sweeping as sw
from tests._sweeping import SPACE, stale_backlog, tiny_sweeper
from tests._sweeping import run_sweep as run
from tq import _metrics
from tq._reminder import Reminder
from tq.txn import Lease
from tqtesting import FakeClock, MemoryStore


class PagedStore(MemoryStore):
    """MemoryStore with `scan_reminders`; counts what it is asked to read."""

    def __init__(self, name: str = "memory") -> None:
        super().__init__(name)
        self.pages = 0
        self.fetches = 0
        self.fail_page: int | None = None  # this page read (1-based) raises...
        self.fail_with: Exception = TimeoutError("page read timed out")  # ...this

    def scan_reminders(self, low: str, high: str, limit: int) -> list[Reminder]:
        self.pages += 1
        if self.fail_page == self.pages:
            raise self.fail_with
        keys = self.fetch_reminder_keys(low, high, limit)
        by_id = {r.id: r for r in MemoryStore.fetch_reminders(self, [k.id for k in keys])}
        return [by_id[k.id] for k in keys if k.id in by_id]

    def fetch_reminders(self, ids: object) -> list[Reminder]:
        self.fetches += 1
        return super().fetch_reminders(ids)  # type: ignore[arg-type]


def test_only_stores_with_scan_reminders_are_read_in_pages() -> None:
    assert pages_of(PagedStore()) is not None
    assert pages_of(MemoryStore()) is None


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_paged_sweep_submits_each_reminder_once_reading_each_once(
    clock: FakeClock, mode: str
) -> None:
    store = PagedStore()
    stale_backlog(store, clock, 200)
    want = {r.id for r in store.reminders()}
    cloud = sw.Cloud()
    stats = run(tiny_sweeper(store), cloud, mode)
    assert cloud.ids() == want
    assert set(cloud.calls.values()) == {1}
    assert store.count_reminders() == (0, 0)
    assert (stats.submitted, stats.stale, stats.gone) == (200, 200, 0)
    assert stats.deepest >= 2  # follow-ups of follow-ups were needed
    assert stats.scans == 4 + stats.follow_ups
    assert store.fetches == 0  # nothing read back by ID
    assert store.leases() == []


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_fresh_reminders_in_a_page_are_left_to_the_happy_path(clock: FakeClock, mode: str) -> None:
    store = PagedStore()
    disp = sw.dispatcher(submitter=sw.Cloud(), ids=sw.unique_ids(100, SPACE))
    stale = sw.reminders_for(disp, store, [f"s{i}" for i in range(50)], deadline=clock.now())
    fresh = sw.reminders_for(disp, store, [f"f{i}" for i in range(50)])
    store.put_reminders(stale + fresh)
    cloud = sw.Cloud()
    stats = run(tiny_sweeper(store), cloud, mode)
    assert cloud.ids() == sw.ids_of(stale)
    assert {r.id for r in store.reminders()} == sw.ids_of(fresh)
    assert stats.stale == 50
    clock.advance(dt.timedelta(minutes=1))
    run(tiny_sweeper(store), cloud, mode)
    assert store.count_reminders() == (0, 0)


def test_a_bounded_depth_leaves_the_rest_of_a_paged_scan_to_later_sweeps(
    clock: FakeClock,
) -> None:
    store = PagedStore()
    stale_backlog(store, clock, 200)
    cloud = sw.Cloud()
    sweeper = tiny_sweeper(store, max_depth=0)
    first = run(sweeper, cloud, "sync")
    assert first.submitted == 4 * 5  # tasks_per_scan per shard, in pages of 3 and 2
    assert first.follow_ups == 0
    sweeps = 1
    while store.count_reminders()[0] and sweeps < 20:
        run(sweeper, cloud, "sync")
        sweeps += 1
    assert store.count_reminders() == (0, 0)
    assert set(cloud.calls.values()) == {1}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_range_partly_leased_by_another_sweeper_is_left_to_it(
    clock: FakeClock, mode: str
) -> None:
    store = PagedStore()
    stale_backlog(store, clock, 40)
    sweeper = tiny_sweeper(store, sweep_shards=1, tasks_per_scan=100)
    held = Partition(0, SPACE // 2)
    now = clock.now()
    store.take_lease("memory/1/0", [(held.low, held.high)], now + dt.timedelta(minutes=5), now)
    cloud = sw.Cloud()
    stats = run(sweeper, cloud, mode)
    left = {r.id for r in store.reminders()}
    assert left
    assert all(int(i, 16) in held for i in left)
    assert all(int(i, 16) not in held for i in cloud.ids())
    assert stats.not_leased == len(left)
    clock.advance(dt.timedelta(minutes=5))  # the other sweeper's lease ran out
    run(sweeper, cloud, mode)
    assert store.count_reminders() == (0, 0)


def test_a_range_wholly_leased_by_another_sweeper_is_not_read(clock: FakeClock) -> None:
    store = PagedStore()
    stale_backlog(store, clock, 40)
    sweeper = tiny_sweeper(store, sweep_shards=1, tasks_per_scan=10)
    now = clock.now()
    store.take_lease("memory/1/0", [(0, SPACE)], now + dt.timedelta(minutes=5), now)
    stats = run(sweeper, sw.Cloud(), "sync")
    assert (store.pages, stats.submitted, stats.follow_ups) == (0, 0, 0)
    assert store.count_reminders() == (40, 0)


def test_no_page_is_read_after_the_lease_ran_out(clock: FakeClock) -> None:
    store = PagedStore()
    stale_backlog(store, clock, 12)

    def slow(sub: tq.Submission) -> None:
        clock.advance(dt.timedelta(seconds=40))  # each submit "takes" 40 s

    sweeper = tiny_sweeper(
        store, sweep_shards=1, tasks_per_scan=100, submit_batch_size=2, submit_concurrency=1
    )
    before = _metrics.value("tq_sweep_lease_expired", store="memory")
    stats = run(sweeper, sw.Cloud(slow), "sync")
    assert stats.submitted == 2  # the 2nd page would be read 80 s into a 60 s lease
    assert store.pages == 1
    assert store.count_reminders() == (10, 0)
    assert store.leases() == []
    assert _metrics.value("tq_sweep_lease_expired", store="memory") == before + 1


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_page_read_that_times_out_splits_the_rest_into_follow_ups(
    clock: FakeClock, mode: str
) -> None:
    store = PagedStore()
    stale_backlog(store, clock, 60)
    store.fail_page = 2  # the first scan's second page
    cloud = sw.Cloud()
    stats = run(tiny_sweeper(store, sweep_shards=1, tasks_per_scan=30), cloud, mode)
    assert stats.follow_ups > 0
    assert stats.scan_errors == 0
    assert len(cloud.created) == 60
    assert store.count_reminders() == (0, 0)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_failed_page_read_counts_a_failed_scan_and_the_next_sweep_goes_on(
    clock: FakeClock, mode: str
) -> None:
    store = PagedStore()
    stale_backlog(store, clock, 30)
    store.fail_page, store.fail_with = 2, RuntimeError("connection lost")
    cloud = sw.Cloud()
    sweeper = tiny_sweeper(store, sweep_shards=1, tasks_per_scan=100)
    errors = _metrics.value("tq_sweep_scan_errors", store="memory")
    stats = run(sweeper, cloud, mode)
    assert stats.scan_errors == 1
    assert stats.submitted == 3  # the first page
    assert _metrics.value("tq_sweep_scan_errors", store="memory") == errors + 1
    assert store.leases() == []
    run(sweeper, cloud, mode)
    assert store.count_reminders() == (0, 0)
    assert set(cloud.calls.values()) == {1}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_unreadable_reminder_in_a_page_is_parked(clock: FakeClock, mode: str) -> None:
    store = PagedStore()
    stale_backlog(store, clock, 10)
    bad = store.reminders()[3]
    store.put_reminders([Reminder(bad.id, bad.fresh_until, b"\xff\xff garbage")])
    stats = run(tiny_sweeper(store), sw.Cloud(), mode)
    assert (stats.submitted, stats.parked) == (9, 1)
    assert [r.id for r in store.list_parked(10)] == [bad.id]


class CountedDeletes(PagedStore):
    def __init__(self) -> None:
        super().__init__()
        self.deletes: list[int] = []

    def delete_reminders(self, ids: object) -> None:
        self.deletes.append(len(ids))  # type: ignore[arg-type]
        super().delete_reminders(ids)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("slow_after", [None, 0, 100])
def test_a_page_is_submitted_in_chunks_and_deleted_in_one_call(
    clock: FakeClock, mode: str, slow_after: int | None
) -> None:
    """Quick submits go a chunk at a time, slow ones (from the start, or after
    some chunks) to concurrent slices; either way each reminder once, one
    delete per page."""
    store = CountedDeletes()
    stale_backlog(store, clock, 300)
    count = [0]
    lock = threading.Lock()

    def maybe_slow(sub: tq.Submission) -> None:
        with lock:
            count[0] += 1
            if slow_after is not None and count[0] > slow_after:
                clock.advance(dt.timedelta(milliseconds=50))  # a network call, as the clock sees it

    cloud = sw.Cloud(maybe_slow)
    sweeper = tiny_sweeper(
        store, sweep_shards=1, tasks_per_scan=1000, submit_batch_size=300, submit_concurrency=8,
        lease_duration=dt.timedelta(hours=1),
    )  # fmt: skip
    stats = run(sweeper, cloud, mode)
    assert stats.submitted == 300
    assert set(cloud.calls.values()) == {1}
    assert store.deletes == [300]
    assert store.count_reminders() == (0, 0)


class Lockstep(PagedStore):
    """A view of a shared store whose sweepers take each first-level shard's lease together."""

    def __init__(self, shared: PagedStore, barriers: dict[str, threading.Barrier]) -> None:
        super().__init__(shared.name)
        self.shared = shared
        self.barriers = barriers

    def scan_reminders(self, low: str, high: str, limit: int) -> list[Reminder]:
        return self.shared.scan_reminders(low, high, limit)

    def delete_reminders(self, ids: object) -> None:
        self.shared.delete_reminders(ids)  # type: ignore[arg-type]

    def take_lease(
        self, section: str, ranges: object, expires_at: dt.datetime, now: dt.datetime
    ) -> Lease:
        lease = self.shared.take_lease(section, ranges, expires_at, now)  # type: ignore[arg-type]
        barrier = self.barriers.get(str(ranges))
        if barrier is not None:
            barrier.wait(60)  # both asked before either reads or releases
        return lease

    def release_lease(self, section: str, lease_id: str) -> None:
        self.shared.release_lease(section, lease_id)


def test_two_paged_sweepers_at_once_submit_each_reminder_once(clock: FakeClock) -> None:
    shared = PagedStore()
    stale_backlog(shared, clock, 200)
    want = {r.id for r in shared.reminders()}
    barriers = {str([(p.low, p.high)]): threading.Barrier(2) for p in Partition(0, SPACE).split(4)}
    cloud = sw.Cloud()
    vias = [sw.Via(cloud), sw.Via(cloud)]
    sweepers = [tiny_sweeper(Lockstep(shared, barriers)) for _ in range(2)]
    threads = [
        threading.Thread(target=sw.dispatcher(submitter=v, sweeper=s).sweep)
        for v, s in zip(vias, sweepers, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert cloud.ids() == want
    assert set(cloud.calls.values()) == {1}  # each went out through one sweeper, once
    assert not set(vias[0].names) & set(vias[1].names)
    assert shared.count_reminders() == (0, 0)
