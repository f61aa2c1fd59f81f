"""The outbox contract, for every store: a task added in a transaction is
submitted if and only if the transaction commits."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

import tq
from sweeper import InProcSweeper
from tests.conformance import support
from tests.conformance.harness import RowWriter, StoreHarness
from tests.conformance.support import (
    RecordingSubmitter,
    SettableClock,
    all_keys,
    make_dispatcher,
)
from tests.testpb import payloads_pb2 as pb
from tq._reminder import HAPPY_PATH_WINDOW

REPO = Path(__file__).resolve().parents[2]


class Boom(Exception):
    pass


def test_rolled_back_txn_submits_nothing_and_leaves_no_reminder(harness: StoreHarness) -> None:
    sub = RecordingSubmitter()
    disp = make_dispatcher(sub)

    def body(rows: RowWriter) -> None:
        rows.insert_row("k1")
        disp.add_task(tq.Task(payload=pb.Greet(name="never")))
        assert tq.txn.current_transaction() is not None
        raise Boom

    with pytest.raises(Boom):
        harness.run_in_transaction(body)
    assert sub.attempts == 0
    assert harness.store.count_reminders() == (0, 0)
    assert harness.row_keys() == set()


def test_committed_txn_submits_once_and_deletes_reminder(harness: StoreHarness) -> None:
    sub = RecordingSubmitter()
    disp = make_dispatcher(sub)

    def body(rows: RowWriter) -> None:
        rows.insert_row("k1")
        disp.add_task(tq.Task(payload=pb.Greet(name="hello"), title="greet"))
        disp.add_task(tq.Task(payload=pb.Count(n=7)))  # FOLLOWS_CONTEXT: joins the txn
        assert sub.attempts == 0  # nothing leaves before the commit

    harness.run_in_transaction(body)
    assert [s.payload for s in sub.submitted] == [pb.Greet(name="hello"), pb.Count(n=7)]
    names = [s.task_name for s in sub.submitted]
    assert all(s.task_name.endswith(f"/tasks/{s.reminder_id}") for s in sub.submitted)
    assert len(set(names)) == 2
    assert harness.store.count_reminders() == (0, 0)
    assert harness.row_keys() == {"k1"}


def test_transient_submit_failure_keeps_reminder_for_sweeper(harness: StoreHarness) -> None:
    sub = RecordingSubmitter()
    sub.fail_with = grpc.StatusCode.UNAVAILABLE
    disp = make_dispatcher(sub)
    before = dt.datetime.now(dt.UTC)

    harness.run_in_transaction(lambda rows: disp.add_task(tq.Task(payload=pb.Greet(name="x"))))

    assert sub.attempts >= 1
    assert sub.submitted == []
    keys = harness.store.fetch_reminder_keys("", tq.txn.key_bound(tq.txn.KEY_SPACE), 10)
    assert len(keys) == 1
    assert before < keys[0].fresh_until <= dt.datetime.now(dt.UTC) + HAPPY_PATH_WINDOW
    assert harness.store.count_reminders() == (1, 0)
    [rem] = harness.store.fetch_reminders([keys[0].id])
    assert not rem.parked
    assert rem.submission().task_class == support.GREET


def test_permanent_submit_failure_parks_reminder_for_operator(harness: StoreHarness) -> None:
    sub = RecordingSubmitter()
    sub.fail_with = grpc.StatusCode.NOT_FOUND
    disp = make_dispatcher(sub)

    harness.run_in_transaction(lambda rows: disp.add_task(tq.Task(payload=pb.Greet(name="x"))))

    assert sub.submitted == []
    assert harness.store.count_reminders() == (0, 1)
    assert all_keys(harness) == []  # the sweeper skips parked reminders
    [parked] = harness.store.list_parked(10)
    assert parked.parked
    assert parked.submission().task_class == support.GREET

    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    assert harness.store.unpark_reminder(parked.id, later)
    assert harness.store.count_reminders() == (1, 0)
    assert harness.store.list_parked(10) == []
    [key] = harness.store.fetch_reminder_keys("", tq.txn.key_bound(tq.txn.KEY_SPACE), 10)
    assert key.id == parked.id
    assert abs(key.fresh_until - later) < dt.timedelta(milliseconds=1)
    [replayed] = harness.store.fetch_reminders([parked.id])
    assert not replayed.parked
    assert replayed.payload == parked.payload


def test_failing_database_write_submits_nothing(harness: StoreHarness) -> None:
    sub = RecordingSubmitter()
    disp = make_dispatcher(sub)
    harness.run_in_transaction(lambda rows: rows.insert_row("taken"))

    def body(rows: RowWriter) -> None:
        rows.insert_row("fresh")
        disp.add_task(tq.Task(payload=pb.Greet(name="x")))
        rows.insert_row("taken")  # a primary key violation, now or at commit

    with pytest.raises(harness.duplicate_key):
        harness.run_in_transaction(body)
    assert sub.attempts == 0
    assert harness.store.count_reminders() == (0, 0)
    assert harness.row_keys() == {"taken"}


def test_payload_over_store_max_is_refused_before_anything_is_written(
    harness: StoreHarness,
) -> None:
    sub = RecordingSubmitter()
    disp = make_dispatcher(sub)
    big = pb.Blob(data=b"x" * (harness.store.max_payload_size + 1))

    def body(rows: RowWriter) -> None:
        disp.add_task(tq.Task(payload=pb.Greet(name="small")), tq.Task(payload=big))

    with pytest.raises(tq.PayloadTooLarge):
        harness.run_in_transaction(body)
    assert sub.attempts == 0
    assert harness.store.count_reminders() == (0, 0)


def test_concurrent_transactions_submit_each_committed_task_once(harness: StoreHarness) -> None:
    sub = RecordingSubmitter()
    disp = make_dispatcher(sub)
    threads_n, per_thread = 8, 6
    committed: set[str] = set()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for i in range(per_thread):
            key = f"t{t}-{i}"

            def body(rows: RowWriter, key: str = key, i: int = i) -> None:
                rows.insert_row(key)
                disp.add_task(tq.Task(payload=pb.Greet(name=key)))
                if i % 2:
                    raise Boom

            try:
                harness.run_in_transaction(body)
            except Boom:
                continue
            except BaseException as e:
                with lock:
                    errors.append(e)
                return
            with lock:
                committed.add(key)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()

    assert errors == []
    assert len(committed) == threads_n * per_thread // 2
    names = [s.payload.name for s in sub.submitted]  # type: ignore[union-attr]
    assert sorted(names) == sorted(committed)  # each once, rolled-back ones never
    assert len({s.reminder_id for s in sub.submitted}) == len(names)
    assert harness.store.count_reminders() == (0, 0)
    assert harness.row_keys() == committed


def test_process_dying_after_commit_leaves_stale_reminder_for_sweeper(
    harness: StoreHarness,
) -> None:
    spec = harness.child_spec()
    reminder_id = "5a" * 16
    env = {**os.environ, **spec.env, "PYTHONPATH": str(REPO)}
    before = dt.datetime.now(dt.UTC)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.conformance.child_commit", spec.factory, spec.arg,
         reminder_id],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # The child exits from inside its submitter: after the commit, before any delete.
    assert proc.returncode == 17, proc.stderr[-3000:]

    assert harness.row_keys() == {"child-row"}
    [key] = harness.store.fetch_reminder_keys("", tq.txn.key_bound(tq.txn.KEY_SPACE), 10)
    assert key.id == reminder_id
    assert before < key.fresh_until <= dt.datetime.now(dt.UTC) + HAPPY_PATH_WINDOW
    [rem] = harness.store.fetch_reminders([reminder_id])
    assert not rem.parked
    submission = rem.submission()
    assert submission.task_class == support.GREET
    assert submission.task_name.endswith(f"/tasks/{reminder_id}")


class DeletingSubmitter(RecordingSubmitter):
    """Records submissions and deletions; the destination holds no task to delete."""

    def __init__(self) -> None:
        super().__init__()
        self.deletes: list[str] = []

    def delete_task(self, name: str) -> bool:
        self.deletes.append(name)
        return False

    async def delete_task_async(self, name: str) -> bool:
        return self.delete_task(name)


def test_deleting_a_task_whose_reminder_is_pending_keeps_the_sweeper_from_creating_it(
    harness: StoreHarness,
) -> None:
    doomed, kept, parked = "d0" * 16, "e1" * 16, "f2" * 16
    support.seed(harness, [doomed, kept, parked])  # committed; the happy path never ran
    harness.store.park_reminder(parked, b"")
    sub = DeletingSubmitter()
    disp = make_dispatcher(sub)
    disp.sweeper = InProcSweeper(stores=[harness.store])
    queue = "projects/conformance/locations/us-central1/queues/q"

    gone = disp.delete_task(f"q/tasks/{doomed}")
    assert gone == tq.TaskDeletion(f"{queue}/tasks/{doomed}", True)
    assert sub.deletes == [f"{queue}/tasks/{doomed}"]  # the destination was asked too
    assert asyncio.run(disp.delete_task_async(f"q/tasks/{parked}")).deleted  # parked: replay never
    assert all_keys(harness) == [kept]
    assert harness.store.count_reminders() == (1, 0)
    # Another queue's task of the same ID is another task: its reminder stays.
    assert not disp.delete_task(f"other/tasks/{kept}").deleted
    assert all_keys(harness) == [kept]

    clock = SettableClock()
    clock.offset = dt.timedelta(minutes=2)  # every reminder is stale
    with tq.clock.use_clock(clock):
        disp.sweep()
    assert sub.reminder_ids() == [kept]
    assert harness.store.count_reminders() == (0, 0)
    assert disp.delete_task(f"q/tasks/{doomed}") == tq.TaskDeletion(
        f"{queue}/tasks/{doomed}", False
    )
