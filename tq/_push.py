"""Handling one push: envelope in, handler run, HTTP status out.

Shared by the ASGI endpoint (`tq.asgi`, which adds authentication and the
body limit) and by in-memory runners (`tqtesting.Scheduler`), so that tests
go through the same path as production.

Statuses: 200 done; 202 `Fatal` (dropped, error); 204 `Ignore` (dropped,
warning); 429 `Retry`; 500 `Transient` or any other exception; 404 unknown
class or no handler; 400 bad envelope or body. Every rejection is counted in
`tq_pushes_rejected` by reason.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from tq import _envelope, _metrics, _tracing, clock
from tq._errors import Fatal, Ignore, Retry, Transient
from tq._execution import ExecutionInfo, FromHeaders, enter, leave
from tq._request import EXPECTED_ETA_HEADER
from tq.txn._store import enter_new_scope, leave_scope

if TYPE_CHECKING:
    from tq._dispatcher import Dispatcher

log = logging.getLogger("tq.push")
_EXPECTED_ETA = EXPECTED_ETA_HEADER.lower()

# Handlers running now, by class: the tq_pushes_running gauge reads it.
_running: collections.Counter[str] = collections.Counter()
_running_lock = threading.Lock()


def _running_now() -> list[_metrics.Observation]:
    with _running_lock:
        return [(float(n), {"task_class": c}) for c, n in _running.items()]


_metrics.observe("tq_pushes_running", "tq.push", _running_now)


@dataclasses.dataclass(frozen=True, slots=True)
class PushResult:
    """What became of one push."""

    status: int
    outcome: str  # ok, fatal, ignore, retry, transient, error, or a rejection reason
    class_id: str = ""
    error: BaseException | None = None
    result: bytes | None = None  # what the handler returned (bytes, or str as UTF-8)

    @property
    def done(self) -> bool:
        """True when Cloud Tasks will not retry the task (2xx)."""
        return 200 <= self.status < 300


def reject(status: int, reason: str, detail: str, class_id: str = "") -> PushResult:
    _metrics.add("tq_pushes_rejected", reason=reason)
    log.warning(
        "tq: push rejected (%d %s): %s",
        status,
        reason,
        detail,
        extra={"tq_class": class_id or None, "tq_outcome": reason, "tq_status": status},
    )
    return PushResult(status, reason, class_id, ValueError(detail))


async def handle_push(
    dispatcher: Dispatcher,
    path_class_id: str | None,
    headers: Mapping[str, str],
    body: bytes,
    *,
    info: ExecutionInfo | None = None,
) -> PushResult:
    """Decodes and runs one pushed task. `headers` keys must be lowercase.

    With tracing on, the push runs in a `tq.push` span linked to the span
    that added the task (its context travels in the task's headers).
    `info` (its `task_class` filled in here) replaces the ExecutionInfo
    otherwise read from the X-CloudTasks-* headers (Pub/Sub deliveries).
    """
    if _tracing.tracer() is None:
        return await _handle(dispatcher, path_class_id, headers, body, info)
    parent, links = _tracing.incoming(headers)
    with _tracing.span(
        "tq.push",
        kind=_tracing.Kind.CONSUMER,
        context=parent,
        links=links,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        result = await _handle(dispatcher, path_class_id, headers, body, info)
        if span is not None and span.is_recording():
            span.set_attributes(
                {
                    "tq.task_class": result.class_id,
                    "tq.outcome": result.outcome,
                    "http.response.status_code": result.status,
                }
            )
            if result.status >= 500 or result.outcome in ("fatal", "error"):
                if result.error is not None:
                    span.record_exception(result.error)
                _tracing.set_error(span, f"{result.status} {result.outcome}")
        return result


async def _handle(
    dispatcher: Dispatcher,
    path_class_id: str | None,
    headers: Mapping[str, str],
    body: bytes,
    given_info: ExecutionInfo | None = None,
) -> PushResult:
    try:
        class_id, type_name, json_body = _envelope.peek(body)
    except _envelope.EnvelopeError as e:
        return reject(400, "bad_envelope", str(e))
    if path_class_id is not None and path_class_id != class_id:
        return reject(
            400, "class_mismatch", f"URL names class {path_class_id!r}, body {class_id!r}"
        )
    cls = dispatcher.task_class_by_id(class_id)
    if cls is None:
        return reject(404, "unknown_class", f"no task class {class_id!r}", class_id)
    if cls.handler is None:
        return reject(404, "no_handler", f"task class {class_id!r} has no handler", class_id)
    if type_name != cls.type_name:
        return reject(
            400,
            "wrong_type",
            f"class {class_id!r} takes {cls.type_name}, got {type_name}",
            class_id,
        )
    try:
        payload = _envelope.decode_body(json_body, cls.prototype)
    except _envelope.EnvelopeError as e:
        return reject(400, "bad_body", str(e), class_id)

    info: ExecutionInfo | FromHeaders
    if given_info is None:
        # Read from the headers only if the handler asks (or a log line needs it).
        info = FromHeaders(class_id, headers, dispatcher.app_engine)
    else:
        info = dataclasses.replace(given_info, task_class=class_id)
    handler = cls.handler
    if not cls.quiet and log.isEnabledFor(logging.DEBUG):
        full = _full(info)
        log.debug(
            "tq: running task %s of class %s (attempt %d): %s",
            full.task_id or "?",
            cls.id,
            full.execution_count + 1,
            payload,
            extra=_log_fields(full),
        )
    c = clock.current()
    started = c.monotonic()
    with _running_lock:
        _running[cls.id] += 1
    token = enter(info)
    # The handler runs as a request of its own, whatever context ran the push
    # (tqtesting's, the database queue worker's): no transaction around it.
    txn_scope = enter_new_scope()
    try:
        if _is_async(handler):
            returned = await handler(payload)  # type: ignore[misc]  # _is_async: a coroutine function
        else:
            # Sync handlers run in a thread (with this context) so they
            # never block the event loop.
            scope = dispatcher.sync_handler_scope
            if scope is None:
                returned = await asyncio.to_thread(handler, payload)
            else:
                returned = await asyncio.to_thread(_in_scope, scope, handler, payload)
    except Exception as e:
        result = _outcome_of(e, cls.id, _full(info), cls.quiet_on_error)
    else:
        result = _OK[cls.id] if returned is None else _ok_with(cls.id, returned)
    finally:
        leave_scope(txn_scope)
        leave(token)
        with _running_lock:
            _running[cls.id] -= 1
    _count_handled(result.outcome, class_id, info, headers, c.monotonic() - started)
    return result


def _full(info: ExecutionInfo | FromHeaders) -> ExecutionInfo:
    return info.get() if isinstance(info, FromHeaders) else info


def _in_scope(
    scope: Callable[[], contextlib.AbstractContextManager[object]],
    handler: Callable[[object], object],
    payload: object,
) -> object:
    with scope():
        return handler(payload)


class _OkResults(dict[str, PushResult]):
    """The plain success result of each class, made once."""

    def __missing__(self, class_id: str) -> PushResult:
        r = self[class_id] = PushResult(200, "ok", class_id)
        return r


_OK = _OkResults()


def _ok_with(class_id: str, returned: object) -> PushResult:
    """Success with the handler's result: bytes, or str as UTF-8; other values
    are not results (ignored, as before handlers could return one)."""
    if isinstance(returned, str):
        returned = returned.encode()
    if not isinstance(returned, bytes):
        return _OK[class_id]
    return PushResult(200, "ok", class_id, result=returned)


_async_handlers: weakref.WeakKeyDictionary[Callable[..., object], bool] = (
    weakref.WeakKeyDictionary()
)


def _is_async(handler: Callable[..., object]) -> bool:
    """inspect.iscoroutinefunction(handler), remembered per handler."""
    try:
        found = _async_handlers.get(handler)
    except TypeError:  # not weakly referenceable
        return inspect.iscoroutinefunction(handler)
    if found is None:
        found = _async_handlers[handler] = inspect.iscoroutinefunction(handler)
    return found


def _log_fields(info: ExecutionInfo) -> dict[str, object]:
    return {
        "tq_class": info.task_class,
        "tq_task": info.task_id or None,
        "tq_queue": info.queue or None,
        "tq_attempt": info.execution_count + 1,
    }


def _count_handled(
    outcome: str,
    cls: str,
    info: ExecutionInfo | FromHeaders,
    headers: Mapping[str, str],
    duration_s: float,
) -> None:
    if isinstance(info, FromHeaders):
        queue, retried = info.queue_and_retried()
    else:
        queue, retried = info.queue, info.retry_count > 0
    labels = _labels.get((cls, queue, outcome, retried))
    if labels is None:
        labels = _handled_labels(cls, queue, outcome, retried)
    _metrics.add_labelled("tq_pushes_handled", labels[0])
    _metrics.record_labelled("tq_push_duration", duration_s, labels[1])
    eta = _expected_eta(headers, info)
    if eta is not None:
        latency = max(clock.now().timestamp() - eta, 0.0)
        _metrics.record_labelled("tq_push_latency", latency, labels[1])


# (class, queue, outcome, retried) -> the labels of tq_pushes_handled, of the histograms.
_labels: dict[tuple[str, str, str, bool], tuple[_metrics.Labels, _metrics.Labels]] = {}


def _handled_labels(
    cls: str, queue: str, outcome: str, retried: bool
) -> tuple[_metrics.Labels, _metrics.Labels]:
    retry = "true" if retried else "false"
    made = (
        _metrics.labels(task_class=cls, queue=queue, result=outcome, retry=retry),
        _metrics.labels(task_class=cls, queue=queue, result=outcome),
    )
    if len(_labels) >= 4096:  # queue names come from headers: keep the cache bounded
        _labels.clear()
    _labels[(cls, queue, outcome, retried)] = made
    return made


def _expected_eta(headers: Mapping[str, str], info: ExecutionInfo | FromHeaders) -> float | None:
    """When the task was meant to run (epoch seconds): tq's header, else Cloud Tasks' ETA.

    Cloud Tasks moves its ETA header to each retry's time; tq's stays at the
    first one, so the latency of a retried task includes its retries.
    """
    v = headers.get(_EXPECTED_ETA)
    if v:
        try:
            return float(v)
        except ValueError:
            pass
    eta = _full(info).eta
    return eta.timestamp() if eta is not None else None


_OUTCOMES: list[tuple[type[Exception], int, str, int]] = [
    (Fatal, 202, "fatal", logging.ERROR),
    (Ignore, 204, "ignore", logging.WARNING),
    (Retry, 429, "retry", logging.INFO),
    (Transient, 500, "transient", logging.WARNING),
]


def _outcome_of(err: Exception, class_id: str, info: ExecutionInfo, quiet: bool) -> PushResult:
    status, outcome, level = next(
        ((s, o, lv) for kind, s, o, lv in _OUTCOMES if isinstance(err, kind)),
        (500, "error", logging.ERROR),
    )
    if quiet and level > logging.WARNING:
        level = logging.WARNING
    log.log(
        level,
        "tq: task %s of class %s (queue %s, attempt %d) -> %d %s: %s",
        info.task_id or "?",
        class_id,
        info.queue or "?",
        info.execution_count + 1,
        status,
        outcome,
        err,
        exc_info=outcome == "error",
        extra={**_log_fields(info), "tq_outcome": outcome, "tq_status": status},
    )
    return PushResult(status, outcome, class_id, err)
