"""Submitting a sweep's batches: outcomes per batch, slices inline or in threads."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading

import grpc
import pytest

import tq
from sweeper import InProcSweeper
from tests import _sweeping as sw
from tq import _metrics, _outbox
from tqtesting import FakeClock, MemoryStore

SPACE = 1 << 12


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_outbox, "_PAUSES_S", (0.0, 0.0))


def backlog(store: MemoryStore, clock: FakeClock, n: int) -> list[tq.Submission]:
    """`n` stale reminders in `store`; returns their submissions."""
    disp = sw.dispatcher(submitter=sw.Cloud(), ids=sw.unique_ids(n, SPACE, 3))
    rems = sw.reminders_for(disp, store, [f"g{i}" for i in range(n)], deadline=clock.now())
    store.put_reminders(rems)
    return [r.submission() for r in rems]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_batch_reports_each_outcome_and_leaves_the_deletes_to_the_caller(
    clock: FakeClock, mode: str
) -> None:
    store = MemoryStore()
    subs = backlog(store, clock, 6)
    transient, permanent = subs[1].reminder_id, subs[4].reminder_id

    def fail(sub: tq.Submission) -> grpc.StatusCode | None:
        if sub.reminder_id == transient:
            return grpc.StatusCode.UNAVAILABLE
        if sub.reminder_id == permanent:
            return grpc.StatusCode.FAILED_PRECONDITION
        return None

    cloud = sw.Cloud(fail)
    before = _metrics.value("tq_submits", path="sweep", code="OK")
    if mode == "sync":
        out = _outbox.submit_reminders(store, subs, cloud)
    else:
        out = asyncio.run(_outbox.submit_reminders_async(store, subs, cloud))
    assert out.done == [s.reminder_id for s in subs if s.reminder_id not in (transient, permanent)]
    assert (out.kept, out.parked) == (1, 1)
    assert store.count_reminders() == (5, 1)  # nothing deleted; one parked
    assert [r.id for r in store.list_parked(10)] == [permanent]
    assert _metrics.value("tq_submits", path="sweep", code="OK") == before + 4


def test_outcomes_are_noted_as_they_come(clock: FakeClock) -> None:
    store = MemoryStore()
    subs = backlog(store, clock, 3)
    out = _outbox.Submitted()

    def third_breaks(sub: tq.Submission) -> grpc.StatusCode | None:
        if sub is subs[2]:
            raise KeyboardInterrupt  # escapes submit_reminders, unlike any failed submit
        return None

    with pytest.raises(KeyboardInterrupt):
        _outbox.submit_reminders(store, subs, sw.Cloud(third_breaks), out=out)
    assert out.done == [subs[0].reminder_id, subs[1].reminder_id]


def test_quick_submits_stay_in_the_batch_thread(clock: FakeClock) -> None:
    store = MemoryStore()
    backlog(store, clock, 40)
    threads: set[str] = set()

    def note(sub: tq.Submission) -> None:
        threads.add(threading.current_thread().name)

    cloud = sw.Cloud(note)
    sweeper = InProcSweeper(stores=[store], key_space=SPACE, sweep_shards=2, submit_concurrency=8)
    sw.dispatcher(submitter=cloud, sweeper=sweeper).sweep()
    assert len(cloud.created) == 40
    assert store.count_reminders() == (0, 0)
    assert threads
    assert all(t.startswith("tq-sweep-scan") for t in threads)


def test_slow_submits_are_spread_over_the_submit_threads(clock: FakeClock) -> None:
    store = MemoryStore()
    backlog(store, clock, 16)
    threads: set[str] = set()

    def slow(sub: tq.Submission) -> None:
        with lock:
            threads.add(threading.current_thread().name)
            clock.advance(dt.timedelta(milliseconds=50))  # a network call, as the clock sees it

    lock = threading.Lock()
    cloud = sw.Cloud(slow)
    sweeper = InProcSweeper(stores=[store], key_space=SPACE, sweep_shards=1, submit_concurrency=4)
    sw.dispatcher(submitter=cloud, sweeper=sweeper).sweep()
    assert len(cloud.created) == 16
    assert store.count_reminders() == (0, 0)
    # The first slice in the batch's thread, the other three in the pool.
    assert any(t.startswith("tq-sweep-scan") for t in threads)
    assert any(t.startswith("tq-sweep-submit") for t in threads)


def test_submits_turning_slow_midway_send_the_rest_of_the_batch_to_the_pool(
    clock: FakeClock,
) -> None:
    store = MemoryStore()
    backlog(store, clock, 64)
    quick_left = [12]  # the first slices of 4 and then 8 are quick, then the network slows
    in_pool: list[str] = []

    def turning_slow(sub: tq.Submission) -> None:
        with lock:
            if quick_left[0] > 0:
                quick_left[0] -= 1
                return
            if threading.current_thread().name.startswith("tq-sweep-submit"):
                in_pool.append(sub.reminder_id or "")
            clock.advance(dt.timedelta(milliseconds=50))

    lock = threading.Lock()
    cloud = sw.Cloud(turning_slow)
    sweeper = InProcSweeper(
        stores=[store], key_space=SPACE, sweep_shards=1, submit_concurrency=16,
        submit_batch_size=64,
    )  # fmt: skip
    sw.dispatcher(submitter=cloud, sweeper=sweeper).sweep()
    assert len(cloud.created) == 64
    assert store.count_reminders() == (0, 0)
    # Slices of 4: one, then two in one go (quick), then four in one go (slow from
    # its first submit on); the other nine went to the pool.
    assert len(in_pool) == 36


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_first_attempt_that_fails_goes_on_to_the_retries(clock: FakeClock, mode: str) -> None:
    store = MemoryStore()
    subs = backlog(store, clock, 5)
    flaky, crashing, down = subs[0], subs[2], subs[4]
    seen: set[str | None] = set()

    def fail(sub: tq.Submission) -> grpc.StatusCode | None:
        if sub is down:
            return grpc.StatusCode.UNAVAILABLE  # every attempt
        if sub is crashing:
            raise RuntimeError("not a SubmitError")
        if sub is flaky and sub.reminder_id not in seen:
            seen.add(sub.reminder_id)
            return grpc.StatusCode.UNAVAILABLE  # the first attempt only
        return None

    cloud = sw.Cloud(fail)
    cloud.created[subs[3].task_name] = 1  # exists already: ALREADY_EXISTS, done
    before = {
        code: _metrics.value("tq_submits", path="sweep", code=code)
        for code in ("OK", "ALREADY_EXISTS", "UNKNOWN", "UNAVAILABLE")
    }
    if mode == "sync":
        out = _outbox.submit_reminders(store, subs, cloud)
    else:
        out = asyncio.run(_outbox.submit_reminders_async(store, subs, cloud))
    assert out.done == [subs[0].reminder_id, subs[1].reminder_id, subs[3].reminder_id]
    assert (out.kept, out.parked) == (2, 0)  # the crash (not retried) and the one down
    assert cloud.calls[flaky.task_name] == 2
    assert cloud.calls[down.task_name] == _outbox.ATTEMPTS  # the first attempt counts
    assert cloud.calls[crashing.task_name] == 0  # raised before it was counted
    after = {
        code: _metrics.value("tq_submits", path="sweep", code=code) - n
        for code, n in before.items()
    }
    assert after == {"OK": 2, "ALREADY_EXISTS": 1, "UNKNOWN": 1, "UNAVAILABLE": 1}
