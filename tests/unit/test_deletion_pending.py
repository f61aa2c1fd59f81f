"""delete_task of a task whose reminder is committed but not yet submitted: the happy
path waiting in a background queue drops it (the sweeper's side: tests/conformance)."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

import tq
import tq.txn.sql
from tests.testpb import payloads_pb2 as pb
from tests.unit._fakes import RecordingSubmitter
from tq import _metrics


class GatedDeleter(RecordingSubmitter):
    """Records submissions (each waits for the gate) and deletions (no task to delete)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.deletes: list[str] = []

    def submit(self, submission: tq.Submission) -> None:
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        super().submit(submission)

    def delete_task(self, name: str) -> bool:
        self.deletes.append(name)
        return False

    async def delete_task_async(self, name: str) -> bool:
        return self.delete_task(name)


@pytest.fixture
def engine(tmp_path: pathlib.Path) -> Iterator[sa.Engine]:
    e = sa.create_engine(f"sqlite:///{tmp_path}/outbox.db")
    yield e
    e.dispose()


@pytest.fixture
def store(engine: sa.Engine) -> Iterator[tq.txn.sql.SQLStore]:
    s = tq.txn.sql.SQLStore(engine, name="deletion-pending")  # registered: delete_task finds it
    s.create_schema()
    yield s
    s.close()


def test_a_task_deleted_while_its_background_submit_waits_is_never_submitted(
    engine: sa.Engine, store: tq.txn.sql.SQLStore
) -> None:
    sub = GatedDeleter()
    d = tq.Dispatcher(cloud_project="p", cloud_region="r", default_target_host="h", submitter=sub)
    d.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="q")
    )
    cancelled = _metrics.value("tq_reminders_cancelled")
    with tq.BackgroundSubmits(concurrency=1) as bg:
        with tq.txn.sql.transaction(engine, store=store):
            d.add_task(tq.Task(payload=pb.Greet(name="first")))
        assert sub.entered.wait(60)  # the only thread is busy with "first"
        with tq.txn.sql.transaction(engine, store=store):
            (doomed,) = d.add_task(tq.Task(payload=pb.Greet(name="doomed")))
        assert doomed.reminder_id is not None
        assert [r.id for r in store.fetch_reminders([doomed.reminder_id])] == [
            doomed.reminder_id
        ]  # committed, queued behind "first"

        assert d.delete_task(doomed) == tq.TaskDeletion(doomed.name or "", True)
        assert sub.deletes == [doomed.name]
        sub.gate.set()
        assert bg.drain(30)
    assert [s.payload for s in sub.submitted] == [pb.Greet(name="first")]
    assert store.count_reminders() == (0, 0)
    assert _metrics.value("tq_reminders_cancelled") == cancelled + 1
