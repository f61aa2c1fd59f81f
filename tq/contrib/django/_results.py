"""Task results: the rows of `tq_django_task_results` and the TaskResults they make.

The enqueueing side writes a READY row with one INSERT through Django's
connection (inside the caller's `atomic()` block when there is one); each
attempt moves it to RUNNING, then SUCCESSFUL (with the return value) or
FAILED (with the error appended). A redelivered task whose row says
SUCCESSFUL is not run again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.tasks.exceptions import TaskResultDoesNotExist
from django.utils import timezone
from django.utils.module_loading import import_string

from tq._pb.django_task_pb2 import DjangoTask

_COLUMNS = (
    "id", "task_path", "backend", "queue_name", "priority", "status", "args_json",
    "kwargs_json", "run_after", "enqueued_at", "errors_json", "worker_ids_json",
)  # fmt: skip
INSERT = (
    f"INSERT INTO tq_django_task_results ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(_COLUMNS))})"
)


def ready_row(
    alias: str, payload: DjangoTask, run_after: dt.datetime | None, now: dt.datetime
) -> tuple[str, tuple[Any, ...]]:
    """The INSERT (SQL, parameters) of the READY row of a task just enqueued."""
    adapt = connections[alias].ops.adapt_datetimefield_value
    values = (
        payload.result_id, payload.task_path, payload.backend, payload.queue_name,
        payload.priority, TaskResultStatus.READY.value, payload.args_json, payload.kwargs_json,
        adapt(run_after) if run_after is not None else None, adapt(now), "[]", "[]",
    )  # fmt: skip
    return INSERT, values


def insert(alias: str, row: tuple[str, tuple[Any, ...]]) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute(*row)


def insert_ready(
    alias: str, payload: DjangoTask, run_after: dt.datetime | None, now: dt.datetime
) -> None:
    """Writes the READY row of a task just enqueued, on Django's connection of `alias`."""
    insert(alias, ready_row(alias, payload, run_after, now))


def delete(alias: str, result_id: str) -> None:
    from tq.contrib.django.models import TaskResultRecord

    TaskResultRecord.objects.using(alias).filter(id=result_id).delete()


def load_task(path: str) -> Task:
    """The django.tasks Task at module path `path`; ImportError or TypeError if there is none."""
    obj = import_string(path)
    if not isinstance(obj, Task):
        raise TypeError(f"{path!r} is not a django.tasks Task (decorate it with @task)")
    return obj


def task_result(rec: Any, task: Task | None = None) -> TaskResult:
    """The TaskResult of a `TaskResultRecord`."""
    if task is None:
        task = load_task(rec.task_path)
    task = dataclasses.replace(
        task,
        backend=rec.backend,
        queue_name=rec.queue_name,
        priority=rec.priority,
        run_after=rec.run_after,
    )
    result = TaskResult(
        task=task,
        id=rec.id,
        status=TaskResultStatus(rec.status),
        enqueued_at=rec.enqueued_at,
        started_at=rec.started_at,
        finished_at=rec.finished_at,
        last_attempted_at=rec.last_attempted_at,
        args=json.loads(rec.args_json),
        kwargs=json.loads(rec.kwargs_json),
        backend=rec.backend,
        errors=[TaskError(**e) for e in json.loads(rec.errors_json)],
        worker_ids=json.loads(rec.worker_ids_json),
    )
    if rec.return_value_json is not None:
        object.__setattr__(result, "_return_value", json.loads(rec.return_value_json))
    return result


def get(alias: str, result_id: str) -> TaskResult:
    from tq.contrib.django.models import TaskResultRecord

    rec = TaskResultRecord.objects.using(alias).filter(id=result_id).first()
    if rec is None:
        raise TaskResultDoesNotExist(result_id)
    return task_result(rec)


# Updates by the attempts (run in worker threads: see _runner).


def started(payload: DjangoTask, worker_id: str) -> Any | None:
    """Marks the row RUNNING for a new attempt; None if it is SUCCESSFUL already.

    A row that is missing (enqueued on another database, whose commit
    hook did not run) is made from the payload. The update leaves a row
    that turned SUCCESSFUL meanwhile (a concurrent delivery) as it is.
    """
    from tq.contrib.django.models import TaskResultRecord

    alias = payload.results_database
    objects = TaskResultRecord.objects.using(alias)
    now = timezone.now()
    rec = objects.filter(id=payload.result_id).first()
    if rec is None:
        rec = TaskResultRecord(
            id=payload.result_id, task_path=payload.task_path, backend=payload.backend,
            queue_name=payload.queue_name, priority=payload.priority,
            args_json=payload.args_json, kwargs_json=payload.kwargs_json, enqueued_at=now,
            status=TaskResultStatus.READY.value,
        )  # fmt: skip
        try:
            with transaction.atomic(using=alias):
                rec.save(using=alias, force_insert=True)
        except IntegrityError:  # a concurrent delivery made it first
            return started(payload, worker_id)
    elif rec.status == TaskResultStatus.SUCCESSFUL:
        return None
    rec.status = TaskResultStatus.RUNNING.value
    rec.started_at = rec.started_at or now
    rec.last_attempted_at = now
    rec.worker_ids_json = json.dumps([*json.loads(rec.worker_ids_json), worker_id])
    fields = ("status", "started_at", "last_attempted_at", "worker_ids_json")
    updated = (
        objects.filter(id=rec.id)
        .exclude(status=TaskResultStatus.SUCCESSFUL.value)
        .update(**{f: getattr(rec, f) for f in fields})
    )
    return rec if updated else None


def succeeded(rec: Any, alias: str, value: Any) -> None:
    rec.status = TaskResultStatus.SUCCESSFUL.value
    rec.finished_at = timezone.now()
    rec.return_value_json = json.dumps(value)
    rec.save(using=alias, update_fields=["status", "finished_at", "return_value_json"])


def failed(rec: Any, alias: str, error: TaskError) -> None:
    rec.status = TaskResultStatus.FAILED.value
    rec.finished_at = timezone.now()
    errors = json.loads(rec.errors_json)
    errors.append(dataclasses.asdict(error))
    rec.errors_json = json.dumps(errors)
    rec.save(using=alias, update_fields=["status", "finished_at", "errors_json"])
