"""A task: one payload to run later, with its options."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

from google.protobuf.message import Message

from tq._errors import ValidationError
from tq._taskclass import FULL_QUEUE_RE, SHORT_QUEUE_RE

MAX_ETA_AHEAD = dt.timedelta(days=30)
MAX_URI_LENGTH = 2083
MAX_PRIORITY = 1000
"""`Task.priority` is within -MAX_PRIORITY to MAX_PRIORITY."""
MAX_TAG_LENGTH = 500
PRIORITY_HEADER = "X-Tq-Priority"
"""Carries `Task.priority` in the request (and so through reminders) to the backend."""
TAG_HEADER = "X-Tq-Tag"
"""Carries `Task.tag` in the request to the backend."""
_TITLE_FORBIDDEN = frozenset(' \t\r\n\v\f?#%"<>\\^`{|}')


@dataclasses.dataclass(slots=True)
class Task:
    """A payload to run later through its task class.

    Args:
      payload: a protobuf message of a registered task class's prototype.
      deduplication_key: tasks of one class with the same key within about an
        hour (Cloud Tasks' name-reuse window) run once. Not allowed on a task
        added transactionally (the reminder ID names that task already).
      title: shows as the last URL path segment of the push, for logs. No
        spaces nor ? # % and similar; the whole URI is at most 2,083 chars.
      delay: run no sooner than this long after add_task. Excludes `eta`.
      eta: run no sooner than this (timezone-aware) time. Excludes `delay`.
        Either may put the task at most 30 days ahead.
      ordering_key: for a task of a topic class only: messages with the same
        key are delivered in the order they were published, on subscriptions
        with message ordering on (the publisher must enable it too).
      queue: for a task of a queue class only: the Cloud Tasks queue of this
        one task, short (`emails`) or full (`projects/P/locations/L/queues/Q`),
        instead of its class's (default None: the class's queue). For
        integrations whose tasks name their queue (a `django.tasks` task's
        `queue_name`).
      priority: -1,000 to 1,000 (default 0). On the database queue and in
        `tqtesting`, due tasks of a queue are taken highest priority first;
        each point of priority is worth a fixed head start (the submitter's
        `priority_step`, default 1 s), so a task is never overtaken by work
        that became due more than (their priority gap) x step after it:
        starvation is bounded (docs/dbqueue.md). Cloud Tasks has no
        priorities and ignores it (the request carries it as a header).
      tag: up to 500 printable ASCII characters; pull consumers of the
        database queue lease tasks by tag (App Engine's LeaseByTag).
        Cloud Tasks ignores it (carried as a header).
    """

    payload: Message
    deduplication_key: str = ""
    title: str = ""
    delay: dt.timedelta | None = None
    eta: dt.datetime | None = None
    ordering_key: str = ""
    queue: str | None = None
    priority: int = 0
    tag: str = ""

    def validate(self) -> None:
        """Raises ValidationError for options that can never work."""
        if not isinstance(self.payload, Message):
            raise ValidationError(f"Task.payload must be a protobuf message, got {self.payload!r}")
        # Spelled out rather than looped over: this runs on every add_task.
        title, delay, eta = self.title, self.delay, self.eta
        if not isinstance(title, str):
            raise ValidationError(f"Task.title has the wrong type: {title!r}")
        if not isinstance(self.ordering_key, str):
            raise ValidationError(f"Task.ordering_key has the wrong type: {self.ordering_key!r}")
        if not isinstance(self.deduplication_key, str):
            raise ValidationError(
                f"Task.deduplication_key has the wrong type: {self.deduplication_key!r}"
            )
        if delay is not None or eta is not None:
            if delay is not None and not isinstance(delay, dt.timedelta):
                raise ValidationError(f"Task.delay has the wrong type: {delay!r}")
            if eta is not None and not isinstance(eta, dt.datetime):
                raise ValidationError(f"Task.eta has the wrong type: {eta!r}")
            if delay is not None and eta is not None:
                raise ValidationError("Task: give delay or eta, not both")
            if delay is not None and delay < dt.timedelta(0):
                raise ValidationError(f"Task: delay must not be negative, got {delay}")
            if eta is not None and eta.tzinfo is None:
                raise ValidationError("Task: eta must be timezone-aware (e.g. datetime.now(UTC))")
        queue = self.queue
        if queue is not None and not (
            isinstance(queue, str) and (SHORT_QUEUE_RE.match(queue) or FULL_QUEUE_RE.match(queue))
        ):
            raise ValidationError(
                f"Task.queue {queue!r} is invalid: give a queue ID ([a-zA-Z0-9-]{{1,100}}, "
                "e.g. 'emails') or a full name 'projects/P/locations/L/queues/Q'"
            )
        if self.priority or self.tag:
            self._validate_priority_and_tag()
        if title and any(
            c in _TITLE_FORBIDDEN or ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in title
        ):
            raise ValidationError(
                f"Task: title {title!r} has spaces, control characters, lone "
                "surrogates or URL-reserved characters; "
                "use letters, digits and -_.~:@!$&'()*+,;=/"
            )

    def _validate_priority_and_tag(self) -> None:
        priority, tag = self.priority, self.tag
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValidationError(f"Task.priority must be an int, got {priority!r}")
        if not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
            raise ValidationError(
                f"Task.priority must be within -{MAX_PRIORITY} to {MAX_PRIORITY}, got {priority}"
            )
        if not isinstance(tag, str):
            raise ValidationError(f"Task.tag has the wrong type: {tag!r}")
        if len(tag) > MAX_TAG_LENGTH or not all(" " <= c <= "~" for c in tag):
            raise ValidationError(
                f"Task.tag {tag[:60]!r} must be at most {MAX_TAG_LENGTH} printable ASCII characters"
            )

    def resolve_eta(self, now: dt.datetime) -> dt.datetime | None:
        """The absolute ETA of the task, or None to run as soon as possible."""
        if self.delay is not None and self.delay > MAX_ETA_AHEAD:
            # Checked first: now + a huge delay would overflow datetime.
            raise ValidationError(
                f"Task: delay {self.delay} is more than 30 days (Cloud Tasks' limit)"
            )
        if self.eta is not None:
            try:
                eta: dt.datetime | None = self.eta.astimezone(dt.UTC)
            except OverflowError:  # e.g. 0001-01-01 at UTC+5
                raise ValidationError(f"Task: ETA {self.eta!r} is out of range") from None
        else:
            eta = now + self.delay if self.delay else None
        if eta is not None and eta - now > MAX_ETA_AHEAD:
            raise ValidationError(
                f"Task: ETA {eta.isoformat()} is more than 30 days ahead (Cloud Tasks' limit)"
            )
        return eta


def deduplicated_task_id(namespace: str, class_id: str, key: str) -> str:
    """The Cloud Tasks task ID of a task with a deduplication key."""
    blob = f"{namespace}\x00{class_id}\x00{key}".encode()
    return hashlib.sha256(blob).hexdigest()
