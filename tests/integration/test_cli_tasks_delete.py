"""`tq tasks delete` through Dispatcher.delete_task: by name or by class and
deduplication key, on the database queue (SQLite, PostgreSQL) and on Cloud
Tasks (our own gRPC server: the emulator has no DeleteTask)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

import tq
import tq.txn
import tq.txn.sql
from tests._cli import (
    db_url_fixture,  # noqa: F401
    engine_fixture,  # noqa: F401
    run,
)
from tests._fake_cloudtasks import FakeCloudTasks, fake_cloud_tasks
from tests.testpb import payloads_pb2 as pb
from tests.unit._fakes import RecordingSubmitter, submit_error
from tq.cli._databases import sql_engine
from tq.cli._errors import FAILED, USAGE
from tq.dbqueue import Admin, DbQueueSubmitter, State


def _dispatcher(submitter: tq.Submitter, namespace: str = "") -> tq.Dispatcher:
    d = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host="app.example.com",
        submitter=submitter, namespace=namespace,
    )  # fmt: skip
    d.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="emails")
    )
    return d


def test_tasks_delete_by_name_and_by_key_on_the_database_queue(
    engine: sa.Engine, db_url: str
) -> None:
    d = _dispatcher(DbQueueSubmitter(engine), namespace="shop")
    by_name, by_key, other = d.add_task(
        tq.Task(payload=pb.Greet(name="a")),
        tq.Task(payload=pb.Greet(name="b"), deduplication_key="order-1"),
        tq.Task(payload=pb.Greet(name="c"), deduplication_key="order-2"),
    )
    result = run("tasks", "delete", "emails", by_name.task_id or "", "--db", db_url)
    assert "deleted 1 tasks" in result.stderr
    run("tasks", "delete", "emails", "--task-class", "greet", "--dedup-key", "order-1",
        "--namespace", "shop", "--db", db_url)  # fmt: skip
    admin = Admin(engine)
    states = {
        a.task_id: admin.get_task("emails", a.task_id or "") for a in (by_name, by_key, other)
    }
    assert {k: v.state for k, v in states.items() if v} == {
        by_name.task_id: State.DELETED,
        by_key.task_id: State.DELETED,
        other.task_id: State.PENDING,
    }


def test_tasks_delete_says_which_were_not_found(engine: sa.Engine, db_url: str) -> None:
    d = _dispatcher(DbQueueSubmitter(engine))
    (added,) = d.add_task(tq.Task(payload=pb.Greet(name="a")))
    result = run("tasks", "delete", "emails", added.task_id or "", "never-added", "--db", db_url,
                 code=FAILED)  # fmt: skip
    assert "deleted 1 tasks" in result.stderr
    assert result.stderr.endswith("tq: error: no waiting task never-added in queue 'emails'\n")
    # The key under another namespace names another task.
    d.add_task(tq.Task(payload=pb.Greet(name="b"), deduplication_key="k"))
    run("tasks", "delete", "emails", "--task-class", "greet", "--dedup-key", "k",
        "--namespace", "other", "--db", db_url, code=FAILED)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["emails", "has space"], "malformed"),
        (["emails", "x" * 501], "malformed"),
        (["bad.queue", "x"], "malformed"),
        (["emails"], "give task NAMES"),
        (["emails", "--task-class", "greet"], "go together"),
        (["emails", "--dedup-key", "k"], "go together"),
    ],
)
def test_tasks_delete_refuses_malformed_input_with_exit_2(
    engine: sa.Engine, db_url: str, args: list[str], says: str
) -> None:
    d = _dispatcher(DbQueueSubmitter(engine))
    d.add_task(tq.Task(payload=pb.Greet(name="a")))
    result = run("tasks", "delete", *args, "--db", db_url, code=USAGE)
    assert result.stderr.startswith("tq: error: ")
    assert says in result.stderr
    assert Admin(engine).count_tasks(state=State.PENDING) == 1


@pytest.fixture
def fake() -> Iterator[FakeCloudTasks]:
    with fake_cloud_tasks() as f:
        yield f


def test_tasks_delete_on_cloud_tasks(fake: FakeCloudTasks) -> None:
    ct = ["--backend", "cloudtasks", "--cloud-project", "proj", "--cloud-region", "us-central1",
          "--cloudtasks-endpoint", fake.endpoint]  # fmt: skip
    with tq.CloudTasksSubmitter(endpoint=fake.endpoint) as s:
        (added,) = _dispatcher(s).add_task(
            tq.Task(payload=pb.Greet(name="a"), deduplication_key="k")
        )
    run("tasks", "delete", "emails", "--task-class", "greet", "--dedup-key", "k", *ct)
    digest = hashlib.sha256(b"\0greet\0k").hexdigest()
    assert fake.deletes == [f"projects/proj/locations/us-central1/queues/emails/tasks/{digest}"]
    assert added.name == fake.deletes[0]
    result = run("tasks", "delete", "emails", digest, *ct, code=FAILED)  # NOT_FOUND
    assert digest in result.stderr
    run("tasks", "delete", "emails", "a/b", *ct, code=USAGE)
    assert len(fake.deletes) == 2  # the malformed name never reached the service


def test_tasks_delete_on_cloud_tasks_takes_back_a_pending_reminder(
    fake: FakeCloudTasks, tmp_path: Path
) -> None:
    """Committed, its submit failed: the reminder waits for a sweep, which must not create it."""
    db = str(tmp_path / "outbox.db")
    run("db", "init", "--db", db)
    engine = sql_engine(db)
    store = tq.txn.sql.SQLStore(engine, register=False)
    d = tq.Dispatcher(
        cloud_project="proj", cloud_region="us-central1", default_target_host="app.example.com",
        submitter=RecordingSubmitter(*[submit_error(grpc.StatusCode.UNAVAILABLE)] * 50),
    )  # fmt: skip
    d.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="emails")
    )
    with tq.txn.sql.transaction(engine, store=store) as conn:
        conn.execute(sa.text("SELECT 1"))
        (added,) = d.add_task(tq.Task(payload=pb.Greet(name="a")))
    assert store.count_reminders() == (1, 0)  # the happy path failed: left to the sweeper
    ct = ["--backend", "cloudtasks", "--cloud-project", "proj", "--cloud-region", "us-central1",
          "--cloudtasks-endpoint", fake.endpoint]  # fmt: skip

    registered = tq.txn.stores()  # whatever earlier tests of the session left
    result = run("tasks", "delete", "emails", added.task_id or "", *ct, "--db", db)

    assert "deleted 1 tasks" in result.stderr  # its reminder was; Cloud Tasks had no such task
    assert fake.deletes == [added.name]
    assert store.count_reminders() == (0, 0)  # no sweep can create it now
    assert tq.txn.stores() == registered  # registered only while deleting
    store.close()
    engine.dispose()
