"""Queues and tasks as the `queues` and `tasks` commands see them, on either backend.

`DbQueueBackend` operates the database queue (`tq.dbqueue.Admin`);
`CloudTasksBackend` operates Google Cloud Tasks (or its emulator). Both
answer with the same plain rows, so the commands print them alike.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

from tq.cli import _wiring
from tq.cli._errors import CONFIG, fail
from tq.cli._options import Config

QUEUE_COLUMNS = ["queue", "state", "rate_per_s", "max_concurrent", "max_attempts"]
STATS_COLUMNS = ["queue", "state", "tasks", "oldest_eta", "in_flight", "done", "failed",
                 "executed_last_minute"]  # fmt: skip
TASK_COLUMNS = ["queue", "name", "task_class", "state", "eta", "attempts", "last_status", "url"]


class Backend(Protocol):
    name: str

    def list_queues(self) -> list[dict[str, Any]]: ...
    def stats(self, queue: str | None) -> list[dict[str, Any]]: ...
    def pause(self, queue: str) -> bool: ...
    def resume(self, queue: str) -> bool: ...
    def purge(self, queue: str) -> int | None: ...
    def list_tasks(
        self, queue: str | None, state: str | None, task_class: str | None, limit: int
    ) -> list[dict[str, Any]]: ...
    def delete_task(self, queue: str, name: str) -> bool: ...
    def close(self) -> None: ...


def open_backend(cfg: Config) -> Backend:
    if _wiring.backend_of(cfg) == "cloudtasks":
        return CloudTasksBackend(cfg)
    return DbQueueBackend(cfg)


class DbQueueBackend:
    name = "dbqueue"

    def __init__(self, cfg: Config) -> None:
        from tq.dbqueue import Admin

        self.engine = _wiring.sql_engine(_wiring.require_db(cfg))
        self.admin = Admin(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def list_queues(self) -> list[dict[str, Any]]:
        return [
            {"queue": q.name, "state": "PAUSED" if q.paused else "RUNNING",
             "rate_per_s": q.config.rate_per_s, "max_concurrent": q.config.max_concurrent,
             "max_attempts": q.config.max_attempts}
            for q in self.admin.list_queues()
        ]  # fmt: skip

    def stats(self, queue: str | None) -> list[dict[str, Any]]:
        return [
            {"queue": s.name, "state": "PAUSED" if s.paused else "RUNNING", "tasks": s.tasks,
             "oldest_eta": s.oldest_eta, "in_flight": s.in_flight, "done": s.done,
             "failed": s.failed, "executed_last_minute": s.executed_last_minute}
            for s in self.admin.queue_stats(queue)
        ]  # fmt: skip

    def pause(self, queue: str) -> bool:
        return self.admin.pause_queue(queue)

    def resume(self, queue: str) -> bool:
        return self.admin.resume_queue(queue)

    def purge(self, queue: str) -> int | None:
        if not any(q.name == queue for q in self.admin.list_queues()):
            return None
        return self.admin.purge_queue(queue)

    def list_tasks(
        self, queue: str | None, state: str | None, task_class: str | None, limit: int
    ) -> list[dict[str, Any]]:
        from tq.dbqueue import State

        if state is not None and state not in {s.value for s in State}:
            raise fail(
                f"--state {state!r}: the database queue's states are "
                + ", ".join(s.value for s in State),
                CONFIG,
            )
        return [
            {"queue": t.queue, "name": t.name, "task_class": t.task_class,
             "state": t.state.value, "eta": t.eta, "attempts": t.attempts,
             "last_status": t.last_status, "last_error": t.last_error, "url": t.url}
            for t in self.admin.list_tasks(
                queue=queue, state=state, task_class=task_class, limit=limit
            )
        ]  # fmt: skip

    def delete_task(self, queue: str, name: str) -> bool:
        return self.admin.delete_task(queue, name)

    def run_task(self, queue: str, name: str) -> bool:
        return self.admin.run_task(queue, name)


class CloudTasksBackend:
    """Cloud Tasks queues of `--cloud-project` in `--cloud-region`."""

    name = "cloudtasks"

    def __init__(self, cfg: Config) -> None:
        if not cfg.cloud_project or not cfg.cloud_region:
            raise fail("Cloud Tasks needs --cloud-project and --cloud-region", CONFIG)
        self.parent = f"projects/{cfg.cloud_project}/locations/{cfg.cloud_region}"
        self._submitter = _wiring.cloudtasks_submitter(cfg)
        self.client = self._submitter.client

    def close(self) -> None:
        self._submitter.close()

    def _path(self, queue: str) -> str:
        return queue if queue.startswith("projects/") else f"{self.parent}/queues/{queue}"

    def list_queues(self) -> list[dict[str, Any]]:
        out = []
        for q in self.client.list_queues(parent=self.parent):
            out.append(
                {"queue": q.name.rsplit("/", 1)[-1], "state": q.state.name,
                 "rate_per_s": q.rate_limits.max_dispatches_per_second,
                 "max_concurrent": q.rate_limits.max_concurrent_dispatches,
                 "max_attempts": q.retry_config.max_attempts}
            )  # fmt: skip
        return out

    def stats(self, queue: str | None) -> list[dict[str, Any]]:
        # Cloud Tasks v2 has no stats call: count by listing (bounded).
        names = [queue] if queue else [q["queue"] for q in self.list_queues()]
        out = []
        for name in names:
            q = self.client.get_queue(name=self._path(name))
            tasks = list(self.client.list_tasks(parent=self._path(name)))
            etas = [e for e in (_when(t.schedule_time) for t in tasks) if e is not None]
            out.append(
                {"queue": name, "state": q.state.name, "tasks": len(tasks),
                 "oldest_eta": min(etas) if etas else None, "in_flight": None, "done": None,
                 "failed": None, "executed_last_minute": None}
            )  # fmt: skip
        return out

    def _call(self, fn: Any, queue: str) -> bool:
        from google.api_core import exceptions as gexc

        try:
            fn(name=self._path(queue))
        except gexc.NotFound:
            return False
        return True

    def pause(self, queue: str) -> bool:
        return self._call(self.client.pause_queue, queue)

    def resume(self, queue: str) -> bool:
        return self._call(self.client.resume_queue, queue)

    def purge(self, queue: str) -> int | None:
        # Cloud Tasks does not say how many tasks a purge removed.
        return 0 if self._call(self.client.purge_queue, queue) else None

    def list_tasks(
        self, queue: str | None, state: str | None, task_class: str | None, limit: int
    ) -> list[dict[str, Any]]:
        if state not in (None, "pending"):
            raise fail("Cloud Tasks lists pending tasks only (--state pending)", CONFIG)
        names = [queue] if queue else [q["queue"] for q in self.list_queues()]
        out: list[dict[str, Any]] = []
        for name in names:
            for t in self.client.list_tasks(parent=self._path(name)):
                url = t.http_request.url or t.app_engine_http_request.relative_uri
                cls = _class_of(url)
                if task_class is not None and cls != task_class:
                    continue
                out.append(
                    {"queue": name, "name": t.name.rsplit("/", 1)[-1], "task_class": cls,
                     "state": "pending", "eta": _when(t.schedule_time),
                     "attempts": t.dispatch_count,
                     "last_status": t.last_attempt.response_status.code or None
                     if t.last_attempt else None, "last_error": None, "url": url}
                )  # fmt: skip
                if len(out) >= limit:
                    return out
        return out

    def delete_task(self, queue: str, name: str) -> bool:
        from google.api_core import exceptions as gexc

        try:
            self.client.delete_task(name=f"{self._path(queue)}/tasks/{name}")
        except gexc.NotFound:
            return False
        return True


def _when(ts: Any) -> dt.datetime | None:
    if ts is None:
        return None
    if isinstance(ts, dt.datetime):
        return ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)
    return None


def _class_of(url: str) -> str:
    """The class ID in a push URL made with the default routing prefix, else "?"."""
    from tq._taskclass import DEFAULT_ROUTING_PREFIX

    path = url.split("://", 1)[-1]
    path = path[path.find("/") :] if "/" in path else ""
    if path.startswith(DEFAULT_ROUTING_PREFIX):
        return path[len(DEFAULT_ROUTING_PREFIX) :].split("/", 1)[0] or "?"
    return "?"
