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
import dataclasses
import inspect
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tq import _envelope, _metrics
from tq._errors import Fatal, Ignore, Retry, Transient
from tq._execution import ExecutionInfo, executing

if TYPE_CHECKING:
    from tq._dispatcher import Dispatcher

log = logging.getLogger("tq.push")


@dataclasses.dataclass(frozen=True, slots=True)
class PushResult:
    """What became of one push."""

    status: int
    outcome: str  # ok, fatal, ignore, retry, transient, error, or a rejection reason
    class_id: str = ""
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        """True when Cloud Tasks will not retry the task (2xx)."""
        return 200 <= self.status < 300


def reject(status: int, reason: str, detail: str, class_id: str = "") -> PushResult:
    _metrics.add("tq_pushes_rejected", reason=reason)
    log.warning("tq: push rejected (%d %s): %s", status, reason, detail)
    return PushResult(status, reason, class_id, ValueError(detail))


async def handle_push(
    dispatcher: Dispatcher,
    path_class_id: str | None,
    headers: Mapping[str, str],
    body: bytes,
) -> PushResult:
    """Decodes and runs one pushed task. `headers` keys must be lowercase."""
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

    info = ExecutionInfo.from_headers(class_id, headers, app_engine=dispatcher.app_engine)
    handler = cls.handler
    try:
        with executing(info):
            if inspect.iscoroutinefunction(handler):
                await handler(payload)
            else:
                # Sync handlers run in a thread (with this context) so they
                # never block the event loop.
                await asyncio.to_thread(handler, payload)
    except Exception as e:
        return _outcome_of(e, cls.id, info, cls.quiet_on_error)
    _metrics.add("tq_pushes_handled", task_class=cls.id, result="ok")
    return PushResult(200, "ok", cls.id)


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
    )
    _metrics.add("tq_pushes_handled", task_class=class_id, result=outcome)
    return PushResult(status, outcome, class_id, err)
