"""Queues and tasks of a backend, as the `tq` command and the dashboard see and act on them.

`QueueAdmin` is the protocol; `DbQueueAdmin` implements it on the database
queue (`tq.dbqueue.Admin`). `tq.admin.CloudTasksAdmin` implements it on
Cloud Tasks.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import sqlalchemy as sa

    from tq.dbqueue import TaskInfo

QUEUE_KEYS = ["queue", "state", "rate_per_s", "max_concurrent", "max_attempts"]
"""Keys of `list_queues` rows (`state`: RUNNING or PAUSED)."""

STATS_KEYS = ["queue", "state", "tasks", "oldest_eta", "in_flight", "done", "failed",
              "executed_last_minute"]  # fmt: skip
"""Keys of `stats` rows; a backend that cannot tell leaves a value None."""

TASK_KEYS = ["queue", "name", "task_class", "state", "eta", "attempts", "last_status", "url"]
"""Keys of task rows (also `last_error`, `created`; `get_task` adds the request)."""


class QueueAdmin(Protocol):
    """What the `tq` command and the dashboard ask of a task backend.

    `name` is "dbqueue" or "cloudtasks"; `states` are the values the
    `state` filter takes. Methods answering None mean "this backend cannot
    tell" (Cloud Tasks keeps no finished tasks, so no history).
    """

    name: str
    states: tuple[str, ...]

    def list_queues(self) -> list[dict[str, Any]]: ...
    def stats(self, queue: str | None = None) -> list[dict[str, Any]]: ...
    def has_queue(self, queue: str) -> bool: ...
    def pause(self, queue: str) -> bool: ...
    def resume(self, queue: str) -> bool: ...
    def purge(self, queue: str) -> int | None: ...
    def list_tasks(
        self, queue: str | None, state: str | None, task_class: str | None, limit: int
    ) -> list[dict[str, Any]]: ...
    def page_tasks(
        self,
        queue: str,
        *,
        state: str | None = None,
        task_class: str | None = None,
        order: str = "oldest",
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]: ...
    def get_task(self, queue: str, name: str) -> dict[str, Any] | None: ...
    def delete_task(self, queue: str, name: str) -> bool: ...
    def run_task(self, queue: str, name: str) -> bool: ...
    def count_by_state(self, queue: str) -> dict[str, int] | None: ...
    def history(self, queue: str | None = None) -> list[dict[str, Any]] | None: ...
    def schedules(self) -> list[dict[str, Any]] | None: ...
    def close(self) -> None: ...


def _state(paused: bool) -> str:
    return "PAUSED" if paused else "RUNNING"


def task_row(t: TaskInfo, *, full: bool = False) -> dict[str, Any]:
    """A database-queue task as a row (with `full`, its request and lease too)."""
    row: dict[str, Any] = {
        "queue": t.queue, "name": t.name, "task_class": t.task_class, "state": t.state.value,
        "eta": t.eta, "attempts": t.attempts, "last_status": t.last_status,
        "last_error": t.last_error, "url": t.url, "created": t.created,
        "priority": t.priority, "tag": t.tag, "progress": t.progress,
    }  # fmt: skip
    if full:
        try:
            headers = json.loads(t.headers)
        except ValueError:
            headers = {"(unreadable)": t.headers}
        row.update(
            method=t.method, headers=headers, body=t.body, executions=t.executions,
            first_attempt=t.first_attempt, last_attempt=t.last_attempt, finished=t.finished,
            lease_owner=t.lease_owner, lease_expires=t.lease_expires, result=t.result,
            failure=t.failure,
        )  # fmt: skip
    return row


class DbQueueAdmin:
    """`QueueAdmin` on the database queue in `engine` (which the caller owns)."""

    name = "dbqueue"

    def __init__(self, engine: sa.Engine, *, dispose: bool = False) -> None:
        from tq.dbqueue import Admin, State

        self.engine = engine
        self.admin = Admin(engine)
        self.states = tuple(s.value for s in State)
        self._dispose = dispose

    def close(self) -> None:
        if self._dispose:
            self.engine.dispose()

    def list_queues(self) -> list[dict[str, Any]]:
        return [
            {"queue": q.name, "state": _state(q.paused), "rate_per_s": q.config.rate_per_s,
             "max_concurrent": q.config.max_concurrent, "max_attempts": q.config.max_attempts}
            for q in self.admin.list_queues()
        ]  # fmt: skip

    def stats(self, queue: str | None = None) -> list[dict[str, Any]]:
        return [
            {"queue": s.name, "state": _state(s.paused), "tasks": s.tasks,
             "oldest_eta": s.oldest_eta, "in_flight": s.in_flight, "done": s.done,
             "failed": s.failed, "executed_last_minute": s.executed_last_minute,
             "rate_per_s": s.effective_rate}
            for s in self.admin.queue_stats(queue)
        ]  # fmt: skip

    def has_queue(self, queue: str) -> bool:
        return any(q.name == queue for q in self.admin.list_queues())

    def pause(self, queue: str) -> bool:
        return self.admin.pause_queue(queue)

    def resume(self, queue: str) -> bool:
        return self.admin.resume_queue(queue)

    def purge(self, queue: str) -> int | None:
        """How many live tasks were deleted; None if there is no such queue."""
        if not self.has_queue(queue):
            return None
        return self.admin.purge_queue(queue)

    def _check_state(self, state: str | None) -> None:
        if state is not None and state not in self.states:
            raise ValueError(
                f"state {state!r}: the database queue's states are " + ", ".join(self.states)
            )

    def list_tasks(
        self, queue: str | None, state: str | None, task_class: str | None, limit: int
    ) -> list[dict[str, Any]]:
        """Up to `limit` matching tasks, oldest first."""
        self._check_state(state)
        found = self.admin.list_tasks(queue=queue, state=state, task_class=task_class, limit=limit)
        return [task_row(t) for t in found]

    def page_tasks(
        self,
        queue: str,
        *,
        state: str | None = None,
        task_class: str | None = None,
        order: str = "oldest",
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the queue's tasks (see `tq.dbqueue.Admin.page_tasks`)."""
        self._check_state(state)
        found, nxt = self.admin.page_tasks(
            queue=queue, state=state, task_class=task_class, order=order, limit=limit,
            cursor=cursor,
        )  # fmt: skip
        return [task_row(t) for t in found], nxt

    def get_task(self, queue: str, name: str) -> dict[str, Any] | None:
        t = self.admin.get_task(queue, name)
        return None if t is None else task_row(t, full=True)

    def delete_task(self, queue: str, name: str) -> bool:
        """Deletes a live task (it will not run); False if none is live under that name."""
        return self.admin.delete_task(queue, name)

    def run_task(self, queue: str, name: str) -> bool:
        """Makes a pending task due now or gives a failed one a fresh start; else False."""
        return self.admin.run_task(queue, name)

    def count_tasks(self, queue: str | None, state: str | None, task_class: str | None) -> int:
        """How many tasks match the filters (None matches everything)."""
        self._check_state(state)
        return self.admin.count_tasks(queue=queue, state=state, task_class=task_class)

    def clean(
        self,
        queue: str | None,
        state: str | None,
        task_class: str | None,
        *,
        dry_run: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Deletes tasks by filters (see `tq.dbqueue.Admin.clean`); what it did as a row."""
        self._check_state(state)
        c = self.admin.clean(
            queue=queue, state=state, task_class=task_class, dry_run=dry_run, progress=progress
        )
        return dataclasses.asdict(c)

    def count_by_state(self, queue: str) -> dict[str, int] | None:
        return {s.value: n for s, n in self.admin.count_by_state(queue).items()}

    def history(self, queue: str | None = None) -> list[dict[str, Any]] | None:
        """The last hour by minute: tasks added, finished and failed, and the depth."""
        return [
            {"start": p.start, "added": p.added, "finished": p.finished, "failed": p.failed,
             "depth": p.depth}
            for p in self.admin.history(queue, window=dt.timedelta(hours=1), buckets=60)
        ]  # fmt: skip

    def schedules(self) -> list[dict[str, Any]] | None:
        """The cron schedules the workers fire, with their next and last ticks."""
        from tq.dbqueue import cron_states

        return [
            {"class": c.name, "schedule": c.schedule, "time_zone": c.time_zone,
             "next_tick": c.next_tick, "last_tick": c.last_tick, "last_fired": c.last_fired}
            for c in cron_states(self.engine)
        ]  # fmt: skip
