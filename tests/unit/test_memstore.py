"""tqtesting.MemoryStore: an in-memory reminder store with ambient transactions."""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

import tq
from tests import _sweeping as sw
from tests.testpb import payloads_pb2 as pb
from tq._reminder import Reminder, parked_extra
from tq.txn import KEY_SPACE, key_bound
from tqtesting import FakeClock, MemoryStore


def greet(name: str) -> tq.Task:
    return tq.Task(payload=pb.Greet(name=name))


def test_committed_transaction_submits_its_tasks_and_leaves_no_reminder(clock: FakeClock) -> None:
    cloud = sw.Cloud()
    disp = sw.dispatcher(submitter=cloud)
    store = MemoryStore()
    with store.transaction() as txn:
        disp.add_task(greet("a"), greet("b"))
        assert tq.txn.current_transaction() is txn
        assert cloud.created == {}  # nothing before the commit
    assert tq.txn.current_transaction() is None
    assert len(cloud.created) == 2
    assert store.count_reminders() == (0, 0)


def test_rolled_back_transaction_submits_nothing(clock: FakeClock) -> None:
    cloud = sw.Cloud()
    disp = sw.dispatcher(submitter=cloud)
    store = MemoryStore()

    def order() -> None:
        with store.transaction():
            disp.add_task(greet("a"))
            raise KeyError("business rule")

    with pytest.raises(KeyError):
        order()
    assert cloud.calls == {}
    assert store.reminders() == []


async def test_async_transaction_commits_and_runs_the_happy_path(clock: FakeClock) -> None:
    cloud = sw.Cloud()
    disp = sw.dispatcher(submitter=cloud)
    store = MemoryStore()
    async with store.transaction_async():
        await disp.add_task_async(greet("a"))
    assert len(cloud.created) == 1

    async def order() -> None:
        async with store.transaction_async():
            await disp.add_task_async(greet("b"))
            raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        await order()
    assert len(cloud.created) == 1
    assert store.reminders() == []


def test_a_failed_submit_after_commit_leaves_the_reminder_for_the_sweeper(
    clock: FakeClock,
) -> None:
    disp = sw.dispatcher(submitter=sw.Cloud(lambda s: grpc.StatusCode.PERMISSION_DENIED))
    store = MemoryStore()
    with store.transaction():
        disp.add_task(greet("a"))
    assert store.count_reminders() == (0, 1)  # permanent: parked, not lost


def test_nested_transactions_are_refused(clock: FakeClock) -> None:
    store = MemoryStore()
    with store.transaction(), pytest.raises(tq.TransactionError, match="nesting"):  # noqa: SIM117
        with store.transaction():
            pass


def test_the_deadline_caps_fresh_until(clock: FakeClock) -> None:
    disp = sw.dispatcher(submitter=sw.Cloud())
    store = MemoryStore()
    deadline = clock.now() + dt.timedelta(seconds=10)
    with store.transaction(deadline=deadline) as txn:
        disp.add_task(greet("a"))
        assert txn.pending[0].reminder.fresh_until == deadline


def test_payloads_over_the_store_limit_are_refused_at_add_task(clock: FakeClock) -> None:
    disp = sw.dispatcher(submitter=sw.Cloud())
    store = MemoryStore(max_payload_size=100)
    with pytest.raises(tq.PayloadTooLarge, match="memory"), store.transaction():
        disp.add_task(greet("x" * 200))
    assert store.reminders() == []


def rem(key: int, fresh: dt.datetime, extra: bytes = b"") -> Reminder:
    return Reminder(f"{key:032x}", fresh, b"p", extra)


def test_keys_come_in_order_within_bounds_and_limit_without_parked(clock: FakeClock) -> None:
    now = clock.now()
    store = MemoryStore()
    parked = parked_extra("NOT_FOUND", "x", now)
    store.put_reminders([rem(k, now) for k in (9, 3, 7, 1, 5)] + [rem(4, now, parked)])
    store.put_reminders([rem(KEY_SPACE - 1, now)])
    keys = store.fetch_reminder_keys(key_bound(2), key_bound(9), 10)
    assert [int(k.id, 16) for k in keys] == [3, 5, 7]
    assert len(store.fetch_reminder_keys(key_bound(0), key_bound(KEY_SPACE), 3)) == 3
    top = store.fetch_reminder_keys(key_bound(KEY_SPACE - 1), key_bound(KEY_SPACE), 3)
    assert [k.id for k in top] == ["f" * 32]
    store.delete_reminders([f"{5:032x}", "missing"])
    keys = store.fetch_reminder_keys(key_bound(0), key_bound(10), 10)
    assert [int(k.id, 16) for k in keys] == [1, 3, 7, 9]
    assert store.count_reminders() == (5, 1)


def test_parked_reminders_can_be_listed_and_unparked(clock: FakeClock) -> None:
    now = clock.now()
    store = MemoryStore()
    store.put_reminders([rem(k, now) for k in range(5)])
    for k in (1, 3):
        store.park_reminder(f"{k:032x}", parked_extra("NOT_FOUND", "no queue", now))
    assert [r.id for r in store.list_parked(10)] == [f"{1:032x}", f"{3:032x}"]
    assert [r.id for r in store.list_parked(10, after=f"{1:032x}")] == [f"{3:032x}"]
    later = now + dt.timedelta(minutes=1)
    assert store.unpark_reminder(f"{1:032x}", later)
    assert not store.unpark_reminder("nope", later)
    assert store.count_reminders() == (4, 1)
    back = store.fetch_reminders([f"{1:032x}"])[0]
    assert (back.parked, back.fresh_until) == (False, later)


def test_leases_split_ranges_and_lapse(clock: FakeClock) -> None:
    store = MemoryStore()
    now = clock.now()
    soon = now + dt.timedelta(minutes=1)
    first = store.take_lease("s", [(0, 100)], soon, now)
    assert first.ranges == ((0, 100),)
    second = store.take_lease("s", [(50, 150), (200, 300)], soon, now)
    assert second.ranges == ((100, 150), (200, 300))
    assert store.take_lease("s", [(0, 60)], soon, now).ranges == ()
    assert store.take_lease("other", [(0, 60)], soon, now).ranges == ((0, 60),)
    store.release_lease("s", first.lease_id)
    assert store.take_lease("s", [(0, 60)], soon, now).ranges == ((0, 60),)
    assert store.take_lease("s", [(0, 300)], soon, soon).ranges == ((0, 300),)  # all lapsed
