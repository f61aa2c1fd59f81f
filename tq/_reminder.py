"""Reminders: tasks written into a transaction, to submit after it commits.

A reminder's ID (16 random bytes as 32 hex characters) is also the Cloud
Tasks task ID, so submitting it twice (happy path and sweeper) creates one
task. Its payload is the whole CreateTaskRequest plus class and creation time
(for a topic class: the PublishRequest, whose `tq_task_id` attribute is the
reminder ID, since Pub/Sub has no names to deduplicate by).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from tq._pb import reminder_pb2
from tq._pb.publish_pb2 import PublishRequest
from tq._request import CreateTaskRequest, epoch_parts
from tq._submitter import Submission, new_submission

# How long after add_task the happy path may still submit; after that the
# reminder belongs to the sweeper.
HAPPY_PATH_WINDOW = dt.timedelta(minutes=1)
ID_HEX_LEN = 32


@dataclasses.dataclass(frozen=True, slots=True)
class Reminder:
    """One row of the reminders table."""

    id: str
    fresh_until: dt.datetime
    payload: bytes
    extra: bytes = b""

    def submission(self) -> Submission:
        """Decodes the payload back into what the submitter takes."""
        p = reminder_pb2.ReminderPayload.FromString(self.payload)
        if p.HasField("publish_request"):
            req: Message = PublishRequest.FromString(p.publish_request)
        else:
            req = CreateTaskRequest.FromString(p.create_task_request)
        return new_submission(
            req,
            p.task_class,
            _datetime(p.created),
            None,
            self.id,
        )

    @property
    def parked(self) -> bool:
        if not self.extra:
            return False
        return bool(reminder_pb2.ReminderExtra.FromString(self.extra).parked_reason)


_new = object.__new__
_set_id, _set_fresh_until, _set_payload, _set_extra = (
    Reminder.__dict__[f].__set__ for f in ("id", "fresh_until", "payload", "extra")
)


def reminder_row(id: str, fresh_until: dt.datetime, payload: bytes, extra: bytes) -> Reminder:
    """`Reminder(id, fresh_until, payload, extra)` at half the cost.

    The frozen dataclass's `__init__` sets each field through
    `object.__setattr__` by name; this sets the slots directly (a sweep reads
    thousands of reminders a second, and every `add_task` in a transaction
    makes one).
    """
    r: Reminder = _new(Reminder)
    _set_id(r, id)
    _set_fresh_until(r, fresh_until)
    _set_payload(r, payload)
    _set_extra(r, extra)
    return r


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _datetime(ts: timestamp_pb2.Timestamp) -> dt.datetime:
    # Timestamp.ToDatetime is several times slower; this runs once per swept reminder.
    return _EPOCH + dt.timedelta(0, ts.seconds, ts.nanos // 1000)  # days, seconds, us


def fresh_until(now: dt.datetime, deadline: dt.datetime | None = None) -> dt.datetime:
    """now + the happy path window, capped by a request deadline."""
    until = now + HAPPY_PATH_WINDOW
    return min(until, deadline) if deadline is not None else until


def encode_payload(submission: Submission) -> bytes:
    req = submission.request
    if type(req) is PublishRequest:
        p = reminder_pb2.ReminderPayload(
            task_class=submission.task_class, publish_request=req.SerializeToString()
        )
    else:
        p = reminder_pb2.ReminderPayload(
            task_class=submission.task_class, create_task_request=req.SerializeToString()
        )
    # Set in place: cheaper than building a Timestamp to be copied in (this
    # runs once per add_task in a transaction).
    created = p.created
    created.seconds, micros = epoch_parts(submission.created)
    created.nanos = micros * 1000
    return p.SerializeToString()


def request_payload(task_class: str, request: bytes, created: tuple[int, int]) -> bytes:
    """`encode_payload`'s bytes for a CreateTaskRequest serialized already.

    `created` is the creation time as `epoch_parts` gives it. add_task in a
    transaction serializes the request once (to check its size) and hands
    the bytes here, rather than having them serialized a second time.
    """
    p = reminder_pb2.ReminderPayload(task_class=task_class, create_task_request=request)
    ts = p.created
    ts.seconds, micros = created
    ts.nanos = micros * 1000
    return p.SerializeToString()


def parked_extra(code: str, reason: str, now: dt.datetime) -> bytes:
    """The Extra column of a reminder parked after a permanent failure."""
    at = timestamp_pb2.Timestamp()
    at.FromDatetime(now)
    return reminder_pb2.ReminderExtra(
        parked_reason=reason[:700], parked_code=code, parked_at=at
    ).SerializeToString()
