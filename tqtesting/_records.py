"""What the in-memory scheduler knows about each task: records and lists of them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Callable, Iterator, Sequence
from typing import overload

from google.protobuf.message import Message


class TaskStatus(enum.Enum):
    """Where a task is in its life.

    * `PENDING`: waiting for its ETA (first run or a retry).
    * `EXECUTING`: its handler is running.
    * `FINISHED`: done: the push answered 200 or 204 (`tq.Ignore`), or the task
      was not meant for tq's push endpoint (see `TaskRecord.pushed`).
    * `FAILED`: dropped: the handler raised `tq.Fatal` (202), or the last of
      `max_attempts` attempts failed.
    * `DELETED`: deleted (`Dispatcher.delete_task`) while it waited or ran;
      it is never run (again).
    """

    PENDING = "pending"
    EXECUTING = "executing"
    FINISHED = "finished"
    FAILED = "failed"
    DELETED = "deleted"


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    """One execution of a task: when, the HTTP status and the push outcome."""

    at: dt.datetime
    status: int
    outcome: str
    error: BaseException | None = None


@dataclasses.dataclass(eq=False, slots=True)
class TaskRecord:
    """One task the scheduler holds.

    Attributes:
      name: the full task name `projects/P/locations/L/queues/Q/tasks/ID`
        (generated when the request had none, as Cloud Tasks does); for a
        Pub/Sub message, `projects/P/subscriptions/S/messages/<message ID>`
        (one record per subscription of the topic).
      class_id: the task class ID the task was added with.
      payload: the decoded payload, or None when it cannot be decoded (a
        `CustomPayload` task read back from a reminder).
      eta: when the task (or its next retry) is due.
      attempts: how many times it was executed so far.
      status: a `TaskStatus`.
      last_status: the HTTP status of the last attempt, None before the first.
      error: the exception of the last failed attempt (the handler's, or why
        the push was rejected), None after a success.
      outcome: the push outcome of the last attempt ("ok", "fatal", "ignore",
        "retry", "transient", "error", a rejection reason such as
        "unknown_class", "lost" for a response lost on purpose (see
        `lose_response`), or "not_pushed").
      pushed: False for a task whose request does not go to tq's push endpoint
        of its class (a `CustomPayload` pointing elsewhere): such a task is not
        executed, it is recorded FINISHED with outcome "not_pushed" when due.
      history: every attempt, oldest first.
      request: the google.cloud.tasks.v2 CreateTaskRequest as submitted (a
        `tq.internal.PublishRequest` for a message).
      created: when the task was submitted (scheduler clock).
      reminder_id: set when the task came from a transactional reminder.
      priority: the task's `tq.Task.priority` (due tasks run highest first,
        within the scheduler's `priority_step` head start).
    """

    name: str
    class_id: str
    payload: Message | None
    eta: dt.datetime
    request: Message
    created: dt.datetime
    seq: int
    pushed: bool = True
    reminder_id: str | None = None
    attempts: int = 0
    status: TaskStatus = TaskStatus.PENDING
    last_status: int | None = None
    error: BaseException | None = None
    outcome: str = ""
    history: list[Attempt] = dataclasses.field(default_factory=list)
    priority: int = 0

    @property
    def task_id(self) -> str:
        """The last part of the task name."""
        return self.name.rsplit("/", 1)[-1]

    @property
    def queue(self) -> str:
        """The queue's short ID (the subscription's, for a Pub/Sub message)."""
        head = self.name.split("/tasks/", 1)[0]
        if "/subscriptions/" in head:
            head = head.split("/messages/", 1)[0]
        return head.rsplit("/", 1)[-1]

    def snapshot(self) -> TaskRecord:
        return dataclasses.replace(self, history=list(self.history))

    def __repr__(self) -> str:
        return (
            f"<TaskRecord {self.class_id} {self.task_id} {self.status.value} "
            f"attempts={self.attempts} eta={self.eta.isoformat()}>"
        )


class TaskList(Sequence[TaskRecord]):
    """An immutable list of task records (a snapshot), in submission order."""

    __slots__ = ("_items",)

    def __init__(self, items: Sequence[TaskRecord] = ()) -> None:
        self._items = tuple(items)

    @overload
    def __getitem__(self, index: int) -> TaskRecord: ...

    @overload
    def __getitem__(self, index: slice) -> TaskList: ...

    def __getitem__(self, index: int | slice) -> TaskRecord | TaskList:
        if isinstance(index, slice):
            return TaskList(self._items[index])
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[TaskRecord]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"TaskList({list(self._items)!r})"

    def filter(self, keep: Callable[[TaskRecord], bool]) -> TaskList:
        """The records for which `keep(record)` is true."""
        return TaskList([r for r in self._items if keep(r)])

    def pending(self) -> TaskList:
        """Tasks waiting for their first run or a retry."""
        return self._with(TaskStatus.PENDING)

    def executing(self) -> TaskList:
        """Tasks whose handler is running now."""
        return self._with(TaskStatus.EXECUTING)

    def finished(self) -> TaskList:
        """Tasks done for good with a 200 or 204 (or never meant for tq's endpoint)."""
        return self._with(TaskStatus.FINISHED)

    def failed(self) -> TaskList:
        """Tasks dropped by `tq.Fatal` or out of attempts."""
        return self._with(TaskStatus.FAILED)

    def deleted(self) -> TaskList:
        """Tasks deleted before they finished."""
        return self._with(TaskStatus.DELETED)

    def of_class(self, class_id: str) -> TaskList:
        """Tasks of the task class `class_id`."""
        return self.filter(lambda r: r.class_id == class_id)

    def payloads(self) -> list[Message]:
        """The decoded payloads, in order; records without one are left out."""
        return [r.payload for r in self._items if r.payload is not None]

    def names(self) -> list[str]:
        """The full task names, in order."""
        return [r.name for r in self._items]

    def _with(self, status: TaskStatus) -> TaskList:
        return self.filter(lambda r: r.status is status)
