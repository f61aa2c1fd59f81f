"""The ReminderStore protocol, for every store: scans, payloads, parking, leases."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from sweeper._pages import pages_of
from tests.conformance.harness import StoreHarness
from tests.conformance.support import all_keys, seed
from tq._reminder import parked_extra
from tq.txn import KEY_SPACE, key_bound
from tq.txn._keyspace import int_to_id

TOP = KEY_SPACE - 1
IDS = sorted(int_to_id(k) for k in (0, 1, 2**64, 2**127 - 1, 2**127, 2**127 + 5, TOP - 1, TOP))
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def seeded(harness: StoreHarness) -> StoreHarness:
    seed(harness, IDS)
    return harness


def test_fetch_keys_returns_ids_in_half_open_range_ascending(seeded: StoreHarness) -> None:
    keys = seeded.store.fetch_reminder_keys(key_bound(1), key_bound(2**127 + 5), 100)
    assert [k.id for k in keys] == [int_to_id(k) for k in (1, 2**64, 2**127 - 1, 2**127)]


def test_fetch_keys_reaches_the_top_of_the_key_space(seeded: StoreHarness) -> None:
    keys = seeded.store.fetch_reminder_keys(key_bound(TOP), key_bound(KEY_SPACE), 100)
    assert [k.id for k in keys] == [int_to_id(TOP)]
    everything = seeded.store.fetch_reminder_keys(key_bound(0), key_bound(KEY_SPACE), 100)
    assert [k.id for k in everything] == IDS


def test_fetch_keys_honours_the_limit_from_the_low_end(seeded: StoreHarness) -> None:
    keys = seeded.store.fetch_reminder_keys(key_bound(2**64), key_bound(KEY_SPACE), 3)
    assert [k.id for k in keys] == IDS[2:5]
    assert seeded.store.fetch_reminder_keys(key_bound(0), key_bound(KEY_SPACE), 0) == []


def test_fetch_keys_of_an_empty_range_is_empty(seeded: StoreHarness) -> None:
    assert seeded.store.fetch_reminder_keys(key_bound(2), key_bound(2**64), 10) == []
    assert seeded.store.fetch_reminder_keys(key_bound(5), key_bound(5), 10) == []


def test_fetch_keys_carries_fresh_until(seeded: StoreHarness) -> None:
    [key] = seeded.store.fetch_reminder_keys(key_bound(0), key_bound(1), 10)
    [rem] = seeded.store.fetch_reminders([key.id])
    assert key.fresh_until == rem.fresh_until
    assert key.fresh_until.tzinfo is not None
    assert abs(key.fresh_until - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=2)


def test_fetch_reminders_returns_existing_ones_with_payloads(seeded: StoreHarness) -> None:
    got = seeded.store.fetch_reminders([IDS[0], int_to_id(3), IDS[-1]])
    assert sorted(r.id for r in got) == [IDS[0], IDS[-1]]
    for r in got:
        sub = r.submission()
        assert sub.reminder_id == r.id
        assert sub.task_name.endswith(f"/tasks/{r.id}")
        assert r.extra == b""
    assert seeded.store.fetch_reminders([]) == []


def test_delete_reminders_removes_only_those_ids(seeded: StoreHarness) -> None:
    seeded.store.delete_reminders([IDS[1], IDS[3], "0" * 31 + "f"])  # the last never existed
    assert all_keys(seeded) == [i for i in IDS if i not in (IDS[1], IDS[3])]
    seeded.store.delete_reminders([])
    assert seeded.store.count_reminders() == (len(IDS) - 2, 0)


def test_ids_are_matched_whole_even_with_commas(seeded: StoreHarness) -> None:
    joined = f"{IDS[0]},{IDS[1]}"  # no such ID: must not be split into two
    assert seeded.store.fetch_reminders([joined]) == []
    assert [r.id for r in seeded.store.fetch_reminders([joined, IDS[2]])] == [IDS[2]]
    seeded.store.delete_reminders([joined, IDS[2]])
    assert all_keys(seeded) == [i for i in IDS if i != IDS[2]]


def test_many_reminders_are_fetched_and_deleted_in_one_call(harness: StoreHarness) -> None:
    ids = sorted(int_to_id(k * (KEY_SPACE // 1200)) for k in range(1200))
    for i in range(0, len(ids), 400):
        seed(harness, ids[i : i + 400])
    assert harness.store.count_reminders() == (1200, 0)
    assert len(harness.store.fetch_reminders(ids)) == 1200
    harness.store.delete_reminders(ids[:1100])
    assert all_keys(harness) == ids[1100:]


def test_parked_reminders_are_listed_in_pages_and_skipped_by_scans(seeded: StoreHarness) -> None:
    store = seeded.store
    for rid in (IDS[1], IDS[4], IDS[6]):
        store.park_reminder(rid, parked_extra("NOT_FOUND", f"queue gone for {rid}", NOW))
    assert store.count_reminders() == (len(IDS) - 3, 3)
    assert IDS[4] not in [k.id for k in store.fetch_reminder_keys("", key_bound(KEY_SPACE), 100)]

    first = store.list_parked(2)
    assert [r.id for r in first] == [IDS[1], IDS[4]]
    assert all(r.parked for r in first)
    assert first[0].extra == parked_extra("NOT_FOUND", f"queue gone for {IDS[1]}", NOW)
    assert [r.id for r in store.list_parked(2, after=first[-1].id)] == [IDS[6]]
    assert store.list_parked(2, after=IDS[6]) == []


def test_unpark_of_a_missing_reminder_says_so(harness: StoreHarness) -> None:
    assert not harness.store.unpark_reminder("ab" * 16, NOW)


def test_counts_of_an_empty_store_are_zero(harness: StoreHarness) -> None:
    assert harness.store.count_reminders() == (0, 0)
    assert harness.store.list_parked(10) == []
    assert all_keys(harness) == []


# Leases.

HALF = KEY_SPACE // 2
LATER = NOW + dt.timedelta(minutes=1)


def test_take_lease_gets_what_is_free(harness: StoreHarness) -> None:
    lease = harness.store.take_lease("s", [(0, HALF), (HALF, KEY_SPACE)], LATER, NOW)
    assert lease.section == "s"
    assert lease.ranges == ((0, KEY_SPACE),)
    assert lease.expires_at == LATER
    assert lease.lease_id


def test_second_taker_gets_only_the_rest(harness: StoreHarness) -> None:
    store = harness.store
    store.take_lease("s", [(100, 200)], LATER, NOW)
    second = store.take_lease("s", [(0, 1000)], LATER, NOW)
    assert second.ranges == ((0, 100), (200, 1000))
    third = store.take_lease("s", [(150, 250)], LATER, NOW)
    assert third.ranges == ()


def test_leases_of_other_sections_do_not_overlap_each_other(harness: StoreHarness) -> None:
    harness.store.take_lease("a", [(0, KEY_SPACE)], LATER, NOW)
    assert harness.store.take_lease("b", [(0, 10)], LATER, NOW).ranges == ((0, 10),)


def test_expired_leases_are_dropped(harness: StoreHarness) -> None:
    store = harness.store
    store.take_lease("s", [(0, 100)], NOW + dt.timedelta(seconds=10), NOW)
    after_expiry = NOW + dt.timedelta(seconds=10)
    lease = store.take_lease("s", [(0, 100)], after_expiry + dt.timedelta(minutes=1), after_expiry)
    assert lease.ranges == ((0, 100),)


def test_released_lease_frees_its_ranges(harness: StoreHarness) -> None:
    store = harness.store
    first = store.take_lease("s", [(0, 100)], LATER, NOW)
    store.release_lease("s", first.lease_id)
    store.release_lease("s", "no-such-lease")
    assert store.take_lease("s", [(50, 150)], LATER, NOW).ranges == ((50, 150),)


def test_concurrent_takers_never_overlap(harness: StoreHarness) -> None:
    results = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def take(i: int) -> None:
        barrier.wait()
        try:
            lease = harness.store.take_lease("s", [(i * 10, i * 10 + 50)], LATER, NOW)
        except BaseException as e:
            with lock:
                errors.append(e)
            return
        with lock:
            results.append(lease)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    covered: list[int] = []
    for lease in results:
        for lo, hi in lease.ranges:
            covered.extend(range(lo, hi))
    assert sorted(covered) == list(range(120))  # all of it, each key once


def test_a_scan_of_whole_reminders_reads_what_keys_then_ids_read(seeded: StoreHarness) -> None:
    reader = pages_of(seeded.store)
    if reader is None:
        pytest.skip(f"{seeded.store!r} has no scan_reminders (sweeps read keys, then IDs)")
    store = seeded.store
    store.park_reminder(IDS[3], parked_extra("NOT_FOUND", "queue gone", NOW))
    cases = [(0, KEY_SPACE, 100), (1, 2**127 + 5, 100), (2**64, KEY_SPACE, 3), (TOP, KEY_SPACE, 9),
             (2, 2**64, 10), (5, 5, 10), (0, KEY_SPACE, 0)]  # fmt: skip
    for low, high, limit in cases:
        lo, hi = key_bound(low), key_bound(high)
        keys = store.fetch_reminder_keys(lo, hi, limit)
        by_id = {r.id: r for r in store.fetch_reminders([k.id for k in keys])}
        got = reader.scan_reminders(lo, hi, limit)
        assert [r.id for r in got] == [k.id for k in keys], (low, high, limit)
        assert got == [by_id[k.id] for k in keys]
    assert IDS[3] not in {r.id for r in reader.scan_reminders(key_bound(0), key_bound(TOP), 100)}
