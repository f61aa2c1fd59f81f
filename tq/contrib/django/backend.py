"""`TqBackend`: django.tasks on Cloud Tasks (or the database queue), with an outbox.

    TASKS = {
        "default": {
            "BACKEND": "tq.contrib.django.backend.TqBackend",
            "QUEUES": ["default", "emails"],           # Django's own list (optional)
            "OPTIONS": {"QUEUE_MAP": {"default": "tasks"}},  # Django queue -> Cloud Tasks queue
        }
    }

`task.enqueue(...)` becomes a tq task of the "django-task" class whose
payload names the Task function and carries its JSON arguments; it goes
where tq's tasks go (Cloud Tasks, the database queue, or tqtesting in
tests). Inside `transaction.atomic()` it is written in that transaction
(see `_atomic`): no task without the commit, none lost after it. Its
result is a row of the results table, readable with `get_result` from any
process.

What a backend on Cloud Tasks can and cannot offer (docs/django.md):

* `run_after` (supports_defer): yes, as the task's ETA, at most 30 days
  ahead (Cloud Tasks' limit).
* Queues: yes; each Django queue name maps to a Cloud Tasks queue, the same
  name unless OPTIONS["QUEUE_MAP"] says otherwise (Cloud Tasks queue IDs
  are `[a-zA-Z0-9-]{1,100}`).
* async Task functions (supports_async_task): yes.
* Results (supports_get_result): yes, stored in the database (the results
  alias: settings.TQ["DATABASE"]).
* Priority (supports_priority): yes on the database queue (and tqtesting),
  whose workers take a queue's due tasks highest priority first, within a
  bounded head start (`tq.Task.priority`; a Django priority, -100 to 100,
  is tq's priority as it is). Cloud Tasks has no priorities: there it is
  recorded in the result and travels with the task, but the queue delivers
  by its rate and concurrency alone; give urgent work a queue of its own.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone
from django.utils.json import normalize_json

import tq
from tq._pb.django_task_pb2 import DjangoTask
from tq._task import MAX_ETA_AHEAD
from tq._taskclass import FULL_QUEUE_RE, SHORT_QUEUE_RE
from tq.contrib.django import _atomic, _results, _state
from tq.contrib.django._atomic import DjangoTransaction
from tq.txn import ambient, find_transaction

CLASS_ID = "django-task"
"""The tq task class of django.tasks tasks (its pushes go to <prefix>django-task/<name>)."""
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


class TqBackend(BaseTaskBackend):
    """The django.tasks backend of tq (see the module docstring)."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: Mapping[str, Any]) -> None:
        super().__init__(alias, params)
        queue_map = self.options.get("QUEUE_MAP", {})
        if not isinstance(queue_map, Mapping):
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['QUEUE_MAP'] must map Django queue names to "
                "Cloud Tasks queues"
            )
        unknown = sorted(set(self.options) - {"QUEUE_MAP"})
        if unknown:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS'] has unknown keys {unknown}; known: ['QUEUE_MAP']"
            )
        self.queue_map: dict[str, str] = {}
        # The database queue's queue IDs this backend's tasks can be in, for
        # finding a task's row by its ID (None: any queue, Django's QUEUES = []).
        self.queue_ids: tuple[str, ...] | None = None
        for name in sorted(set(self.queues) | set(queue_map)):
            target = queue_map.get(name, name)
            if not isinstance(target, str) or not (
                SHORT_QUEUE_RE.match(target) or FULL_QUEUE_RE.match(target)
            ):
                raise ImproperlyConfigured(
                    f"TASKS[{alias!r}]: Django queue {name!r} maps to {target!r}, which is no "
                    "Cloud Tasks queue ([a-zA-Z0-9-]{1,100} or projects/P/locations/L/queues/Q); "
                    f"map it in OPTIONS['QUEUE_MAP'], e.g. {{{name!r}: 'my-queue'}}"
                )
            self.queue_map[name] = target
        if self.queues:
            self.queue_ids = tuple(
                sorted({self.queue_map[q].rsplit("/", 1)[-1] for q in self.queues})
            )

    def _cloud_queue(self, queue_name: str) -> str:
        target = self.queue_map.get(queue_name, queue_name)
        if not (SHORT_QUEUE_RE.match(target) or FULL_QUEUE_RE.match(target)):
            raise InvalidTask(
                f"queue {queue_name!r} is no Cloud Tasks queue name; map it in "
                f"TASKS[{self.alias!r}]['OPTIONS']['QUEUE_MAP']"
            )
        return target

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        self._cloud_queue(task.queue_name)

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Adds the task (in the open `atomic()` block, if any); returns its READY result.

        The Task was validated when it was made (`@task`, `.using()`), as
        Django does; here only what depends on the time: `run_after`.
        """
        now = timezone.now()
        run_after = task.run_after
        eta = None
        if run_after is not None:
            eta = run_after if timezone.is_aware(run_after) else timezone.make_aware(run_after)
            if eta - now > MAX_ETA_AHEAD:
                raise InvalidTask(
                    f"run_after {run_after.isoformat()} is more than 30 days ahead "
                    "(Cloud Tasks' limit)"
                )
        args = normalize_json(list(args))
        kwargs = normalize_json(dict(kwargs))
        args_json, kwargs_json = json.dumps(args), json.dumps(kwargs)
        state = _state.current()
        payload = DjangoTask(
            task_path=task.module_path,
            args_json=args_json,
            kwargs_json=kwargs_json,
            backend=self.alias,
            queue_name=task.queue_name,
            priority=task.priority,
            results_database=state.settings.database,
            enqueued_us=_micros(now),
            run_after_us=_micros(eta) if eta is not None else 0,
        )
        tq_task = tq.Task(
            payload=payload,
            title=task.name,
            eta=eta,
            queue=self._cloud_queue(task.queue_name),
            priority=task.priority,
        )
        result_id = self._add(state, payload, tq_task, run_after, now)
        result = TaskResult(
            task=task,
            id=result_id,
            status=TaskResultStatus.READY,
            enqueued_at=now,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        task_enqueued.send(type(self), task_result=result)
        return result

    def _add(
        self,
        state: _state.State,
        payload: DjangoTask,
        tq_task: tq.Task,
        run_after: dt.datetime | None,
        now: dt.datetime,
    ) -> str:
        """Adds the task and makes its READY result; returns the result's ID.

        On the database queue of the results database, the task's row is its
        READY result (`get_result` reads it there) and the result's ID is the
        task's: one row per enqueue, in the open transaction if there is one.
        Otherwise the READY row is written beside the task, in one transaction
        where there is one (on PostgreSQL in one statement).
        """
        results = state.settings.database
        found = find_transaction()
        if self._row_is_result(state, results):
            if found is None:
                (added,) = state.dispatcher.add_task(tq_task)
                return _task_id(added, payload)
            if isinstance(found, DjangoTransaction) and found.alias == results:
                with ambient(found):
                    (added,) = state.dispatcher.add_task(tq_task)
                return _task_id(added, payload)
        payload.result_id = secrets.token_hex(16)
        if isinstance(found, DjangoTransaction):
            with ambient(found):  # add_task needs not look for it again
                if found.alias == results:
                    # The result row and the task in one transaction (on PostgreSQL,
                    # in one statement).
                    row = _results.ready_row(results, payload, run_after, now)
                    with _atomic.companion(results, row) as written:
                        state.dispatcher.add_task(tq_task)
                    if not written:
                        _results.insert(results, row)
                    return payload.result_id
                state.dispatcher.add_task(tq_task)
            # A transaction on another database: the result row follows its commit
            # (and the first attempt writes it should this process die first).
            transaction.on_commit(
                lambda: _results.insert_ready(results, payload, run_after, now),
                using=found.alias,
            )
            return payload.result_id
        _results.insert_ready(results, payload, run_after, now)
        try:
            state.dispatcher.add_task(tq_task)
        except BaseException:
            _results.delete(results, payload.result_id)
            raise
        return payload.result_id

    def _row_is_result(self, state: _state.State, results: str) -> bool:
        """Whether tasks go to the database queue of `results`, where their rows stand for
        READY results."""
        return (
            self.queue_ids is not None
            and _atomic.queue_submitter(state.dispatcher.submitter(), results) is not None
        )

    def get_result(self, result_id: str) -> TaskResult:
        """The result (READY until an attempt starts); TaskResultDoesNotExist if none."""
        state = _state.current()
        alias = state.settings.database
        found = _results.find(alias, result_id)
        if found is not None:
            return found
        if self.queue_ids is not None:
            waiting = _results.from_task_row(alias, self.queue_ids, result_id)
            if waiting is not None:
                return waiting
        raise TaskResultDoesNotExist(result_id)

    def check(self, **kwargs: Any) -> list[Any]:
        from django.core import checks

        errors = list(super().check(**kwargs))
        if "tq.contrib.django" not in settings.INSTALLED_APPS:
            errors.append(
                checks.Error(
                    "TqBackend is configured but 'tq.contrib.django' is not installed",
                    hint="Add 'tq.contrib.django' to INSTALLED_APPS",
                    id="tq.E001",
                )
            )
        return errors


def _micros(t: dt.datetime) -> int:
    return (t - _EPOCH) // _MICROSECOND


def _task_id(added: tq.AddedTask, payload: DjangoTask) -> str:
    task_id = added.task_id
    if task_id is None:  # the database queue always names its tasks
        raise RuntimeError(f"tq: the database queue gave no name to {payload.task_path!r}")
    return task_id
