"""Recording one submit or one finished reminder: its metrics, span and log fields.

Shared by `add_task` (path "direct"), the outbox's happy path ("happy") and
the sweeper ("sweep"), so that a submit is measured the same way on every
path.
"""

from __future__ import annotations

import contextlib
from types import TracebackType

from opentelemetry import trace

from tq import _metrics, _tracing, clock
from tq._errors import SubmitError
from tq._submitter import Submission


def queue_of(sub: Submission) -> str:
    """The short queue ID a submission goes to."""
    return str(sub.request.parent).rsplit("/", 1)[-1]  # type: ignore[attr-defined]


def log_fields(sub: Submission) -> dict[str, object]:
    """The structured log fields naming a submission (see docs/observability.md)."""
    fields: dict[str, object] = {"tq_class": sub.task_class, "tq_queue": queue_of(sub)}
    name = sub.task_name
    if name:
        fields["tq_task"] = name.rsplit("/", 1)[-1]
    if sub.reminder_id:
        fields["tq_reminder"] = sub.reminder_id
    return fields


class submitting:
    """Times one submit (retries included) in a `tq.submit` span and counts its outcome.

    The outcome is OK, what the block set in `code` (for an error it
    absorbed), or the gRPC code of the SubmitError escaping the block
    (ALREADY_EXISTS included; UNKNOWN for any other exception). Exceptions
    pass through. A class, not a generator: it runs on every submit.
    """

    __slots__ = ("_clock", "_cm", "_span", "_started", "code", "path", "queue", "sub")

    def __init__(self, sub: Submission, path: str) -> None:
        self.sub = sub
        self.path = path
        self.code = "OK"
        self._cm: contextlib.AbstractContextManager[trace.Span] | None = None
        self._span: trace.Span | None = None

    def __enter__(self) -> submitting:
        sub = self.sub
        self.queue = queue_of(sub)
        t = _tracing.tracer()
        if t is not None:
            attrs = {"tq.task_class": sub.task_class, "tq.queue": self.queue, "tq.path": self.path}
            if sub.reminder_id:
                attrs["tq.reminder_id"] = sub.reminder_id
            self._cm = t.start_as_current_span(
                "tq.submit",
                kind=trace.SpanKind.PRODUCER,
                attributes=attrs,
                record_exception=False,
                set_status_on_exception=False,
            )
            self._span = self._cm.__enter__()
        self._clock = clock.current()
        self._started = self._clock.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = self._clock.monotonic() - self._started
        if isinstance(exc, SubmitError):
            self.code = exc.code.name
        elif exc is not None:
            self.code = "UNKNOWN"
        sub, code = self.sub, self.code
        _metrics.add(
            "tq_submits", task_class=sub.task_class, queue=self.queue, path=self.path, code=code
        )
        _metrics.record(
            "tq_submit_duration",
            elapsed,
            task_class=sub.task_class,
            queue=self.queue,
            path=self.path,
            code=code,
        )
        if self._cm is not None:
            _tracing.set_attributes(self._span, {"rpc.grpc.status_code": code})
            if code not in ("OK", "ALREADY_EXISTS"):
                _tracing.set_error(self._span, f"{type(exc).__name__}: {exc}" if exc else code)
            self._cm.__exit__(exc_type, exc, tb)


def reminder_done(sub: Submission, path: str) -> None:
    """Counts a reminder whose task was created, and the time since it was added."""
    _metrics.add("tq_reminders_processed", task_class=sub.task_class, path=path)
    latency = (clock.now() - sub.created).total_seconds()
    _metrics.record("tq_reminders_latency", max(latency, 0.0), task_class=sub.task_class, path=path)
