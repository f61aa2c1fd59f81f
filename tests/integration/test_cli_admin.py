"""The tq command's admin subcommands on real databases: SQLite, PostgreSQL, Spanner, Cloud Tasks.

Commands run in-process through click's CliRunner with the exit codes a
script sees; the data they act on is made through tq's own code paths.
"""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import tq
import tq.txn.sql
import tqtesting
from tests._cli import (
    db_url_fixture,  # noqa: F401
    engine_fixture,  # noqa: F401
    rows,
    run,
)
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue
from tq.cli._databases import sql_engine
from tq.cli._errors import CONFIG, FAILED
from tq.cli._main import cli
from tq.dbqueue import DbQueueSubmitter


def _dispatcher(submitter: tq.Submitter, kind: tq.Kind) -> tq.Dispatcher:
    d = tq.Dispatcher(
        cloud_project="p", cloud_region="r", default_target_host="app.example.com",
        submitter=submitter,
    )  # fmt: skip
    d.register_task_class(tq.TaskClass(id="greet", prototype=pb.Greet, kind=kind, queue="emails"))
    return d


def _queue_tasks(engine: sa.Engine, n: int) -> None:
    d = _dispatcher(DbQueueSubmitter(engine), tq.Kind.NON_TRANSACTIONAL)
    for i in range(n):
        d.add_task(tq.Task(payload=pb.Greet(name=f"g{i}")))


class _FailingSubmitter:
    """Fails every submit with `code`, so the happy path keeps or parks the reminders."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    def submit(self, sub: tq.Submission) -> None:
        raise tq.SubmitError(self.code, "refused for the test")

    async def submit_async(self, sub: tq.Submission) -> None:
        self.submit(sub)


def _add_reminders(engine: sa.Engine, n: int, code: grpc.StatusCode) -> None:
    store = tq.txn.sql.SQLStore(engine, register=False)
    d = _dispatcher(_FailingSubmitter(code), tq.Kind.TRANSACTIONAL)
    with tq.txn.sql.transaction(engine, store=store):
        for i in range(n):
            d.add_task(tq.Task(payload=pb.Greet(name=f"r{i}")))


# tq db


def test_db_init_creates_outbox_and_queue_tables_and_is_idempotent(db_url: str) -> None:
    first = rows("db", "init", "--db", db_url)
    again = rows("db", "migrate", "--db", db_url)

    assert [(r["part"], r["before"], r["after"]) for r in first] == [
        ("outbox", None, 2), ("dbqueue", None, dbqueue.SCHEMA_VERSION),
    ]  # fmt: skip
    assert [(r["part"], r["before"], r["after"]) for r in again] == [
        ("outbox", 2, 2), ("dbqueue", dbqueue.SCHEMA_VERSION, dbqueue.SCHEMA_VERSION),
    ]  # fmt: skip
    e = sql_engine(db_url)
    try:
        tables = set(sa.inspect(e).get_table_names())
        # A version-1 database queue (before cron schedules) migrates to the latest.
        with e.begin() as conn:
            conn.execute(sa.text("DROP TABLE tq_cron"))
            conn.execute(sa.text("UPDATE tq_dbqueue_meta SET value = '1'"))
    finally:
        e.dispose()
    assert {"tq_reminders", "tq_leases", "tq_tasks", "tq_queues", "tq_cron"} <= tables
    migrated = rows("db", "migrate", "--db", db_url, "--only", "dbqueue")
    assert [(r["before"], r["after"], r["latest"]) for r in migrated] == [
        (1, dbqueue.SCHEMA_VERSION, dbqueue.SCHEMA_VERSION)
    ]


def test_db_init_only_one_part(tmp_path: Path) -> None:
    url = str(tmp_path / "only.db")
    run("db", "init", "--db", url, "--only", "dbqueue")
    e = sql_engine(url)
    try:
        tables = set(sa.inspect(e).get_table_names())
    finally:
        e.dispose()
    assert "tq_tasks" in tables
    assert "tq_reminders" not in tables


def test_db_without_database_is_a_configuration_error() -> None:
    result = run("db", "init", code=CONFIG)
    assert "tq: error: no database" in result.stderr


@pytest.mark.spanner
def test_db_init_creates_spanner_outbox_tables(spanner_emulator: Any) -> None:
    name = f"cli-{secrets.token_hex(3)}"
    database = spanner_emulator.instance.database(name)
    database.create().result(30)
    try:
        path = f"projects/{spanner_emulator.project}/instances/{spanner_emulator.instance.instance_id}/databases/{name}"  # noqa: E501
        created = rows("db", "init", "--spanner", path)
        again = rows("db", "init", "--spanner", path)
        assert [(r["before"], r["after"]) for r in created] == [(None, 2)]
        assert [(r["before"], r["after"]) for r in again] == [(2, 2)]
        assert {t.table_id for t in database.list_tables()} >= {"TQReminders", "TQLeases", "TQDone"}
        # A version-1 database (before done markers) migrates to 2.
        database.update_ddl(["DROP TABLE TQDone"]).result(60)
        migrated = rows("db", "migrate", "--spanner", path)
        assert [(r["before"], r["after"]) for r in migrated] == [(1, 2)]
        assert "TQDone" in {t.table_id for t in database.list_tables()}
        run("db", "init", "--spanner", path, "--only", "dbqueue", code=CONFIG)
    finally:
        database.drop()


# tq queues, tq tasks (database queue)


def test_queues_list_stats_pause_resume(engine: sa.Engine, db_url: str) -> None:
    _queue_tasks(engine, 3)

    assert [(q["queue"], q["state"]) for q in rows("queues", "list", "--db", db_url)] == [
        ("emails", "RUNNING")
    ]
    (stats,) = rows("queues", "stats", "emails", "--db", db_url)
    assert stats["tasks"] == 3

    run("queues", "pause", "emails", "--db", db_url)
    assert rows("queues", "list", "--db", db_url)[0]["state"] == "PAUSED"
    run("queues", "resume", "emails", "--db", db_url)
    assert rows("queues", "list", "--db", db_url)[0]["state"] == "RUNNING"


def test_unknown_queue_fails_with_exit_1_and_one_error_line(engine: sa.Engine, db_url: str) -> None:
    for args in (
        ["pause", "nope"],
        ["resume", "nope"],
        ["stats", "nope"],
        ["purge", "nope", "--yes"],
    ):
        result = run("queues", *args, "--db", db_url, code=FAILED)
        assert result.stderr == "tq: error: no queue 'nope'\n"


def test_queues_purge_deletes_waiting_tasks(engine: sa.Engine, db_url: str) -> None:
    _queue_tasks(engine, 2)

    run("queues", "purge", "emails", "--db", db_url, "--yes")

    assert rows("queues", "stats", "emails", "--db", db_url)[0]["tasks"] == 0
    states = {t["state"] for t in rows("tasks", "list", "--db", db_url)}
    assert states == {"deleted"}


def test_queues_purge_asks_before_deleting(engine: sa.Engine, db_url: str) -> None:
    _queue_tasks(engine, 1)
    result = CliRunner().invoke(cli, ["queues", "purge", "emails", "--db", db_url], input="n\n")
    assert result.exit_code == 1  # aborted
    assert rows("queues", "stats", "emails", "--db", db_url)[0]["tasks"] == 1


def test_tasks_list_filters_and_delete(engine: sa.Engine, db_url: str) -> None:
    _queue_tasks(engine, 3)

    tasks = rows("tasks", "list", "--db", db_url, "--queue", "emails", "--task-class", "greet")
    assert len(tasks) == 3
    assert {t["state"] for t in tasks} == {"pending"}
    assert rows("tasks", "list", "--db", db_url, "--task-class", "other") == []
    assert len(rows("tasks", "list", "--db", db_url, "--limit", "2")) == 2

    run("tasks", "delete", "emails", tasks[0]["name"], "--db", db_url)
    result = run("tasks", "delete", "emails", tasks[0]["name"], "--db", db_url, code=FAILED)
    assert tasks[0]["name"] in result.stderr
    assert len(rows("tasks", "list", "--db", db_url, "--state", "pending")) == 2


def test_tasks_run_makes_a_waiting_task_due_now(engine: sa.Engine, db_url: str) -> None:
    d = _dispatcher(DbQueueSubmitter(engine), tq.Kind.NON_TRANSACTIONAL)
    d.add_task(tq.Task(payload=pb.Greet(name="later"), delay=dt.timedelta(hours=1)))
    (task,) = rows("tasks", "list", "--db", db_url)

    run("tasks", "run", "emails", task["name"], "--db", db_url)

    (after,) = rows("tasks", "list", "--db", db_url)
    assert dt.datetime.fromisoformat(after["eta"]) < dt.datetime.fromisoformat(task["eta"])
    run("tasks", "run", "emails", "no-such-task", "--db", db_url, code=FAILED)


def test_bad_state_filter_is_a_usage_error(engine: sa.Engine, db_url: str) -> None:
    result = run("tasks", "list", "--db", db_url, "--state", "sleeping", code=2)
    assert result.stderr.startswith("tq: error: --state 'sleeping'")


# tq reminders, tq parked, tq sweep


def test_reminders_count_and_list(engine: sa.Engine, db_url: str) -> None:
    _add_reminders(engine, 2, grpc.StatusCode.UNAVAILABLE)
    _add_reminders(engine, 1, grpc.StatusCode.NOT_FOUND)

    assert rows("reminders", "count", "--db", db_url) == [
        {"store": "sql", "pending": 2, "parked": 1}
    ]
    listed = rows("reminders", "list", "--db", db_url)
    assert [(r["task_class"], r["queue"]) for r in listed] == [("greet", "emails")] * 2
    assert listed[0]["url"].startswith("https://app.example.com/internal/tasks/t/greet")
    assert len(rows("reminders", "list", "--db", db_url, "--limit", "1")) == 1
    assert rows("reminders", "list", "--db", db_url, "--stale") == []  # fresh for a minute


def test_sweep_submits_stale_reminders_to_the_database_queue(
    engine: sa.Engine, db_url: str
) -> None:
    _add_reminders(engine, 2, grpc.StatusCode.UNAVAILABLE)
    clock = tqtesting.FakeClock(tq.clock.now() + dt.timedelta(minutes=2))

    with tq.clock.use_clock(clock):
        assert len(rows("reminders", "list", "--db", db_url, "--stale")) == 2
        (stats,) = rows("sweep", "--db", db_url, "--backend", "dbqueue", "--sweep-shards", "2")

    assert stats["submitted"] == 2
    assert rows("reminders", "count", "--db", db_url)[0]["pending"] == 0
    assert len(rows("tasks", "list", "--db", db_url, "--queue", "emails")) == 2


def test_sweep_exits_4_when_submits_fail_for_now(engine: sa.Engine, db_url: str) -> None:
    _add_reminders(engine, 1, grpc.StatusCode.UNAVAILABLE)
    clock = tqtesting.FakeClock(tq.clock.now() + dt.timedelta(minutes=2))
    with tq.clock.use_clock(clock):
        result = CliRunner().invoke(
            cli, ["sweep", "--db", db_url, "--backend", "cloudtasks", "--cloudtasks-endpoint",
                  "127.0.0.1:1", "--cloud-project", "p"],
        )  # fmt: skip
    # Nothing listens on port 1: every submit fails transiently (exit 4, kept).
    assert result.exit_code == 4, result.output
    assert rows("reminders", "count", "--db", db_url)[0]["pending"] == 1


def test_parked_list_replay_and_drop(engine: sa.Engine, db_url: str) -> None:
    _add_reminders(engine, 2, grpc.StatusCode.NOT_FOUND)

    parked = rows("parked", "list", "--db", db_url)
    assert [p["parked_code"] for p in parked] == ["NOT_FOUND", "NOT_FOUND"]
    assert "refused for the test" in parked[0]["parked_reason"]

    run("parked", "replay", parked[0]["id"], "--db", db_url, "--now", "--backend", "dbqueue")
    assert rows("reminders", "count", "--db", db_url) == [
        {"store": "sql", "pending": 0, "parked": 1}
    ]
    assert len(rows("tasks", "list", "--db", db_url)) == 1

    run("parked", "replay", "f" * 32, "--db", db_url, code=FAILED)
    run("parked", "drop", "--all", "--yes", "--db", db_url)
    assert rows("parked", "list", "--db", db_url) == []


def test_parked_replay_without_now_leaves_it_to_the_next_sweep(
    engine: sa.Engine, db_url: str
) -> None:
    _add_reminders(engine, 1, grpc.StatusCode.NOT_FOUND)
    (p,) = rows("parked", "list", "--db", db_url)

    run("parked", "replay", p["id"], "--db", db_url)

    assert rows("reminders", "count", "--db", db_url) == [
        {"store": "sql", "pending": 1, "parked": 0}
    ]
    (stats,) = rows("sweep", "--db", db_url, "--backend", "dbqueue", "--sweep-shards", "1")
    assert stats["submitted"] == 1


def test_parked_replay_needs_ids_or_all(engine: sa.Engine, db_url: str) -> None:
    run("parked", "replay", "--db", db_url, code=2)


# Cloud Tasks


@pytest.fixture
def ct_args(cloudtasks_emulator: Any) -> list[str]:
    return [
        "--cloud-project", cloudtasks_emulator.project, "--cloud-region",
        cloudtasks_emulator.location, "--cloudtasks-endpoint", cloudtasks_emulator.endpoint,
    ]  # fmt: skip


def test_cloudtasks_queues_list_pause_resume_purge(
    ct_args: list[str], cloudtasks_queue: str
) -> None:
    short = cloudtasks_queue.rsplit("/", 1)[1]
    names = {q["queue"]: q["state"] for q in rows("queues", "list", *ct_args)}
    assert names[short] == "RUNNING"
    assert {"default", "tq-sweep"} <= set(names)

    run("queues", "pause", short, *ct_args)
    assert {q["queue"]: q["state"] for q in rows("queues", "list", *ct_args)}[short] == "PAUSED"
    run("queues", "resume", short, *ct_args)
    run("queues", "purge", short, "--yes", *ct_args)


def test_cloudtasks_tasks_list_and_stats(
    ct_args: list[str], cloudtasks_emulator: Any, cloudtasks_queue: str
) -> None:
    short = cloudtasks_queue.rsplit("/", 1)[1]
    submitter = tq.CloudTasksSubmitter(endpoint=cloudtasks_emulator.endpoint)
    d = tq.Dispatcher(
        cloud_project=cloudtasks_emulator.project, cloud_region=cloudtasks_emulator.location,
        default_target_host="127.0.0.1:9", target_scheme="http", submitter=submitter,
    )  # fmt: skip
    d.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue=short)
    )
    try:
        # Far in the future: the emulator holds it instead of pushing it.
        d.add_task(tq.Task(payload=pb.Greet(name="x"), delay=dt.timedelta(days=1)))
    finally:
        submitter.close()

    (task,) = rows("tasks", "list", "--queue", short, *ct_args)
    assert task["task_class"] == "greet"
    (stats,) = rows("queues", "stats", short, *ct_args)
    assert stats["tasks"] == 1
    # The emulator does not implement DeleteTask: the error says so, exit 1.
    result = run("tasks", "delete", short, task["name"], *ct_args, code=FAILED)
    assert "tq: error:" in result.stderr


def test_cloudtasks_unknown_queue_fails_with_one_error_line(ct_args: list[str]) -> None:
    # Cloud Tasks answers NOT_FOUND (exit 1, see the next test); the emulator
    # answers UNKNOWN, which a script must treat as "try later" (exit 4).
    result = run("queues", "pause", "no-such-queue", *ct_args, code=4)
    assert result.stderr.startswith("tq: error: ")
    assert "no-such-queue" in result.stderr


def test_cloudtasks_not_found_queue_is_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.api_core import exceptions as gexc

    class NotFoundClient:
        def pause_queue(self, name: str) -> None:
            raise gexc.NotFound(f"queue {name} not found")

    monkeypatch.setattr(tq.CloudTasksSubmitter, "client", NotFoundClient())
    result = run("queues", "pause", "gone", "--cloud-project", "p", "--cloud-region", "r",
                 code=FAILED)  # fmt: skip
    assert result.stderr == "tq: error: no queue 'gone'\n"


def test_cloudtasks_needs_project_and_region() -> None:
    result = run("queues", "list", "--backend", "cloudtasks", code=CONFIG)
    assert "--cloud-project" in result.stderr


class _FailingPublisher(_FailingSubmitter):
    takes_topics = True


def test_parked_pubsub_reminders_are_listed_with_their_topic_and_replayed(
    engine: sa.Engine, db_url: str
) -> None:
    from tq import dbqueue

    store = tq.txn.sql.SQLStore(engine, register=False)
    d = tq.Dispatcher(cloud_project="p", submitter=_FailingPublisher(grpc.StatusCode.NOT_FOUND))
    d.register_task_class(
        tq.TaskClass(id="placed", prototype=pb.Count, kind=tq.Kind.TRANSACTIONAL, topic="orders")
    )
    with tq.txn.sql.transaction(engine, store=store):
        d.add_task(tq.Task(payload=pb.Count(n=1)))

    (p,) = rows("parked", "list", "--db", db_url)
    assert (p["task_class"], p["topic"], p["queue"], p["parked_code"]) == (
        "placed", "orders", "", "NOT_FOUND",
    )  # fmt: skip
    # The topic gets a subscription (the cause fixed); the replay publishes to it.
    dbqueue.apply_subscriptions(
        engine, [dbqueue.Subscription("audit", "orders", push_endpoint="http://app/pubsub/audit")]
    )
    run("parked", "replay", p["id"], "--db", db_url, "--now", "--backend", "dbqueue")
    assert rows("reminders", "count", "--db", db_url)[0]["parked"] == 0
    (task,) = rows("tasks", "list", "--db", db_url, "--queue", "audit")
    assert task["task_class"] == "placed"
