"""Scans of one partition (sweeper/_scan.py) on MemoryStore."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from sweeper._partition import Partition
from sweeper._scan import ScanParams, is_timeout, scan, scan_async
from tests import _sweeping as sw
from tq import _metrics
from tq._reminder import Reminder, parked_extra
from tq.txn import ReminderKey
from tqtesting import FakeClock, MemoryStore

SPACE = 1 << 12


def reminder(key: int, fresh_until: dt.datetime, parked: bool = False) -> Reminder:
    extra = parked_extra("NOT_FOUND", "no queue", fresh_until) if parked else b""
    return Reminder(f"{key:032x}", fresh_until, b"", extra)


def test_scan_reads_ascending_and_keeps_only_stale_unparked(clock: FakeClock) -> None:
    now = clock.now()
    store = MemoryStore()
    store.put_reminders(
        [reminder(k, now - dt.timedelta(seconds=1)) for k in (40, 10, 30)]
        + [reminder(20, now + dt.timedelta(seconds=1))]  # still fresh
        + [reminder(25, now - dt.timedelta(seconds=1), parked=True)]
        + [reminder(50, now)]  # fresh_until == now: stale
        + [reminder(2000, now - dt.timedelta(1))]  # outside the partition
    )
    result = scan(store, Partition(0, 1000), 0, ScanParams(tasks_per_scan=10))
    assert [k.id for k in result.stale] == [f"{k:032x}" for k in (10, 30, 40, 50)]
    assert not result.truncated
    assert result.follow_ups == []
    assert result.covered == Partition(0, 1000)


def test_full_scan_plans_follow_ups_for_the_rest_after_the_last_key(clock: FakeClock) -> None:
    store = MemoryStore()
    stale = clock.now() - dt.timedelta(minutes=5)
    store.put_reminders([reminder(k, stale) for k in range(0, 1000, 10)])  # 100 keys
    params = ScanParams(tasks_per_scan=10, secondary_scan_shards=4)
    result = scan(store, Partition(0, 1000), 0, params)
    assert result.truncated
    assert len(result.stale) == 10
    assert result.covered == Partition(0, 91)  # up to and including key 90
    assert len(result.follow_ups) == 4  # ~90 expected, 10 per scan, capped at 4
    assert result.follow_ups[0].low == 91
    assert result.follow_ups[-1].high == 1000
    rest = sum(
        len(scan(store, p, 1, ScanParams(tasks_per_scan=100)).stale) for p in result.follow_ups
    )
    assert rest == 90


def test_scan_at_the_deepest_level_plans_no_follow_ups(clock: FakeClock) -> None:
    store = MemoryStore("deep")
    stale = clock.now() - dt.timedelta(minutes=5)
    store.put_reminders([reminder(k, stale) for k in range(20)])
    before = _metrics.value("tq_sweep_depth_exhausted", store="deep")
    params = ScanParams(tasks_per_scan=5, max_depth=2)
    assert scan(store, Partition(0, SPACE), 1, params).follow_ups
    result = scan(store, Partition(0, SPACE), 2, params)
    assert result.truncated
    assert result.follow_ups == []
    assert len(result.stale) == 5
    assert _metrics.value("tq_sweep_depth_exhausted", store="deep") == before + 1


class TimingOutStore(MemoryStore):
    def __init__(self, error: BaseException) -> None:
        super().__init__("slow")
        self.error = error

    def fetch_reminder_keys(self, low: str, high: str, limit: int) -> list[ReminderKey]:
        raise self.error


class QueryCanceledError(Exception):
    """Named like psycopg's statement-timeout error."""


class Wrapper(Exception):
    def __init__(self, orig: BaseException) -> None:
        super().__init__("wrapped")
        self.orig = orig


@pytest.mark.parametrize(
    "error", [TimeoutError("read"), Wrapper(QueryCanceledError("statement timeout"))]
)
def test_timed_out_read_splits_the_whole_partition(clock: FakeClock, error: Exception) -> None:
    result = scan(TimingOutStore(error), Partition(0, 64), 0, ScanParams(secondary_scan_shards=4))
    assert result.truncated
    assert result.stale == []
    assert not result.covered
    assert result.follow_ups == Partition(0, 64).split(4)


def test_other_read_errors_propagate(clock: FakeClock) -> None:
    with pytest.raises(RuntimeError, match="disk on fire"):
        scan(TimingOutStore(RuntimeError("disk on fire")), Partition(0, 64), 0, ScanParams())


def test_timeouts_are_recognised_through_causes() -> None:
    outer = RuntimeError("outer")
    outer.__cause__ = TimeoutError("inner")
    assert is_timeout(outer)
    assert not is_timeout(ValueError("no"))


class BlockingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__("blocking")
        self.release = threading.Event()

    def fetch_reminder_keys(self, low: str, high: str, limit: int) -> list[ReminderKey]:
        self.release.wait(10)
        return super().fetch_reminder_keys(low, high, limit)


async def test_async_scan_gives_up_after_its_timeout(clock: FakeClock) -> None:
    store = BlockingStore()
    try:
        result = await scan_async(
            store, Partition(0, 64), 1, ScanParams(secondary_scan_shards=2, timeout_s=0.01)
        )
    finally:
        store.release.set()
    assert result.truncated
    assert result.follow_ups == [Partition(0, 32), Partition(32, 64)]


async def test_async_scan_reads_like_the_blocking_one(clock: FakeClock) -> None:
    store = MemoryStore()
    disp = sw.dispatcher(submitter=sw.Cloud(), ids=sw.unique_ids(30, SPACE))
    store.put_reminders(sw.reminders_for(disp, store, map(str, range(30)), deadline=clock.now()))
    params = ScanParams(tasks_per_scan=8)
    blocking = scan(store, Partition(0, SPACE), 0, params)
    assert await scan_async(store, Partition(0, SPACE), 0, params) == blocking
    assert len(blocking.stale) == 8
