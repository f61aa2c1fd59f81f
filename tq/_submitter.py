"""The Submitter seam: who creates the tasks that tq builds.

`add_task` hands every task to the submitter of the current context:
`use_submitter()` sets one (a contextvar, so it follows threads started with
a copied context and asyncio tasks); otherwise the dispatcher's own is used
(a `CloudTasksSubmitter` in production). Tests and local runs swap in
`tqtesting.Scheduler` or the database queue.

A submission goes to a Cloud Tasks queue (its request is a
CreateTaskRequest) or to a Pub/Sub topic (a `tq.internal.PublishRequest`,
for task classes with a `topic`). A submitter says which it takes with
`takes_queues` / `takes_topics` (absent: queues only); `Router` sends each
kind to a submitter of its own (Cloud Tasks and `tq.pubsub.Publisher` in
production), and the happy path, the sweeper and `tq parked replay` all go
through the one submitter, so a topic's reminders need no second outbox.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import grpc
from google.protobuf.message import Message

from tq._errors import ConfigError, SubmitError
from tq._pb.publish_pb2 import PublishRequest


@dataclasses.dataclass(frozen=True, slots=True)
class Submission:
    """One task to create.

    `request` is a google.cloud.tasks.v2 CreateTaskRequest (the raw protobuf
    class), or for a topic class a `tq.internal.PublishRequest` (see
    `topic`). `payload` is the original message when the submission comes
    straight from `add_task`, None when it was read back from a reminder.
    """

    request: Message
    task_class: str
    created: dt.datetime
    payload: Message | None = None
    reminder_id: str | None = None

    @property
    def task_name(self) -> str:
        """The full task name, or "" when Cloud Tasks picks one (or for a message)."""
        if type(self.request) is PublishRequest:
            return ""
        return str(self.request.task.name)  # type: ignore[attr-defined]

    @property
    def topic(self) -> str:
        """The full topic name of a message to publish, "" for a Cloud Tasks task."""
        req = self.request
        return req.topic if type(req) is PublishRequest else ""

    @property
    def destination(self) -> str:
        """The full name of the queue a task goes to, or of the topic of a message."""
        req = self.request
        return str(req.topic if type(req) is PublishRequest else req.parent)  # type: ignore[attr-defined]


_new = object.__new__
_set_request, _set_task_class, _set_created, _set_payload, _set_reminder_id = (
    Submission.__dict__[f].__set__
    for f in ("request", "task_class", "created", "payload", "reminder_id")
)


def new_submission(
    request: Message,
    task_class: str,
    created: dt.datetime,
    payload: Message | None,
    reminder_id: str | None,
) -> Submission:
    """`Submission(request, task_class, created, payload, reminder_id)`, at a quarter of the cost.

    The dataclass's frozen `__init__` sets each field through
    `object.__setattr__` by name; this sets the slots directly. Every
    `add_task` makes one, and the sweeper one per reminder it decodes.
    """
    sub: Submission = _new(Submission)
    _set_request(sub, request)
    _set_task_class(sub, task_class)
    _set_created(sub, created)
    _set_payload(sub, payload)
    _set_reminder_id(sub, reminder_id)
    return sub


class BuiltSubmission(Submission):
    """A Submission `add_task` made from a request template, its request built when read.

    `parts` (`tq._request.Template.parts`): the template, the queue's full
    name, the task ID (None: unnamed), the URL, the body, the
    X-Tq-Expected-Eta value and the ETA in epoch microseconds (None: due
    now), then the task's priority and tag. A submitter that stores requests
    as rows (the database queue, `takes_parts`) takes them and never reads
    `request`; anything that reads it gets the request `Template.build`
    makes of the same task, built then, once.
    """

    __slots__ = ("_now_parts", "_task", "parts")

    parts: tuple[Any, ...]
    _task: Any
    _now_parts: tuple[int, int]

    @property
    def request(self) -> Message:
        try:
            return _get_request(self)  # type: ignore[no-any-return]
        except AttributeError:
            pass
        tpl, _, task_id = self.parts[:3]
        req: Message = tpl.build(
            self._task, now=self.created, task_id=task_id, now_parts=self._now_parts
        )
        _set_request(self, req)
        return req

    @property
    def destination(self) -> str:
        return str(self.parts[1])

    @property
    def topic(self) -> str:
        return ""


_get_request = Submission.__dict__["request"].__get__
_set_parts, _set_task, _set_now_parts = (
    BuiltSubmission.__dict__[f].__set__ for f in ("parts", "_task", "_now_parts")
)


def built_submission(
    task_class: str,
    created: dt.datetime,
    payload: Message | None,
    reminder_id: str | None,
    parts: tuple[Any, ...],
    task: Any,
    now_parts: tuple[int, int],
) -> BuiltSubmission:
    """A `BuiltSubmission` of `task` added at `created`, whose request is built when read."""
    sub: BuiltSubmission = _new(BuiltSubmission)
    _set_task_class(sub, task_class)
    _set_created(sub, created)
    _set_payload(sub, payload)
    _set_reminder_id(sub, reminder_id)
    _set_parts(sub, parts)
    _set_task(sub, task)
    _set_now_parts(sub, now_parts)
    return sub


@runtime_checkable
class Submitter(Protocol):
    """Creates tasks. Raises `tq.SubmitError` on failure.

    A task whose name exists already must raise SubmitError with code
    ALREADY_EXISTS (callers count it as success, unless asked to raise
    `tq.TaskAlreadyAdded`). A submitter may say what it takes with boolean
    attributes `takes_queues` (default true) and `takes_topics` (default
    false); `add_task` refuses (ConfigError) a task whose submitter does not
    take its kind.

    `submit` may return the full name of the task it created (the one the
    destination picked when the request had none); `add_task` hands it back
    in its `tq.AddedTask`. Returning None is fine: the handle then carries
    the name add_task gave the task, or None for one the destination named.

    Optionally, `submit_batch(submissions)` (and `submit_batch_async`)
    creates several tasks in one call, returning for each its name (or
    None) or the SubmitError that refused it, and raising SubmitError only
    when none was created. `add_task` of several tasks outside a
    transaction uses it when present and no tracer is installed (the
    database queue writes such a batch in one statement).
    """

    def submit(self, submission: Submission) -> str | None:
        """Creates the task (blocking); returns its full name if known."""
        ...

    async def submit_async(self, submission: Submission) -> str | None:
        """Creates the task without blocking the event loop; returns its full name if known."""
        ...


@runtime_checkable
class TaskDeleter(Protocol):
    """A submitter that can also delete the tasks it created (optional).

    `Dispatcher.delete_task` uses it; a submitter without these methods
    (one that only submits, or a destination that cannot take tasks back)
    makes it raise ConfigError. `name` is a full task name, checked by the
    dispatcher. Both return True when a waiting (or running) task was
    deleted, False when there was no such task to delete, and raise
    `tq.SubmitError` for any other failure.
    """

    def delete_task(self, name: str) -> bool:
        """Deletes the task `name` (blocking)."""
        ...

    async def delete_task_async(self, name: str) -> bool:
        """Deletes the task `name` without blocking the event loop."""
        ...


_current: contextvars.ContextVar[Submitter | None] = contextvars.ContextVar(
    "tq_submitter", default=None
)


def current_submitter() -> Submitter | None:
    """The submitter set by `use_submitter` in this context, if any."""
    return _current.get()


@contextlib.contextmanager
def use_submitter(submitter: Submitter) -> Iterator[Submitter]:
    """Sends every task added inside the `with` block to `submitter`."""
    token = _current.set(submitter)
    try:
        yield submitter
    finally:
        _current.reset(token)


_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "tq_submit_deadline", default=None
)


def time_left() -> float | None:
    """Seconds left before the current submit deadline, or None if there is none.

    Submitters that retry or wait honour it (see `CloudTasksSubmitter`).
    """
    d = _deadline.get()
    return None if d is None else d - time.monotonic()


class submit_deadline:
    """Bounds the time of every submit (and its retries) inside the block.

    `with submit_deadline(seconds): ...`; nested deadlines keep the earlier
    one. A class, not a generator: the outbox enters one per submit.
    """

    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def __enter__(self) -> None:
        new = time.monotonic() + self._seconds
        old = _deadline.get()
        self._token = _deadline.set(new if old is None or new < old else old)

    def __exit__(self, *exc: object) -> None:
        _deadline.reset(self._token)


def takes_topics(submitter: Submitter) -> bool:
    """Whether `submitter` publishes the messages of topic classes."""
    return bool(getattr(submitter, "takes_topics", False))


def takes_queues(submitter: Submitter) -> bool:
    """Whether `submitter` creates Cloud Tasks tasks (every submitter unless it says not)."""
    return bool(getattr(submitter, "takes_queues", True))


class Router:
    """A Submitter sending each task where its class says: queues to one, topics to another.

    Args:
      queues: takes the tasks of queue classes (e.g. `tq.CloudTasksSubmitter()`).
      topics: takes the messages of topic classes (e.g. `tq.pubsub.Publisher()`).

    Either may be None; a task of the missing kind raises `SubmitError`
    FAILED_PRECONDITION (and `add_task` refuses it up front with a
    ConfigError). `close()` / `aclose()` close both, where they can.
    """

    def __init__(self, *, queues: Submitter | None = None, topics: Submitter | None = None):
        self.queues = queues
        self.topics = topics

    @property
    def takes_queues(self) -> bool:
        return self.queues is not None and takes_queues(self.queues)

    @property
    def takes_topics(self) -> bool:
        return self.topics is not None and takes_topics(self.topics)

    def __repr__(self) -> str:
        return f"Router(queues={self.queues!r}, topics={self.topics!r})"

    def _for(self, submission: Submission) -> Submitter:
        if type(submission.request) is PublishRequest:
            s, what = self.topics, "topics (Pub/Sub)"
        else:
            s, what = self.queues, "queues (Cloud Tasks)"
        if s is None:
            raise SubmitError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"task of class {submission.task_class!r}: this Router has no submitter for {what}",
            )
        return s

    def submit(self, submission: Submission) -> str | None:
        return self._for(submission).submit(submission)

    async def submit_async(self, submission: Submission) -> str | None:
        return await self._for(submission).submit_async(submission)

    def _deleter(self) -> TaskDeleter:
        if not isinstance(self.queues, TaskDeleter):
            raise ConfigError(
                f"this Router cannot delete tasks: its queues submitter {self.queues!r} has "
                "no delete_task (Pub/Sub messages cannot be deleted)"
            )
        return self.queues

    def delete_task(self, name: str) -> bool:
        """Deletes a Cloud Tasks task through the `queues` submitter (see `tq.TaskDeleter`)."""
        return self._deleter().delete_task(name)

    async def delete_task_async(self, name: str) -> bool:
        return await self._deleter().delete_task_async(name)

    def close(self) -> None:
        for s in (self.queues, self.topics):
            close = getattr(s, "close", None)
            if callable(close):
                close()

    async def aclose(self) -> None:
        for s in (self.queues, self.topics):
            aclose = getattr(s, "aclose", None)
            if callable(aclose):
                await aclose()
            else:
                close = getattr(s, "close", None)
                if callable(close):
                    close()
