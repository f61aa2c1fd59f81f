"""Running a django.tasks Task when its tq task is pushed back.

`run` is the handler of the "django-task" task class. It finds the Task
function by its module path, marks the result RUNNING, calls the function
with the JSON arguments (a `def` in a worker thread, an `async def` on the
loop), and records SUCCESSFUL with the return value or FAILED with the
error. A function that raises makes the push fail (500, or what a
`tq.Fatal`, `tq.Ignore` or `tq.Retry` it raised says), so the queue retries
it per its own settings; each attempt is one more `worker_ids` entry of the
result. Django's `task_started` and `task_finished` signals are sent.

Database work of a `def` function runs in a worker thread: Django's
connections there are closed before and after each attempt as they would be
around a request (`close_old_connections`), so CONN_MAX_AGE applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import socket
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from django.db import close_old_connections, transaction
from django.tasks import Task, TaskContext, task_backends
from django.tasks.base import TaskError
from django.tasks.signals import task_finished, task_started
from django.utils.json import normalize_json

import tq
from tq._execution import execution_info
from tq._pb.django_task_pb2 import DjangoTask
from tq.contrib.django import _results
from tq.contrib.django._once import Once, mark_done, once_of
from tq.txn._markers import marker_key, note_done_already

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"
T = TypeVar("T")


def _error_of(exc: BaseException) -> TaskError:
    kind = type(exc)
    return TaskError(
        exception_class_path=f"{kind.__module__}.{kind.__qualname__}",
        traceback="".join(traceback.format_exception(exc)),
    )


@contextlib.contextmanager
def connections_scope() -> Iterator[None]:
    """Django's connection upkeep around a request, around work in a worker thread.

    The dispatcher's `sync_handler_scope` in a Django project, and around
    each step of a Task here: stale connections of this thread are closed
    before and after (with CONN_MAX_AGE = 0, the default: every one).
    """
    close_old_connections()
    try:
        yield
    finally:
        close_old_connections()


def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    with connections_scope():
        return fn(*args)


def _begin(payload: DjangoTask, task: Task) -> Any | None:
    rec = _results.started(payload, WORKER_ID)
    if rec is not None:
        task_started.send(_sender(payload), task_result=_results.task_result(rec, task))
    return rec


def _end(payload: DjangoTask, task: Task, rec: Any, value: Any, exc: BaseException | None) -> None:
    alias = payload.results_database
    if exc is None:
        try:
            value = _json_value(value)
        except (TypeError, ValueError) as e:
            exc = e
    if exc is None:
        _results.succeeded(rec, alias, value)
    else:
        _results.failed(rec, alias, _error_of(exc))
    task_finished.send(_sender(payload), task_result=_results.task_result(rec, task))
    if exc is not None:
        raise exc


def _sender(payload: DjangoTask) -> type:
    return type(task_backends[payload.backend])


def _call_sync(payload: DjangoTask, task: Task, args: list[Any], kwargs: dict[str, Any]) -> None:
    rec = _begin(payload, task)
    if rec is None:
        return
    if task.takes_context:
        args = [TaskContext(task_result=_results.task_result(rec, task)), *args]
    once = once_of(task.func)
    if once is not None:
        _call_once(payload, task, rec, once, args, kwargs)
        return
    try:
        value = task.func(*args, **kwargs)
    except Exception as e:
        _end(payload, task, rec, None, e)
    else:
        _end(payload, task, rec, value, None)


def _call_once(
    payload: DjangoTask,
    task: Task,
    rec: Any,
    once: Once,
    args: list[Any],
    kwargs: dict[str, Any],
) -> None:
    """The marker, the function's effects and (on the results alias) SUCCESSFUL in one commit."""
    results = payload.results_database
    alias = once.using or results
    info = execution_info()
    key = marker_key(info)
    try:
        with transaction.atomic(using=alias):
            if not mark_done(alias, key, retention=once.retention):
                note_done_already(key, info.task_class)
                if alias != results:  # done, but its result was not recorded
                    _results.succeeded(rec, results, None)
                return
            value = _json_value(task.func.__wrapped__(*args, **kwargs))
            if alias == results:
                _results.succeeded(rec, results, value)
    except Exception as e:
        _end(payload, task, rec, None, e)
        return
    if alias != results:
        _results.succeeded(rec, results, value)
    task_finished.send(_sender(payload), task_result=_results.task_result(rec, task))


def _json_value(value: Any) -> Any:
    """The return value as stored (normalize_json); TypeError or ValueError if it is not JSON."""
    value = normalize_json(value)
    json.dumps(value)
    return value


async def run(payload: DjangoTask) -> None:
    """The handler of the "django-task" class: one attempt of one Task."""
    if not payload.result_id:  # a task of the database queue: its ID is its result's
        payload.result_id = execution_info().task_id
    try:
        task = _results.load_task(payload.task_path)
    except (ImportError, TypeError) as e:
        # A replica running older code may not have the function yet: retry.
        raise tq.Transient(f"cannot run {payload.task_path!r}: {e}") from e
    args = json.loads(payload.args_json or "[]")
    kwargs = json.loads(payload.kwargs_json or "{}")
    if not inspect.iscoroutinefunction(task.func):
        await asyncio.to_thread(_in_thread, _call_sync, payload, task, args, kwargs)
        return
    rec = await asyncio.to_thread(_in_thread, _begin, payload, task)
    if rec is None:
        return
    if task.takes_context:
        args = [TaskContext(task_result=_results.task_result(rec, task)), *args]
    try:
        value = await task.func(*args, **kwargs)
    except Exception as e:
        await asyncio.to_thread(_in_thread, _end, payload, task, rec, None, e)
    else:
        await asyncio.to_thread(_in_thread, _end, payload, task, rec, value, None)
