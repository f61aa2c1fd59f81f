"""The Submitter seam: who creates the tasks that tq builds.

`add_task` hands every task to the submitter of the current context:
`use_submitter()` sets one (a contextvar, so it follows threads started with
a copied context and asyncio tasks); otherwise the dispatcher's own is used
(a `CloudTasksSubmitter` in production). Tests and local runs swap in
`tqtesting.Scheduler` or the database queue.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from google.protobuf.message import Message


@dataclasses.dataclass(frozen=True, slots=True)
class Submission:
    """One task to create.

    `request` is a google.cloud.tasks.v2 CreateTaskRequest (the raw protobuf
    class). `payload` is the original message when the submission comes
    straight from `add_task`, None when it was read back from a reminder.
    """

    request: Message
    task_class: str
    created: dt.datetime
    payload: Message | None = None
    reminder_id: str | None = None

    @property
    def task_name(self) -> str:
        """The full task name, or "" when Cloud Tasks picks one."""
        return str(self.request.task.name)  # type: ignore[attr-defined]


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


@runtime_checkable
class Submitter(Protocol):
    """Creates tasks. Raises `tq.SubmitError` on failure.

    A task whose name exists already must raise SubmitError with code
    ALREADY_EXISTS (callers count it as success).
    """

    def submit(self, submission: Submission) -> None:
        """Creates the task (blocking)."""
        ...

    async def submit_async(self, submission: Submission) -> None:
        """Creates the task without blocking the event loop."""
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
