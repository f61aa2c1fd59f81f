"""Recording one submit or one finished reminder: its metrics, span and log fields.

Shared by `add_task` (path "direct"), the outbox's happy path ("happy") and
the sweeper ("sweep"), so that a submit is measured the same way on every
path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from types import TracebackType

from opentelemetry import trace

from tq import _metrics, _tracing, clock
from tq._errors import SubmitError
from tq._submitter import Submission

# Submits of a batch by (task_class, queue, code), added to tq_submits at once
# (`count_submits`): one counter update per batch instead of one per task.
Tally = dict[tuple[str, str, str], int]


def queue_of(sub: Submission) -> str:
    """The short queue ID a submission goes to (the topic ID for a message to publish)."""
    return sub.destination.rsplit("/", 1)[-1]


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

    With a `tally`, the outcome is counted there instead of in tq_submits
    (see `count_submits`); the duration is recorded either way, from
    `started` (a `clock.current().monotonic()` reading) if given.
    """

    __slots__ = (
        "_clock",
        "_cm",
        "_given_start",
        "_span",
        "_started",
        "code",
        "path",
        "queue",
        "sub",
        "tally",
    )

    def __init__(
        self, sub: Submission, path: str, tally: Tally | None = None, started: float | None = None
    ) -> None:
        self.sub = sub
        self.path = path
        self.tally = tally
        self.code = "OK"
        self._given_start = started
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
        given = self._given_start
        self._started = self._clock.monotonic() if given is None else given
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
        if self.tally is None:
            _metrics.add(
                "tq_submits", task_class=sub.task_class, queue=self.queue, path=self.path, code=code
            )
        else:
            key = (sub.task_class, self.queue, code)
            self.tally[key] = self.tally.get(key, 0) + 1
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


class QuickSubmits:
    """`submitting`'s metrics for a batch submitted while no tracer is installed.

    The same tq_submits counts (through the tally) and one tq_submit_duration
    value per submit, with each label set's attributes built once per batch
    instead of per submit; no span (there is no tracer to make one).
    """

    __slots__ = ("_attrs", "_queues", "histogram", "path", "tally")

    def __init__(self, path: str, tally: Tally) -> None:
        self.path = path
        self.tally = tally
        self.histogram = _metrics.instrument("tq_submit_duration")
        """None while durations would be recorded nowhere: `done_all` may count then."""
        self._attrs: dict[tuple[str, str, str], dict[str, str]] = {}
        self._queues: dict[str, str] = {}  # queue_of by the request's parent

    def done_all(self, subs: Iterable[Submission], code: str) -> None:
        """Counts submits with outcome `code`, without their durations (no histogram)."""
        by_parent: dict[tuple[str, str], int] = {}
        for sub in subs:
            key = (sub.task_class, sub.destination)
            by_parent[key] = by_parent.get(key, 0) + 1
        tally = self.tally
        for (task_class, parent), n in by_parent.items():
            queue = self._queues.get(parent)
            if queue is None:
                queue = self._queues[parent] = str(parent).rsplit("/", 1)[-1]
            counted = (task_class, queue, code)
            tally[counted] = tally.get(counted, 0) + n

    def done(self, sub: Submission, code: str, elapsed: float) -> None:
        """Counts one submit with outcome `code` that took `elapsed` seconds."""
        parent = sub.destination
        queue = self._queues.get(parent)
        if queue is None:
            queue = self._queues[parent] = queue_of(sub)
        key = (sub.task_class, queue, code)
        tally = self.tally
        tally[key] = tally.get(key, 0) + 1
        if self.histogram is None:
            return
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = self._attrs[key] = {
                "task_class": key[0],
                "queue": key[1],
                "path": self.path,
                "code": code,
            }
        self.histogram.record(elapsed, attrs)


def reminder_done(sub: Submission, path: str) -> None:
    """Counts a reminder whose task was created, and the time since it was added."""
    _metrics.add("tq_reminders_processed", task_class=sub.task_class, path=path)
    latency = (clock.now() - sub.created).total_seconds()
    _metrics.record("tq_reminders_latency", max(latency, 0.0), task_class=sub.task_class, path=path)


def count_submits(tally: Tally, path: str) -> None:
    """Adds the submits tallied by `submitting(..., tally)` to tq_submits."""
    for (task_class, queue, code), n in tally.items():
        _metrics.add("tq_submits", n, task_class=task_class, queue=queue, path=path, code=code)


def reminders_done(subs: Iterable[Submission], path: str) -> None:
    """`reminder_done` for a batch: one counter update per task class."""
    now = clock.now()
    done: dict[str, int] = {}
    histogram = _metrics.instrument("tq_reminders_latency")
    attrs: dict[str, dict[str, str]] = {}
    for sub in subs:
        task_class = sub.task_class
        n = done.get(task_class)
        if n is None:
            n = 0
            attrs[task_class] = {"task_class": task_class, "path": path}
        done[task_class] = n + 1
        if histogram is not None:
            latency = (now - sub.created).total_seconds()
            histogram.record(latency if latency > 0.0 else 0.0, attrs[task_class])
    for task_class, n in done.items():
        _metrics.add("tq_reminders_processed", n, task_class=task_class, path=path)
