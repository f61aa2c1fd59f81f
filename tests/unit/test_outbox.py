"""The outbox happy path: submitting reminders after their transaction commits."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import grpc
import pytest

import tq
from tests.testpb import payloads_pb2 as pb
from tests.unit._fakes import FakeStore, RecordingSubmitter, in_txn, submit_error
from tq import _metrics, _outbox
from tq._outbox import Outcome
from tq._pb import reminder_pb2
from tq._submitter import time_left
from tq.txn import PendingTask
from tqtesting import FakeClock


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    # The quick in-call retries pause for real; the tests need no pause.
    monkeypatch.setattr(_outbox, "_PAUSES_S", (0.0, 0.0))


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


def committed(store: FakeStore, submitter: RecordingSubmitter, n: int = 1) -> list[PendingTask]:
    """n reminders written in a committed FakeTxn, to go to `submitter`."""
    d = tq.Dispatcher(
        cloud_project="p", cloud_region="r", default_target_host="h", submitter=submitter
    )
    d.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="q")
    )
    with in_txn(store) as txn:
        d.add_task(*(tq.Task(payload=pb.Greet(name=str(i))) for i in range(n)))
    return txn.commit()


def test_fresh_reminders_are_submitted_and_deleted(clock: FakeClock, store: FakeStore) -> None:
    sub = RecordingSubmitter()
    pending = committed(store, sub, n=3)
    _outbox.after_commit(store, pending)
    assert [s.reminder_id for s in sub.submitted] == [p.reminder.id for p in pending]
    assert sorted(store.deleted) == sorted(p.reminder.id for p in pending)
    assert store.rows == {}


async def test_fresh_reminders_are_submitted_and_deleted_async(
    clock: FakeClock, store: FakeStore
) -> None:
    sub = RecordingSubmitter()
    pending = committed(store, sub, n=3)
    await _outbox.after_commit_async(store, pending)
    assert sub.async_calls == 3
    assert store.rows == {}


def test_stale_reminders_are_left_to_the_sweeper(clock: FakeClock, store: FakeStore) -> None:
    sub = RecordingSubmitter()
    pending = committed(store, sub)
    clock.advance(dt.timedelta(minutes=1))  # exactly fresh_until: stale
    before = _metrics.value("tq_reminders_stale_at_commit")
    _outbox.after_commit(store, pending)
    assert sub.calls == 0
    assert set(store.rows) == {pending[0].reminder.id}
    assert _metrics.value("tq_reminders_stale_at_commit") == before + 1


async def test_stale_reminders_are_left_to_the_sweeper_async(
    clock: FakeClock, store: FakeStore
) -> None:
    sub = RecordingSubmitter()
    pending = committed(store, sub)
    clock.advance(dt.timedelta(minutes=2))
    await _outbox.after_commit_async(store, pending)
    assert sub.async_calls == 0
    assert len(store.rows) == 1


def test_transient_failure_is_retried_quickly_then_kept(clock: FakeClock, store: FakeStore) -> None:
    unavailable = submit_error(grpc.StatusCode.UNAVAILABLE)
    sub = RecordingSubmitter(unavailable, unavailable, unavailable)
    pending = committed(store, sub)
    _outbox.after_commit(store, pending)
    assert sub.calls == _outbox.ATTEMPTS
    assert sub.submitted == []
    (row,) = store.rows.values()
    assert not row.parked
    assert store.deleted == []


def test_transient_failure_then_success_is_submitted(clock: FakeClock, store: FakeStore) -> None:
    sub = RecordingSubmitter(submit_error(grpc.StatusCode.DEADLINE_EXCEEDED))
    pending = committed(store, sub)
    _outbox.after_commit(store, pending)
    assert sub.calls == 2
    assert store.rows == {}


def test_permanent_failure_parks_the_reminder(clock: FakeClock, store: FakeStore) -> None:
    sub = RecordingSubmitter(submit_error(grpc.StatusCode.NOT_FOUND))
    pending = committed(store, sub, n=2)
    before = _metrics.value("tq_reminders_parked", code="NOT_FOUND")
    _outbox.after_commit(store, pending)

    assert sub.calls == 2  # no quick retry of a permanent failure; the other one went
    first, second = (p.reminder.id for p in pending)
    assert store.rows[first].parked
    extra = reminder_pb2.ReminderExtra.FromString(store.rows[first].extra)
    assert extra.parked_code == "NOT_FOUND"
    assert "scripted NOT_FOUND" in extra.parked_reason
    assert extra.parked_at.ToDatetime(dt.UTC) == clock.now()
    assert second not in store.rows
    assert _metrics.value("tq_reminders_parked", code="NOT_FOUND") == before + 1


async def test_permanent_failure_parks_the_reminder_async(
    clock: FakeClock, store: FakeStore
) -> None:
    sub = RecordingSubmitter(submit_error(grpc.StatusCode.INVALID_ARGUMENT))
    pending = committed(store, sub)
    await _outbox.after_commit_async(store, pending)
    assert store.rows[pending[0].reminder.id].parked


def test_already_exists_counts_as_submitted(clock: FakeClock, store: FakeStore) -> None:
    sub = RecordingSubmitter(submit_error(grpc.StatusCode.ALREADY_EXISTS))
    pending = committed(store, sub)
    _outbox.after_commit(store, pending)
    assert sub.calls == 1
    assert store.rows == {}


def test_after_commit_never_raises(clock: FakeClock, store: FakeStore) -> None:
    # A submitter blowing up, a store failing to park and to delete.
    sub = RecordingSubmitter(
        RuntimeError("bug in a submitter"), submit_error(grpc.StatusCode.PERMISSION_DENIED)
    )
    pending = committed(store, sub, n=3)
    store.fail_park = True
    store.fail_delete = True
    _outbox.after_commit(store, pending)
    assert len(store.rows) == 3  # nothing lost: all left for the sweeper
    assert not any(r.parked for r in store.rows.values())


async def test_after_commit_async_never_raises(clock: FakeClock, store: FakeStore) -> None:
    sub = RecordingSubmitter(RuntimeError("bug"), submit_error(grpc.StatusCode.NOT_FOUND))
    pending = committed(store, sub, n=3)
    store.fail_park = True
    store.fail_delete = True
    await _outbox.after_commit_async(store, pending)
    assert len(store.rows) == 3


def test_submit_reminder_reports_the_outcome(clock: FakeClock, store: FakeStore) -> None:
    sub = RecordingSubmitter(
        None,
        submit_error(grpc.StatusCode.UNAVAILABLE),
        submit_error(grpc.StatusCode.UNAVAILABLE),
        submit_error(grpc.StatusCode.UNAVAILABLE),
        submit_error(grpc.StatusCode.FAILED_PRECONDITION),
    )
    a, b, c = committed(store, sub, n=3)
    assert _outbox.submit_reminder(store, a.submission, sub) is Outcome.SUBMITTED
    assert _outbox.submit_reminder(store, b.submission, sub) is Outcome.KEPT
    assert _outbox.submit_reminder(store, c.submission, sub) is Outcome.PARKED
    assert a.reminder.id not in store.rows
    assert not store.rows[b.reminder.id].parked
    assert store.rows[c.reminder.id].parked


async def test_submit_reminder_async_reports_the_outcome(
    clock: FakeClock, store: FakeStore
) -> None:
    sub = RecordingSubmitter(None, submit_error(grpc.StatusCode.NOT_FOUND))
    a, b = committed(store, sub, n=2)
    assert await _outbox.submit_reminder_async(store, a.submission, sub) is Outcome.SUBMITTED
    assert await _outbox.submit_reminder_async(store, b.submission, sub) is Outcome.PARKED


def test_submission_read_back_from_the_store_is_what_was_built(
    clock: FakeClock, store: FakeStore
) -> None:
    sub = RecordingSubmitter()
    (p,) = committed(store, sub)
    back = store.rows[p.reminder.id].submission()
    assert back.request == p.submission.request
    assert back.reminder_id == p.reminder.id
    assert back.payload is None  # decoded from the request when needed


class TimeLeft:
    """A submitter noting the submit deadline's time left at each call; each call takes 4 ms."""

    def __init__(self, now: list[float]) -> None:
        self.now = now
        self.left: list[float | None] = []

    def submit(self, submission: tq.Submission) -> None:
        self.left.append(time_left())
        self.now[0] += 0.004

    async def submit_async(self, submission: tq.Submission) -> None:
        self.submit(submission)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_submit_of_a_batch_gets_the_whole_budget_but_a_few_ms(
    clock: FakeClock, store: FakeStore, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    subs = [p.submission for p in committed(store, RecordingSubmitter(), n=20)]
    timed = TimeLeft(now)
    if mode == "sync":
        out = _outbox.submit_reminders(store, subs, timed)
    else:
        out = asyncio.run(_outbox.submit_reminders_async(store, subs, timed))
    assert len(out.done) == 20
    left = [x for x in timed.left if x is not None]
    assert len(left) == 20
    assert all(_outbox.BUDGET_S - _outbox.REARM_S <= x <= _outbox.BUDGET_S for x in left)
    assert time_left() is None  # none outside the batch
