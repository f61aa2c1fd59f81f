"""Errors the in-memory scheduler raises from `run` / `run_async`."""

from __future__ import annotations

from tqtesting._records import TaskRecord


class SchedulerError(RuntimeError):
    """A run could not do what it was asked (base class)."""


class TaskFailed(SchedulerError):
    """A task failed for good with an unexpected error.

    Raised by a run when a task's last attempt ended in an exception other
    than tq's handler outcomes, or in a rejected push (unknown class, no
    handler, bad body). The handler's exception is chained (`__cause__`) and
    kept in `task.error`.
    """

    def __init__(self, task: TaskRecord) -> None:
        super().__init__(
            f"task {task.task_id} of class {task.class_id!r} failed after {task.attempts} "
            f"attempt(s): HTTP {task.last_status} ({task.outcome}): {task.error!r}"
        )
        self.task = task


class RunLimitExceeded(SchedulerError):
    """A run reached its `max_executions` cap (a task chain that never ends?)."""
