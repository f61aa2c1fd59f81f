"""Handles on tasks: what `add_task` returns, what deleting a task answers, task names.

A task's name is its full resource name at its destination. On Cloud Tasks
(and on the database queue and tqtesting, which mirror it) that is
`projects/P/locations/L/queues/Q/tasks/ID`; a message published to a Pub/Sub
topic (by `tq.pubsub.Publisher`, the database queue or tqtesting) is named
`projects/P/topics/T/messages/<message ID>`. The handle types say nothing
about where the task went beyond that name, so every destination returns
the same ones.
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

from tq._errors import ValidationError

# Cloud Tasks' rules: a project ID of lowercase letters, digits, "-", ":"
# and "."; a location of lowercase letters, digits and "-"; a queue ID of
# letters, digits and "-"; a task ID of letters, digits, "-" and "_", at
# most 500 characters. \Z, not $: "$" also matches before a final newline.
TASK_NAME_RE = re.compile(
    r"^projects/[a-z0-9\-:.]{1,100}/locations/[a-z0-9\-]{1,100}"
    r"/queues/[a-zA-Z0-9-]{1,100}/tasks/[A-Za-z0-9_-]{1,500}\Z"
)
TASK_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,500}\Z")


class AddedTask(NamedTuple):
    """One task `add_task` added (it returns one per task, in order).

    Attributes:
      name: the task's full name at its destination (Cloud Tasks:
        `projects/P/locations/L/queues/Q/tasks/ID`; a Pub/Sub message:
        `projects/P/topics/T/messages/<message ID>`). For a task without a
        deduplication key added outside a transaction, the destination picks
        the name and this is the one it answered with; None when the
        submitter could not learn it (a submitter that returns nothing), and
        for a message added in a transaction: it is published after the
        commit, and `reminder_id` (its `tq_task_id` attribute) is its handle.
      task_class: the ID of the task's class.
      reminder_id: for a task added in a transaction, its reminder's ID
        (which is also the last segment of `name`); None otherwise.
      existed: True when a task of that name existed already, so that this
        add created nothing (absorbed, or raised as `tq.TaskAlreadyAdded`
        when asked to); False when this add created it; None when that is
        not known yet: a task added in a transaction is submitted after
        its transaction commits (its name is random, so it is new).

    A named tuple: every `add_task` makes one per task, and a tuple is the
    cheapest immutable value Python builds.
    """

    name: str | None
    task_class: str
    reminder_id: str | None = None
    existed: bool | None = None

    @property
    def task_id(self) -> str | None:
        """The last segment of `name` (the task ID), or None."""
        name = self.name
        return None if name is None else name.rpartition("/")[2]


_tuple_new = tuple.__new__


def added_task(
    name: str | None, task_class: str, reminder_id: str | None, existed: bool | None
) -> AddedTask:
    """`AddedTask(name, task_class, reminder_id, existed)` at a third of the cost."""
    return _tuple_new(AddedTask, (name, task_class, reminder_id, existed))


@dataclasses.dataclass(frozen=True, slots=True)
class TaskDeletion:
    """What deleting a task did.

    Attributes:
      name: the full name of the task looked for.
      deleted: True when the task was waiting (or running) and is deleted:
        it will not run (again). False when no such task was there to
        delete: never added, added under another name, run to its end
        already, failed for good, or deleted before (Cloud Tasks answers
        NOT_FOUND for all of these, and for a queue that does not exist).
    """

    name: str
    deleted: bool


def check_task_name(name: object) -> str:
    """`name` if it is a full task name; ValidationError saying what is wrong otherwise."""
    if not isinstance(name, str):
        raise ValidationError(f"a task name must be a string, not {name!r}")
    if TASK_NAME_RE.match(name):
        return name
    parent, sep, task_id = name.rpartition("/tasks/")
    if not sep:
        why = "it has no '/tasks/<ID>'"
    elif not TASK_ID_RE.match(task_id):
        why = f"task ID {task_id!r} must be 1 to 500 of [A-Za-z0-9_-]"
    else:
        why = (
            f"{parent!r} is not a queue name 'projects/P/locations/L/queues/Q' (P: lowercase "
            "letters, digits, '-', ':' or '.'; L: lowercase letters, digits or '-'; Q: "
            "letters, digits or '-')"
        )
    raise ValidationError(
        f"task name {name!r} is malformed: {why}; a task name is "
        "'projects/P/locations/L/queues/Q/tasks/ID'"
    )
