"""The admin layer the `tq` command and the dashboard share, on its own.

Outbox operations on a SQLite store (the CLI tests run them on PostgreSQL
and Spanner too), the payload made readable, and Cloud Tasks' task pages,
detail and RunTask against the emulator.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

import tq
import tq.txn.sql
import tqtesting
from tests.testpb import payloads_pb2 as pb
from tq import _envelope
from tq.admin import CloudTasksAdmin, OutboxAdmin, readable_payload


class _Refusing:
    def __init__(self, code: grpc.StatusCode) -> None:
        self.code = code

    def submit(self, sub: tq.Submission) -> None:
        raise tq.SubmitError(self.code, "refused for the test")

    async def submit_async(self, sub: tq.Submission) -> None:
        self.submit(sub)


def _dispatcher(submitter: Any) -> tq.Dispatcher:
    d = tq.Dispatcher(
        cloud_project="p", cloud_region="r", default_target_host="app.example.com",
        submitter=submitter,
    )  # fmt: skip
    d.register_task_class(
        tq.TaskClass(id="greet", prototype=pb.Greet, kind=tq.Kind.FOLLOWS_CONTEXT, queue="emails")
    )
    return d


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tq.txn.sql.SQLStore]:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/o.db")
    s = tq.txn.sql.SQLStore(engine, register=False)
    s.create_schema()
    yield s
    s.close()
    engine.dispose()


def _remind(store: tq.txn.sql.SQLStore, code: grpc.StatusCode, *names: str) -> None:
    d = _dispatcher(_Refusing(code))
    with tq.txn.sql.transaction(store.engine, store=store):
        for n in names:
            d.add_task(tq.Task(payload=pb.Greet(name=n)))


def test_outbox_lists_pending_and_parked_apart_and_shows_one_with_its_request(
    store: tq.txn.sql.SQLStore,
) -> None:
    _remind(store, grpc.StatusCode.UNAVAILABLE, "kept1", "kept2")
    _remind(store, grpc.StatusCode.NOT_FOUND, "parked")
    outbox = OutboxAdmin([store])

    assert outbox.counts() == [{"store": "sql", "pending": 2, "parked": 1}]
    pending = outbox.list_reminders(10)
    assert len(pending) == 2
    assert all("parked_code" not in r for r in pending)
    first = outbox.list_reminders(1)
    assert outbox.list_reminders(10, after=first[0]["id"]) == [
        r for r in pending if r["id"] > first[0]["id"]
    ]
    (parked,) = outbox.list_parked(10)
    assert parked["parked_code"] == "NOT_FOUND"

    shown = outbox.get_reminder("sql", parked["id"])
    assert shown is not None
    assert shown["method"] == "POST"
    assert shown["queue"] == "emails"
    assert json.loads(shown["body"])["body"] == {"name": "parked"}
    assert outbox.get_reminder("sql", "0" * 32) is None
    assert outbox.get_reminder("nope", parked["id"]) is None


def test_outbox_staleness_is_how_late_the_stalest_reminder_is(
    store: tq.txn.sql.SQLStore,
) -> None:
    outbox = OutboxAdmin([store])
    clock = tqtesting.FakeClock(tq.clock.now())
    with tq.clock.use_clock(clock):
        assert outbox.oldest_staleness() == (None, True)
        _remind(store, grpc.StatusCode.UNAVAILABLE, "a")
        assert outbox.oldest_staleness() == (None, True)  # fresh for a minute
        clock.advance(dt.timedelta(minutes=5))
        assert outbox.oldest_staleness() == (dt.timedelta(minutes=4), True)


def test_outbox_replay_and_drop_act_on_the_chosen_parked_reminders_only(
    store: tq.txn.sql.SQLStore,
) -> None:
    _remind(store, grpc.StatusCode.NOT_FOUND, "a", "b", "c")
    outbox = OutboxAdmin([store])
    ids = sorted(r["id"] for r in outbox.list_parked(10))

    chosen, missing = outbox.choose_parked([ids[0], "f" * 32])
    assert [c.reminder.id for c in chosen] == [ids[0]]
    assert missing == ["f" * 32]
    assert outbox.replay(chosen) == 0
    assert store.count_reminders() == (1, 2)

    recorder = tqtesting.Scheduler()
    chosen, _ = outbox.choose_parked([ids[1]])
    assert outbox.replay(chosen, recorder) == 0  # submitted at once: the reminder is gone
    assert store.count_reminders() == (1, 1)
    assert len(recorder.tasks()) == 1

    chosen, missing = outbox.choose_parked(None)
    assert [c.reminder.id for c in chosen] == [ids[2]]
    assert missing == []
    assert outbox.drop(chosen) == 1
    assert store.count_reminders() == (1, 0)


def test_readable_payload_decodes_with_the_registered_type_or_says_why_not() -> None:
    d = _dispatcher(tqtesting.Scheduler())
    body = _envelope.encode("greet", pb.Greet(name="Ada"))
    shown = readable_payload(body, d)
    assert (shown["class"], shown["type"], shown["note"]) == ("greet", "tq.tests.Greet", "")
    assert json.loads(shown["json"]) == {"name": "Ada"}

    wrong = b'{"class":"greet","type":"tq.tests.Greet","body":"not an object"}'
    assert "must be an object" in readable_payload(wrong, d)["note"]
    unknown = b'{"class":"x","type":"no.such.Type","body":{"a":1}}'
    assert "not known here" in readable_payload(unknown)["note"]
    assert json.loads(readable_payload(unknown)["json"]) == {"a": 1}
    assert "not a tq envelope" in readable_payload(b"\xff\x00")["note"]


@pytest.fixture
def ct(cloudtasks_emulator: Any) -> Iterator[CloudTasksAdmin]:
    admin = CloudTasksAdmin.connect(
        cloudtasks_emulator.project, cloudtasks_emulator.location, cloudtasks_emulator.endpoint
    )
    yield admin
    admin.close()


def test_cloudtasks_pages_shows_and_runs_a_task(
    ct: CloudTasksAdmin, cloudtasks_emulator: Any, cloudtasks_queue: str
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
        for n in ("a", "b", "c"):  # far in the future: the emulator holds them
            d.add_task(tq.Task(payload=pb.Greet(name=n), delay=dt.timedelta(days=1)))
    finally:
        submitter.close()

    seen, cursor = [], None
    while True:
        page, cursor = ct.page_tasks(short, limit=2, cursor=cursor)
        seen += page
        if cursor is None:
            break
    assert len(seen) == 3
    assert {r["task_class"] for r in seen} == {"greet"}
    shown = ct.get_task(short, seen[0]["name"])
    assert shown is not None
    assert shown["method"] == "POST"
    assert json.loads(shown["body"])["class"] == "greet"
    assert ct.get_task(short, "no-such-task") is None
    assert ct.has_queue(short)
    assert not ct.has_queue("no-such-queue")
    with pytest.raises(ValueError, match="pending"):
        ct.page_tasks(short, state="done")
    assert ct.run_task(short, seen[0]["name"])
