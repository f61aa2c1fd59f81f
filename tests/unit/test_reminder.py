"""Reminders: their payload, freshness and parked mark."""

from __future__ import annotations

import datetime as dt

import grpc

import tq
from tests.testpb import payloads_pb2 as pb
from tq import _request
from tq._reminder import (
    HAPPY_PATH_WINDOW,
    Reminder,
    encode_payload,
    fresh_until,
    parked_extra,
    request_payload,
)
from tq._request import epoch_parts
from tq._task import Task
from tq._taskclass import Kind, TaskClass

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def submission() -> tq.Submission:
    cls = TaskClass(id="greet", prototype=pb.Greet, kind=Kind.TRANSACTIONAL, queue="q")
    target = _request.Target("p", "r", "h", None, None, False)
    req = _request.build(cls, Task(payload=pb.Greet(name="x")), target, now=NOW, task_id="ab" * 16)
    return tq.Submission(
        request=req, task_class="greet", created=NOW, payload=pb.Greet(), reminder_id="ab" * 16
    )


def test_payload_round_trips_the_request_class_and_creation_time() -> None:
    s = submission()
    back = Reminder(id="ab" * 16, fresh_until=NOW, payload=encode_payload(s)).submission()
    assert back.request == s.request
    assert (back.task_class, back.created, back.reminder_id, back.payload) == (
        "greet",
        NOW,
        "ab" * 16,
        None,
    )
    assert back.task_name.endswith("/tasks/" + "ab" * 16)


def test_payload_assembled_from_request_bytes_is_the_encoded_one() -> None:
    # What add_task stores in a transaction must read back as the sweeper
    # and older rows expect: the same bytes as the ReminderPayload message's.
    s = submission()
    raw = s.request.SerializeToString()
    big = _request.CreateTaskRequest.FromString(raw)
    big.task.http_request.body = b"x" * 100_000
    for created in (
        NOW,
        dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        dt.datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 3, 17, 0, 5, 999_999, tzinfo=dt.UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC),
    ):
        for cls_id, req in (("greet", raw), ("c" * 200, big.SerializeToString()), ("x", b"")):
            sub = tq.Submission(
                request=_request.CreateTaskRequest.FromString(req), task_class=cls_id,
                created=created,
            )  # fmt: skip
            # The request's bytes as serialized from the message itself: a map's
            # entries (the headers) may serialize in another order after a parse.
            given = sub.request.SerializeToString()
            assert request_payload(cls_id, given, epoch_parts(created)) == encode_payload(sub)
    back = Reminder(id="ab" * 16, fresh_until=NOW, payload=request_payload(
        "greet", raw, epoch_parts(NOW))).submission()  # fmt: skip
    assert (back.request, back.task_class, back.created) == (s.request, "greet", NOW)


def test_fresh_until_is_a_minute_capped_by_the_deadline() -> None:
    assert fresh_until(NOW) == NOW + HAPPY_PATH_WINDOW == NOW + dt.timedelta(minutes=1)
    soon = NOW + dt.timedelta(seconds=5)
    assert fresh_until(NOW, soon) == soon
    assert fresh_until(NOW, NOW + dt.timedelta(hours=1)) == NOW + HAPPY_PATH_WINDOW


def test_parked_mark_lives_in_extra() -> None:
    r = Reminder(id="ab" * 16, fresh_until=NOW, payload=b"")
    assert not r.parked
    extra = parked_extra(grpc.StatusCode.NOT_FOUND.name, "queue gone " * 200, NOW)
    parked = Reminder(r.id, r.fresh_until, r.payload, extra)
    assert parked.parked
    assert len(extra) < 1024  # fits the Extra column
