"""Task results: the rows of `tq_django_task_results` and the TaskResults they make.

The enqueueing side writes a READY row with one INSERT through Django's
connection (inside the caller's `atomic()` block when there is one), except
on the database queue of the results database: there the task's own row
stands for its READY result (`from_task_row`) and the first attempt writes
the result row. Each attempt moves it to RUNNING, then SUCCESSFUL (with the
return value) or FAILED (with the error appended). A redelivered task whose row says
SUCCESSFUL is not run again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from django.db import IntegrityError, connections, transaction
from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.tasks.exceptions import TaskResultDoesNotExist
from django.utils import timezone
from django.utils.module_loading import import_string
from google.protobuf import json_format

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
    found = find(alias, result_id)
    if found is None:
        raise TaskResultDoesNotExist(result_id)
    return found


def find(alias: str, result_id: str) -> TaskResult | None:
    """The result stored in the row `result_id`, or None."""
    from tq.contrib.django.models import TaskResultRecord

    rec = TaskResultRecord.objects.using(alias).filter(id=result_id).first()
    return None if rec is None else task_result(rec)


def from_task_row(alias: str, queue_ids: Sequence[str], task_id: str) -> TaskResult | None:
    """The READY result of a task of the database queue that no attempt started yet.

    Such a task has no result row: its row in `tq_tasks` (named by its ID,
    which is its result's, in one of `queue_ids`) stands for it. None if
    there is no such row, or it holds no django.tasks Task.
    """
    marks = ", ".join(["%s"] * len(queue_ids))
    with connections[alias].cursor() as cursor:
        cursor.execute(
            f"SELECT body FROM tq_tasks WHERE queue IN ({marks}) AND name = %s",
            [*queue_ids, task_id],
        )
        row = cursor.fetchone()
    payload = None if row is None else _payload_of(bytes(row[0]))
    if payload is None:
        return None
    payload.result_id = payload.result_id or task_id
    return task_result(ready_record(payload))


def _payload_of(body: bytes) -> DjangoTask | None:
    try:
        doc = json.loads(body)
        if doc.get("type") != DjangoTask.DESCRIPTOR.full_name:
            return None
        return json_format.ParseDict(doc["body"], DjangoTask(), ignore_unknown_fields=True)
    except (ValueError, TypeError, KeyError, AttributeError, json_format.ParseError):
        return None


def ready_record(payload: DjangoTask) -> Any:
    """The READY `TaskResultRecord` (unsaved) of a task as it was enqueued."""
    from tq.contrib.django.models import TaskResultRecord

    return TaskResultRecord(
        id=payload.result_id, task_path=payload.task_path, backend=payload.backend,
        queue_name=payload.queue_name, priority=payload.priority,
        args_json=payload.args_json, kwargs_json=payload.kwargs_json,
        run_after=_datetime(payload.run_after_us) if payload.run_after_us else None,
        enqueued_at=_datetime(payload.enqueued_us) if payload.enqueued_us else timezone.now(),
        status=TaskResultStatus.READY.value,
    )  # fmt: skip


def _datetime(micros: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=micros)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# Updates by the attempts (run in worker threads: see _runner).


def started(payload: DjangoTask, worker_id: str) -> Any | None:
    """Marks the row RUNNING for a new attempt; None if it is SUCCESSFUL already.

    A row that is missing (the first attempt of a task of the database
    queue, whose task row stood for its READY result; or enqueued on
    another database, whose commit hook did not run) is made from the
    payload, as it was enqueued. The update leaves a row
    that turned SUCCESSFUL meanwhile (a concurrent delivery) as it is.
    """
    from tq.contrib.django.models import TaskResultRecord

    alias = payload.results_database
    objects = TaskResultRecord.objects.using(alias)
    now = timezone.now()
    rec = objects.filter(id=payload.result_id).first()
    if rec is None:
        rec = ready_record(payload)
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
