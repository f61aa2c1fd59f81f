"""tq: background tasks on Google Cloud Tasks with a transactional outbox.

Register protobuf task classes with a `Dispatcher` (or the process-wide
`tq.default` through the module shortcuts), add tasks with `add_task` /
`add_task_async`, and mount `tq.asgi.app(dispatcher)` to receive the pushes.
Inside a transaction opened by `tq.txn.sql` or `tq.txn.spanner`, tasks are
written as reminders and submitted if and only if the transaction commits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tq import clock, txn
from tq._background import BackgroundStats, BackgroundSubmits, background_submits
from tq._cloudtasks import CloudTasksSubmitter
from tq._dispatcher import Dispatcher, Sweeper
from tq._errors import (
    ConfigError,
    Fatal,
    Ignore,
    PayloadTooLarge,
    Retry,
    SubmitError,
    TaskAlreadyAdded,
    TQError,
    TransactionError,
    Transient,
    ValidationError,
)
from tq._execution import ExecutionInfo, execution_info
from tq._handles import AddedTask, TaskDeletion
from tq._submitter import (
    Router,
    Submission,
    Submitter,
    TaskDeleter,
    current_submitter,
    use_submitter,
)
from tq._task import Task
from tq._taskclass import CustomPayload, Handler, Kind, TaskClass
from tq.cron import Cron

__version__ = "0.1.0"

default = Dispatcher()
"""The process-wide dispatcher behind the module shortcuts."""


def register_task_class(cls: TaskClass) -> TaskClass:
    """`tq.default.register_task_class(cls)`."""
    return default.register_task_class(cls)


def task_class(**kwargs: Any) -> Callable[[Any], Any]:
    """`tq.default.task_class(...)`: a decorator registering a class and handler."""
    return default.task_class(**kwargs)


def add_task(*tasks: Task, raise_if_exists: bool | None = None) -> list[AddedTask]:
    """`tq.default.add_task(...)`: a `tq.AddedTask` per task, in order."""
    return default.add_task(*tasks, raise_if_exists=raise_if_exists)


async def add_task_async(*tasks: Task, raise_if_exists: bool | None = None) -> list[AddedTask]:
    """`tq.default.add_task_async(...)`: a `tq.AddedTask` per task, in order."""
    return await default.add_task_async(*tasks, raise_if_exists=raise_if_exists)


def sweep() -> None:
    """`tq.default.sweep()`."""
    default.sweep()


__all__ = [
    "AddedTask",
    "BackgroundStats",
    "BackgroundSubmits",
    "CloudTasksSubmitter",
    "ConfigError",
    "Cron",
    "CustomPayload",
    "Dispatcher",
    "ExecutionInfo",
    "Fatal",
    "Handler",
    "Ignore",
    "Kind",
    "PayloadTooLarge",
    "Retry",
    "Router",
    "Submission",
    "SubmitError",
    "Submitter",
    "Sweeper",
    "TQError",
    "Task",
    "TaskAlreadyAdded",
    "TaskClass",
    "TaskDeleter",
    "TaskDeletion",
    "TransactionError",
    "Transient",
    "ValidationError",
    "add_task",
    "add_task_async",
    "background_submits",
    "clock",
    "current_submitter",
    "default",
    "execution_info",
    "register_task_class",
    "sweep",
    "task_class",
    "txn",
    "use_submitter",
]
