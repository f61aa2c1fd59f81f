"""`QueueAdmin` on Google Cloud Tasks (or its emulator), through the API.

Cloud Tasks keeps only waiting tasks (state "pending" here) and has no
stats call in v2: waiting tasks are counted by listing them, finished ones
and in-flight counts are unknown (None), and there is no history.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

STATES: tuple[str, ...] = ("pending",)
_COUNT_LIMIT = 10_000  # tasks listed at most to count one queue's backlog


class CloudTasksAdmin:
    """The queues of `projects/<project>/locations/<region>`.

    `client` is a `CloudTasksClient`; `close` (optional) is called by
    `close()`. `CloudTasksAdmin.connect(...)` makes both.
    """

    name = "cloudtasks"
    states = STATES

    def __init__(
        self,
        client: Any,
        project: str,
        region: str,
        *,
        close: Callable[[], None] | None = None,
    ) -> None:
        if not project or not region:
            raise ValueError("Cloud Tasks needs a project and a region")
        self.client = client
        self.parent = f"projects/{project}/locations/{region}"
        self._close = close

    @classmethod
    def connect(cls, project: str, region: str, endpoint: str | None = None) -> CloudTasksAdmin:
        """An admin with its own client: the real service, or the emulator at `endpoint`."""
        from tq import CloudTasksSubmitter

        if not project or not region:
            raise ValueError("Cloud Tasks needs a project and a region")
        submitter = CloudTasksSubmitter(endpoint=endpoint)
        return cls(submitter.client, project, region, close=submitter.close)

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def _path(self, queue: str) -> str:
        return queue if queue.startswith("projects/") else f"{self.parent}/queues/{queue}"

    def list_queues(self) -> list[dict[str, Any]]:
        return [
            {"queue": q.name.rsplit("/", 1)[-1], "state": q.state.name,
             "rate_per_s": q.rate_limits.max_dispatches_per_second,
             "max_concurrent": q.rate_limits.max_concurrent_dispatches,
             "max_attempts": q.retry_config.max_attempts}
            for q in self.client.list_queues(parent=self.parent)
        ]  # fmt: skip

    def has_queue(self, queue: str) -> bool:
        # Listed, not got: the emulator answers GetQueue of a missing queue with UNKNOWN.
        path = self._path(queue)
        return any(q.name == path for q in self.client.list_queues(parent=self.parent))

    def stats(self, queue: str | None = None) -> list[dict[str, Any]]:
        names = [queue] if queue else [q["queue"] for q in self.list_queues()]
        out = []
        for name in names:
            q = self.client.get_queue(name=self._path(name))
            count, oldest = 0, None
            for t in self.client.list_tasks(parent=self._path(name)):
                count += 1
                eta = _when(t.schedule_time)
                if eta is not None and (oldest is None or eta < oldest):
                    oldest = eta
                if count >= _COUNT_LIMIT:
                    break
            out.append(
                {"queue": name, "state": q.state.name, "tasks": count, "oldest_eta": oldest,
                 "in_flight": None, "done": None, "failed": None, "executed_last_minute": None,
                 "rate_per_s": q.rate_limits.max_dispatches_per_second}
            )  # fmt: skip
        return out

    def _call(self, fn: Any, name: str) -> bool:
        from google.api_core import exceptions as gexc

        try:
            fn(name=name)
        except gexc.NotFound:
            return False
        return True

    def pause(self, queue: str) -> bool:
        return self._call(self.client.pause_queue, self._path(queue))

    def resume(self, queue: str) -> bool:
        return self._call(self.client.resume_queue, self._path(queue))

    def purge(self, queue: str) -> int | None:
        """0 (Cloud Tasks does not say how many it removed), or None: no such queue."""
        return 0 if self._call(self.client.purge_queue, self._path(queue)) else None

    def _check_state(self, state: str | None) -> None:
        if state not in (None, *STATES):
            raise ValueError("Cloud Tasks lists pending tasks only (state pending)")

    def list_tasks(
        self, queue: str | None, state: str | None, task_class: str | None, limit: int
    ) -> list[dict[str, Any]]:
        self._check_state(state)
        names = [queue] if queue else [q["queue"] for q in self.list_queues()]
        out: list[dict[str, Any]] = []
        for name in names:
            for t in self.client.list_tasks(parent=self._path(name)):
                row = _row(name, t)
                if task_class is not None and row["task_class"] != task_class:
                    continue
                out.append(row)
                if len(out) >= limit:
                    return out
        return out

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
        """A page in the API's own order (`order` is ignored); the cursor is its page token.

        A class filter applies to the page as listed, so a filtered page may
        hold fewer than `limit` tasks while more pages follow.
        """
        self._check_state(state)
        pager = self.client.list_tasks(
            request={"parent": self._path(queue), "page_size": limit, "page_token": cursor or ""}
        )
        page = next(iter(pager.pages), None)
        tasks = list(page.tasks) if page is not None else []
        rows = [_row(queue, t) for t in tasks]
        if task_class is not None:
            rows = [r for r in rows if r["task_class"] == task_class]
        token = page.next_page_token if page is not None else ""
        return rows, token or None

    def get_task(self, queue: str, name: str) -> dict[str, Any] | None:
        from google.api_core import exceptions as gexc
        from google.cloud import tasks_v2

        full = f"{self._path(queue)}/tasks/{name}"
        try:
            t = self.client.get_task(
                request={"name": full, "response_view": tasks_v2.Task.View.FULL}
            )
        except gexc.NotFound:
            return None
        except gexc.MethodNotImplemented:  # the emulator: find it by listing
            listed = self.client.list_tasks(
                request={"parent": self._path(queue), "response_view": tasks_v2.Task.View.FULL}
            )
            t = next((x for x in listed if x.name == full), None)
            if t is None:
                return None
        return _row(queue, t, full=True)

    def delete_task(self, queue: str, name: str) -> bool:
        return self._call(self.client.delete_task, f"{self._path(queue)}/tasks/{name}")

    def run_task(self, queue: str, name: str) -> bool:
        """Dispatches the task now (Cloud Tasks' RunTask); False if there is no such task."""
        return self._call(self.client.run_task, f"{self._path(queue)}/tasks/{name}")

    def count_by_state(self, queue: str) -> dict[str, int] | None:
        return None

    def history(self, queue: str | None = None) -> list[dict[str, Any]] | None:
        return None

    def schedules(self) -> list[dict[str, Any]] | None:
        return None  # Cloud Scheduler fires them; its jobs are not Cloud Tasks'


def _row(queue: str, t: Any, *, full: bool = False) -> dict[str, Any]:
    http = t.http_request
    url = http.url or t.app_engine_http_request.relative_uri
    last = t.last_attempt
    row: dict[str, Any] = {
        "queue": queue, "name": t.name.rsplit("/", 1)[-1], "task_class": class_of(url),
        "state": "pending", "eta": _when(t.schedule_time), "attempts": t.dispatch_count,
        "last_status": (last.response_status.code or None) if last else None,
        "last_error": (last.response_status.message or None) if last else None,
        "url": url, "created": _when(t.create_time),
    }  # fmt: skip
    if full:
        req = http if http.url else t.app_engine_http_request
        row.update(
            method=req.http_method.name, headers=dict(req.headers), body=bytes(req.body),
            executions=t.response_count,
            first_attempt=_when(t.first_attempt.dispatch_time) if t.first_attempt else None,
            last_attempt=_when(last.dispatch_time) if last else None,
            finished=None, lease_owner=None, lease_expires=None,
        )  # fmt: skip
    return row


def _when(ts: Any) -> dt.datetime | None:
    if isinstance(ts, dt.datetime) and ts.timestamp() > 0:
        return ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)
    return None


def class_of(url: str) -> str:
    """The class ID in a push URL made with the default routing prefix, else "?"."""
    from tq._taskclass import DEFAULT_ROUTING_PREFIX

    path = url.split("://", 1)[-1]
    path = path[path.find("/") :] if "/" in path else ""
    if path.startswith(DEFAULT_ROUTING_PREFIX):
        return path[len(DEFAULT_ROUTING_PREFIX) :].split("/", 1)[0] or "?"
    return "?"
