"""Deleting a waiting task: which full name a deletion means, and who deletes it.

`Dispatcher.delete_task` takes a task's full name, a short one
(`<queue ID>/tasks/<task ID>`, in the dispatcher's project and region), a
`tq.AddedTask`, or a class and deduplication key; this module turns each
into the full name, refusing (ValidationError) whatever is malformed before
anything is asked of the destination. A task added in a transaction whose
reminder is still pending is taken back from the outbox first
(`forget_reminder`); then the submitter of the context deletes it if it
can (`tq.TaskDeleter`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from tq import _outbox
from tq._errors import ConfigError, ValidationError
from tq._handles import AddedTask, TaskDeletion, check_task_name
from tq._reminder import Reminder
from tq._request import Target, queue_path
from tq._submitter import Submitter, TaskDeleter
from tq._task import deduplicated_task_id
from tq._taskclass import SHORT_QUEUE_RE, Kind, TaskClass
from tq.txn._keyspace import id_to_int, int_to_id
from tq.txn._store import stores

log = logging.getLogger("tq")
_REMINDER_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")


def name_to_delete(
    task: object,
    task_class: object,
    deduplication_key: object,
    queue: object,
    *,
    find_class: Callable[[str], TaskClass | None],
    namespace: str,
    target: Target,
) -> str:
    """The full name `Dispatcher.delete_task`'s arguments mean; ValidationError if none."""
    if task is not None:
        if task_class is not None or deduplication_key is not None or queue is not None:
            raise ValidationError(
                "delete_task: name the task by its name (or handle), or by task_class and "
                "deduplication_key, not both"
            )
        return full_name(task, target)
    if task_class is None:
        raise ValidationError(
            "delete_task: give the task's name (or handle), or task_class and deduplication_key"
        )
    cls = find_class(task_class) if isinstance(task_class, str) else None
    return deduplicated_name(cls, str(task_class), deduplication_key, queue, namespace, target)


def forget_reminder(name: str) -> bool:
    """Takes back the reminder of task `name` if it is still pending; whether it was.

    A task added in a transaction is named `<queue>/tasks/<reminder ID>`.
    Until its reminder is submitted (the happy path after the commit, which
    may wait in a background queue, or the sweeper after a failure or a
    crash) the reminder is in its store: deleting the task deletes the
    reminder from every store registered with `tq.txn` (parked ones too),
    and keeps this process's happy path from submitting it. Only a reminder
    whose task has exactly this name is touched. Blocking (the stores').
    """
    task_id = name.rpartition("/tasks/")[2]
    if not _REMINDER_ID_RE.match(task_id):
        return False
    _outbox.cancel(task_id)
    found = False
    for store in stores():
        found_here = store.fetch_reminders([task_id])
        if not found_here:  # a store may keep parked ones apart
            key = id_to_int(task_id)
            found_here = store.list_parked(1, after=int_to_id(key - 1) if key else "")
        if any(r.id == task_id and _task_name(r) == name for r in found_here):
            store.delete_reminders([task_id])
            log.info(
                "tq: deleted pending reminder %s of task %s (store %s)",
                task_id,
                name,
                store.name,
                extra={"tq_task": name, "tq_reminder": task_id},
            )
            found = True
    return found


def _task_name(reminder: Reminder) -> str:
    try:
        return reminder.submission().task_name
    except Exception:  # a reminder that does not decode is not this task's
        return ""


def deletion(name: str, deleted: bool) -> TaskDeletion:
    """The answer of a deletion, logged."""
    if deleted:
        log.info("tq: deleted task %s", name, extra={"tq_task": name})
    else:
        log.info("tq: no waiting task %s to delete", name, extra={"tq_task": name})
    return TaskDeletion(name, bool(deleted))


def full_name(task: object, target: Target) -> str:
    """The full task name of `task` (a name, a short name or an AddedTask)."""
    if isinstance(task, AddedTask):
        if task.name is None and task.reminder_id is not None:
            raise ValidationError(
                f"the task of class {task.task_class!r} cannot be deleted by its handle: it "
                "is a Pub/Sub message added in a transaction (a published message cannot be "
                "deleted; its subscribers must skip it, by its tq_task_id attribute)"
            )
        if task.name is None:
            raise ValidationError(
                f"the task of class {task.task_class!r} cannot be deleted by its handle: its "
                "submitter did not say what the destination named it"
            )
        return check_task_name(_not_a_message(task.name))
    if isinstance(task, str) and not task.startswith("projects/"):
        queue, sep, task_id = task.partition("/tasks/")
        if sep and SHORT_QUEUE_RE.match(queue):
            return check_task_name(f"{queue_path(queue, target)}/tasks/{task_id}")
    return check_task_name(_not_a_message(task))


def _not_a_message(name: object) -> object:
    """`name`, unless it names a published Pub/Sub message (ValidationError)."""
    if isinstance(name, str) and "/topics/" in name and "/messages/" in name:
        raise ValidationError(
            f"task name {name!r} is malformed: it names a Pub/Sub message, and a published "
            "message cannot be deleted (its subscribers must skip it)"
        )
    return name


def deduplicated_name(
    cls: TaskClass | None,
    class_id: str,
    key: object,
    queue: object,
    namespace: str,
    target: Target,
) -> str:
    """The full name of the task of class `cls` added with deduplication key `key`."""
    if cls is None:
        raise ValidationError(f"no task class {class_id!r} is registered with this dispatcher")
    if cls.topic:
        raise ValidationError(
            f"task class {cls.id!r} publishes to a Pub/Sub topic: a message cannot be deleted"
        )
    if cls.kind is Kind.TRANSACTIONAL:
        raise ValidationError(
            f"task class {cls.id!r} is TRANSACTIONAL: its tasks have no deduplication key; "
            "delete one by its name (the AddedTask add_task returned)"
        )
    if not isinstance(key, str) or not key:
        raise ValidationError(f"deduplication_key must be a non-empty string, not {key!r}")
    if queue is not None and not isinstance(queue, str):
        raise ValidationError(f"queue must be a queue name, not {queue!r}")
    parent = queue_path(queue or cls.queue, target)
    return check_task_name(f"{parent}/tasks/{deduplicated_task_id(namespace, cls.id, key)}")


def deleter_of(submitter: Submitter) -> TaskDeleter:
    """`submitter` as a TaskDeleter; ConfigError if it cannot delete tasks."""
    if not isinstance(submitter, TaskDeleter):
        raise ConfigError(
            f"the submitter {submitter!r} cannot delete tasks (it has no delete_task and "
            "delete_task_async; see tq.TaskDeleter)"
        )
    return submitter
