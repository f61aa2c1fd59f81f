"""The Dispatcher: its options, and the tasks it schedules, deletes and sweeps.

Its bases hold the rest: the registry of task classes (`tq._registry`) and
the add path (`tq._add_path`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tq import _deletion, _request, _schedule, _topic, clock
from tq._add_path import AddPath
from tq._errors import ConfigError, ValidationError
from tq._handles import AddedTask, TaskDeletion
from tq._submitter import Submitter
from tq._taskclass import TaskClass

_NAMESPACE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class Sweeper(Protocol):
    """What `Dispatcher.sweep` delegates to (see the `sweeper` package)."""

    def sweep(self, dispatcher: Dispatcher) -> None: ...

    async def sweep_async(self, dispatcher: Dispatcher) -> None: ...


class Dispatcher(AddPath):
    """A registry of task classes, and the way tasks are added and pushed back.

    Args:
      cloud_project, cloud_region: where short queue names live.
      default_target_host: host pushes go to, for classes without their own
        `target_host` (e.g. "app.example.com"); required unless on App Engine.
      push_as: service account Cloud Tasks signs push OIDC tokens as; pushes
        carry no token when None.
      push_audience: the token audience; default `https://<target host>`.
        The push endpoint checks the same value (see `tq.asgi`).
      authorized_pushers: more service accounts (besides `push_as`) whose
        tokens the push endpoint accepts.
      namespace: prefixes deduplication keys, so several deployments can
        share queues; "" or a letter or "_" then up to 49 of [A-Za-z0-9_].
      app_engine: build App Engine requests instead of HTTP ones, and trust
        X-AppEngine-* headers on pushes.
      target_scheme: "https" (default); "http" only for pushes to a local
        emulator or dev server on loopback.
      submitter: where tasks go when no `use_submitter()` is in effect;
        default: a `CloudTasksSubmitter` made on first use.
      sweeper: what `sweep()` runs (see the `sweeper` package).
      random_bytes: the source of reminder IDs (default `os.urandom`).
      sync_handler_scope: a context manager factory entered in the worker
        thread around each call of a `def` handler (default None), for
        per-thread resources such as database connections: the Django
        integration closes Django's stale connections there, as Django
        does around a request.
    """

    def __init__(
        self,
        *,
        cloud_project: str | None = None,
        cloud_region: str | None = None,
        default_target_host: str | None = None,
        push_as: str | None = None,
        push_audience: str | None = None,
        authorized_pushers: Sequence[str] = (),
        namespace: str = "",
        app_engine: bool = False,
        target_scheme: str = "https",
        submitter: Submitter | None = None,
        sweeper: Sweeper | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        sync_handler_scope: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.cloud_project: str | None = None
        self.cloud_region: str | None = None
        self.default_target_host: str | None = None
        self.push_as: str | None = None
        self.push_audience: str | None = None
        self.authorized_pushers: tuple[str, ...] = ()
        self.namespace = ""
        self.app_engine = False
        self.target_scheme = "https"
        super().__init__()
        self._templates: dict[str, _request.Template | _topic.Template] = {}  # by class ID
        self._submitter = submitter
        self.sweeper = sweeper
        self.random_bytes = random_bytes
        self.sync_handler_scope = sync_handler_scope
        self.configure(
            cloud_project=cloud_project,
            cloud_region=cloud_region,
            default_target_host=default_target_host,
            push_as=push_as,
            push_audience=push_audience,
            authorized_pushers=authorized_pushers,
            namespace=namespace,
            app_engine=app_engine,
            target_scheme=target_scheme,
        )

    def configure(self, **options: Any) -> None:
        """Changes dispatcher options (same names as the constructor's).

        Meant for start-up, e.g. of the process-wide `tq.default`.
        """
        allowed = {
            "cloud_project", "cloud_region", "default_target_host", "push_as",
            "push_audience", "authorized_pushers", "namespace", "app_engine", "target_scheme",
            "submitter", "sweeper", "random_bytes", "sync_handler_scope",
        }  # fmt: skip
        unknown = set(options) - allowed
        if unknown:
            raise ConfigError(f"unknown dispatcher options: {sorted(unknown)}")
        for k, v in options.items():
            if k == "submitter":
                self._submitter = v
            else:
                setattr(self, k, v)
        ns = self.namespace
        if ns and (
            len(ns) > 50 or not (ns[0].isalpha() or ns[0] == "_") or set(ns) - _NAMESPACE_CHARS
        ):
            raise ConfigError(
                f"namespace {ns!r} is invalid: use '' or a letter or '_' followed by up "
                "to 49 letters, digits or '_'"
            )
        self.authorized_pushers = tuple(self.authorized_pushers)
        if self.target_scheme not in ("https", "http"):
            raise ConfigError(
                f"target_scheme must be 'https' or 'http', not {self.target_scheme!r}"
            )
        self._target = _request.Target(
            cloud_project=self.cloud_project,
            cloud_region=self.cloud_region,
            default_target_host=self.default_target_host,
            push_as=self.push_as,
            push_audience=self.push_audience,
            app_engine=self.app_engine,
            target_scheme=self.target_scheme,
        )

    # Scheduled classes (see tq._schedule).

    def add_scheduled_task(self, class_id: str, tick: dt.datetime | None = None) -> dt.datetime:
        """Adds the task of a scheduled class for `tick`; returns the tick.

        `tick` defaults to the latest tick at or before now. The task's name
        derives from the class and the tick, so adding one tick's task again
        (another process, a retried cron call) creates nothing new while the
        queue remembers the name. Raises ConfigError for a class without a
        schedule, ValidationError if `tick` is not a tick.
        """
        cls, tick = self._tick_of(class_id, tick)
        self.add_task(_schedule.tick_task(cls, tick), raise_if_exists=False)
        return tick

    async def add_scheduled_task_async(
        self, class_id: str, tick: dt.datetime | None = None
    ) -> dt.datetime:
        """`add_scheduled_task` from async code."""
        cls, tick = self._tick_of(class_id, tick)
        await self.add_task_async(_schedule.tick_task(cls, tick), raise_if_exists=False)
        return tick

    def _tick_of(self, class_id: str, tick: dt.datetime | None) -> tuple[TaskClass, dt.datetime]:
        cls = self._classes.get(class_id)
        if cls is None or cls.schedule is None:
            raise ConfigError(f"no scheduled task class {class_id!r}")
        if tick is None:
            tick = _schedule.current_tick(cls, clock.now())
            if tick is None:
                raise ValidationError(f"task class {class_id!r}: its schedule has not ticked yet")
        return cls, tick

    # Deleting tasks.

    def delete_task(
        self,
        task: str | AddedTask | None = None,
        *,
        task_class: str | None = None,
        deduplication_key: str | None = None,
        queue: str | None = None,
    ) -> TaskDeletion:
        """Deletes a waiting task so that it never runs; says whether there was one.

        Name the task by `task`: its full name
        (`projects/P/locations/L/queues/Q/tasks/ID`), a short one
        (`Q/tasks/ID`, in this dispatcher's project and region), or the
        `tq.AddedTask` that `add_task` returned. Or by `task_class` (a class
        ID registered here) and `deduplication_key`, with `queue` for a task
        added to a queue of its own (`Task.queue`).

        The submitter of the context deletes it (`tq.TaskDeleter`: Cloud
        Tasks, the database queue, tqtesting). The answer is a
        `tq.TaskDeletion`: `deleted` False means no such task was waiting or
        running (never added, already run, failed or deleted). A task being
        run when deleted finishes that attempt but is never retried. The
        name stays taken for the destination's deduplication window, so
        adding the same deduplicated task again soon after is absorbed (or
        raises, see `raise_if_exists`).

        A task added in a transaction (named `<queue>/tasks/<reminder ID>`)
        whose reminder is still pending after the commit (its happy path
        not run yet, say in a background queue, or left to the sweeper by a
        failure or a crash) is deleted there too: its reminder is deleted
        from every store registered with `tq.txn`, parked or not, and this
        process's happy path drops it, so it is never submitted; `deleted`
        is then True. Before the commit there is nothing to delete: the
        reminder is the open transaction's. Deletion acts now, whatever
        transaction is open.

        Raises ValidationError for a malformed name or a bad class or key
        (before anything is asked of the destination), ConfigError when the
        submitter cannot delete tasks, SubmitError for any other failure.
        """
        name = self._name_to_delete(task, task_class, deduplication_key, queue)
        deleter = _deletion.deleter_of(self.submitter())
        forgot = _deletion.forget_reminder(name)
        deleted = deleter.delete_task(name)
        return _deletion.deletion(name, forgot or deleted)

    async def delete_task_async(
        self,
        task: str | AddedTask | None = None,
        *,
        task_class: str | None = None,
        deduplication_key: str | None = None,
        queue: str | None = None,
    ) -> TaskDeletion:
        """`delete_task` from async code."""
        name = self._name_to_delete(task, task_class, deduplication_key, queue)
        deleter = _deletion.deleter_of(self.submitter())
        forgot = await asyncio.to_thread(_deletion.forget_reminder, name)
        deleted = await deleter.delete_task_async(name)
        return _deletion.deletion(name, forgot or deleted)

    def _name_to_delete(self, *args: Any) -> str:
        return _deletion.name_to_delete(
            *args, find_class=self._classes.get, namespace=self.namespace, target=self._target
        )

    def sweep(self) -> None:
        """Resubmits stale reminders once, with the configured sweeper."""
        self._require_sweeper().sweep(self)

    async def sweep_async(self) -> None:
        await self._require_sweeper().sweep_async(self)

    def _require_sweeper(self) -> Sweeper:
        if self.sweeper is None:
            raise ConfigError(
                "no sweeper configured: pass sweeper=sweeper.InProcSweeper() (or a "
                "DistributedSweeper) to the Dispatcher"
            )
        return self.sweeper
