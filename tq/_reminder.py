"""Reminders: tasks written into a transaction, to submit after it commits.

A reminder's ID (16 random bytes as 32 hex characters) is also the Cloud
Tasks task ID, so submitting it twice (happy path and sweeper) creates one
task. Its payload is the whole CreateTaskRequest plus class and creation time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from google.protobuf import timestamp_pb2

from tq._pb import reminder_pb2
from tq._request import CreateTaskRequest
from tq._submitter import Submission

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
        return Submission(
            request=CreateTaskRequest.FromString(p.create_task_request),
            task_class=p.task_class,
            created=p.created.ToDatetime(dt.UTC),
            reminder_id=self.id,
        )

    @property
    def parked(self) -> bool:
        if not self.extra:
            return False
        return bool(reminder_pb2.ReminderExtra.FromString(self.extra).parked_reason)


def fresh_until(now: dt.datetime, deadline: dt.datetime | None = None) -> dt.datetime:
    """now + the happy path window, capped by a request deadline."""
    until = now + HAPPY_PATH_WINDOW
    return min(until, deadline) if deadline is not None else until


def encode_payload(submission: Submission) -> bytes:
    return reminder_pb2.ReminderPayload(
        task_class=submission.task_class,
        created=_timestamp(submission.created),
        create_task_request=submission.request.SerializeToString(),
    ).SerializeToString()


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _timestamp(t: dt.datetime) -> timestamp_pb2.Timestamp:
    # Timestamp.FromDatetime goes through utctimetuple() and calendar.timegm():
    # several times slower, and this runs once per add_task in a transaction.
    d = t - _EPOCH
    return timestamp_pb2.Timestamp(seconds=d.days * 86_400 + d.seconds, nanos=d.microseconds * 1000)


def parked_extra(code: str, reason: str, now: dt.datetime) -> bytes:
    """The Extra column of a reminder parked after a permanent failure."""
    at = timestamp_pb2.Timestamp()
    at.FromDatetime(now)
    return reminder_pb2.ReminderExtra(
        parked_reason=reason[:700], parked_code=code, parked_at=at
    ).SerializeToString()
