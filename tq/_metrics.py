"""tq's metrics: one catalogue, OpenTelemetry instruments, and an in-process tally.

Every metric tq emits is declared once in `CATALOGUE` (name, kind, unit,
labels, meaning); docs/observability.md lists the same. Code records through
four calls, cheap enough for the hot paths (an instrument is made once per
metric, never per call):

* `add(name, n=1, **labels)`: counters (and up-down counters, `n` may be
  negative);
* `record(name, value, **labels)`: histograms (durations in seconds);
* `observe(name, key, source)`: gauges read when metrics are collected;
  `source()` returns `(value, labels)` pairs; returns a function that
  unregisters it;
* `value(name, **labels)`: what tests read (below).

Instruments come from the OpenTelemetry API (`opentelemetry-api`, a no-op
until an SDK MeterProvider is installed): the global meter provider by
default, or the one given to `tq.telemetry.configure`. A name missing from
the catalogue is made a counter on first use (so new code never fails), but
belongs in the catalogue.

Independently of OpenTelemetry, counters are tallied in this process, so
tests (and `tq` commands) can read them with `value()` / `snapshot()`
without an SDK; gauges can be read with `observed()`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import Counter as _Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

from opentelemetry import metrics as otel_metrics

Kind = Literal["counter", "updown", "histogram", "gauge"]
Observation = tuple[float, Mapping[str, str]]
Source = Callable[[], Iterable[Observation]]

# Seconds. Durations of one call (a submit, a handler, a scan).
DURATION_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
)  # fmt: skip
# Seconds. Latencies across a task's life (queues may hold tasks for hours).
LATENCY_BUCKETS_S = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
)  # fmt: skip
COUNT_BUCKETS = (0, 1, 2, 5, 10, 50, 100, 500, 1000, 2048)


@dataclasses.dataclass(frozen=True, slots=True)
class Metric:
    """One metric of the catalogue."""

    name: str
    kind: Kind
    unit: str  # UCUM: "s", or "{task}"-style annotations for counts
    labels: tuple[str, ...]
    description: str
    buckets: tuple[float, ...] | None = None


def _m(
    name: str,
    kind: Kind,
    unit: str,
    labels: str,
    description: str,
    buckets: tuple[float, ...] | None = None,
) -> Metric:
    return Metric(name, kind, unit, tuple(labels.split()), description, buckets)


CATALOGUE: tuple[Metric, ...] = (
    # The outbox.
    _m("tq_reminders_created", "counter", "{reminder}", "task_class staleness",
       "Reminders committed; staleness=stale if already past fresh_until at commit "
       "(left to the sweeper)"),
    _m("tq_reminders_stale_at_commit", "counter", "{reminder}", "",
       "Reminders already stale when their transaction committed"),
    _m("tq_reminders_cancelled", "counter", "{reminder}", "",
       "Reminders the happy path dropped because delete_task deleted their task first"),
    _m("tq_reminders_processed", "counter", "{reminder}", "task_class path",
       "Reminders whose task was created (then the reminder deleted); path=happy/sweep/replay"),
    _m("tq_reminders_latency", "histogram", "s", "task_class path",
       "Time from add_task to the reminder's task being created and the reminder deleted",
       LATENCY_BUCKETS_S),
    _m("tq_reminders_staleness", "histogram", "s", "task_class",
       "How far past fresh_until a reminder was when the sweeper submitted it",
       LATENCY_BUCKETS_S),
    _m("tq_reminders_parked", "counter", "{reminder}", "task_class code",
       "Reminders parked after a permanent submit failure (code: gRPC code)"),
    _m("tq_reminders_park_failed", "counter", "{reminder}", "task_class",
       "Reminders that could not be parked (kept for the sweeper)"),
    _m("tq_background_full", "counter", "{transaction}", "fallback",
       "Committed transactions whose happy path found the background submits' queue full; "
       "fallback=inline (run by the caller) or sweeper (left to it)"),
    # Submitting.
    _m("tq_submits", "counter", "{task}", "task_class queue path code",
       "Tasks submitted (final outcome after retries); path=direct/happy/sweep/replay, "
       "code=OK or the gRPC code (ALREADY_EXISTS counts as done)"),
    _m("tq_submit_duration", "histogram", "s", "task_class queue path code",
       "Time to submit one task, retries included", DURATION_BUCKETS_S),
    _m("tq_submits_failed", "counter", "{task}", "task_class path code",
       "Outbox submits that failed transiently; the reminder is kept for the sweeper"),
    _m("tq_submit_retries", "counter", "{call}", "task_class code",
       "CreateTask calls retried by CloudTasksSubmitter"),
    # Pushes.
    _m("tq_pushes_rejected", "counter", "{push}", "reason",
       "Pushes refused before reaching a handler (bad envelope, unknown class, auth, ...)"),
    _m("tq_pushes_handled", "counter", "{push}", "task_class queue result retry",
       "Pushes that ran a handler; result=ok/fatal/ignore/retry/transient/error, "
       "retry=true if Cloud Tasks tried the task before"),
    _m("tq_push_duration", "histogram", "s", "task_class queue result",
       "Time the handler took", DURATION_BUCKETS_S),
    _m("tq_push_latency", "histogram", "s", "task_class queue result",
       "Time from the task's expected ETA (when it was meant to run) to the handler's end",
       LATENCY_BUCKETS_S),
    _m("tq_pushes_running", "gauge", "{push}", "task_class", "Handlers running now"),
    # Done markers (effectively-once handlers).
    _m("tq_markers_found", "counter", "{push}", "task_class",
       "Deliveries answered without running the handler: its done marker was committed "
       "already (a redelivery)"),
    _m("tq_markers_expired", "counter", "{marker}", "store",
       "Expired done markers deleted"),
    # Sweeping.
    _m("tq_sweeps", "counter", "{sweep}", "mode", "Sweeps finished; mode=inproc/distributed"),
    _m("tq_sweep_duration", "histogram", "s", "mode", "Time one whole sweep took",
       LATENCY_BUCKETS_S),
    _m("tq_sweeps_skipped", "counter", "{sweep}", "mode",
       "Sweeps not started because one was running in this process"),
    _m("tq_sweeps_rejected", "counter", "{call}", "reason",
       "Calls to the sweep endpoint refused; reason=auth_ and the authentication failure"),
    _m("tq_cron_calls_rejected", "counter", "{call}", "reason",
       "Calls to the cron endpoint refused; reason=auth_ and the authentication failure"),
    _m("tq_sweep_submitted", "counter", "{reminder}", "mode",
       "Stale reminders submitted by sweeps"),
    _m("tq_sweep_scans", "counter", "{scan}", "store result",
       "Scans of a key range; result=ok/truncated/timeout/error"),
    _m("tq_sweep_scan_duration", "histogram", "s", "store result",
       "Time one scan's read of reminder keys took", DURATION_BUCKETS_S),
    _m("tq_sweep_scanned", "counter", "{reminder}", "store staleness",
       "Reminder keys read by scans; staleness=fresh/stale"),
    _m("tq_sweep_scan_errors", "counter", "{scan}", "store", "Scans that failed"),
    _m("tq_sweep_process_errors", "counter", "{scan}", "store",
       "Scans whose reminders could not be submitted"),
    _m("tq_sweep_depth_exhausted", "counter", "{scan}", "store",
       "Ranges left to the next sweep at the deepest follow-up level"),
    _m("tq_sweep_lease_expired", "counter", "{lease}", "store",
       "Scans stopped because their lease ran out"),
    _m("tq_sweep_loop_errors", "counter", "{sweep}", "",
       "Errors of the periodic sweep loop"),
    _m("tq_sweep_task_errors", "counter", "{task}", "store",
       "Distributed sweep tasks that failed"),
    # The database queue.
    _m("tq_dbqueue_attempts", "counter", "{attempt}", "queue task_class result",
       "Delivery attempts; result=done/retry/failed"),
    _m("tq_dbqueue_depth", "gauge", "{task}", "queue", "Live tasks (pending or leased)"),
    _m("tq_dbqueue_oldest_task_age", "gauge", "s", "queue",
       "How long the most overdue pending task has been due (0 if none is due)"),
    _m("tq_dbqueue_leases", "gauge", "{task}", "queue", "Tasks leased by workers now"),
    _m("tq_dbqueue_messages_unrouted", "counter", "{message}", "topic",
       "Messages published to a topic with no subscription (dropped, as Pub/Sub does)"),
)  # fmt: skip

log = logging.getLogger("tq.metrics")

BY_NAME: dict[str, Metric] = {m.name: m for m in CATALOGUE}

_lock = threading.Lock()
_values: _Tally[tuple[str, tuple[tuple[str, str], ...]]] = _Tally()
_sources: dict[str, dict[object, tuple[Source, int]]] = {}
_instruments: dict[str, Any] = {}
_meter: otel_metrics.Meter | None = None


def _make(meter: otel_metrics.Meter, m: Metric) -> Any:
    if m.kind == "counter":
        return meter.create_counter(m.name, m.unit, m.description)
    if m.kind == "updown":
        return meter.create_up_down_counter(m.name, m.unit, m.description)
    if m.kind == "histogram":
        return meter.create_histogram(
            m.name, m.unit, m.description, explicit_bucket_boundaries_advisory=m.buckets
        )
    return meter.create_observable_gauge(m.name, [_callback(m.name)], m.unit, m.description)


def _callback(name: str) -> Callable[[otel_metrics.CallbackOptions], Iterator[Any]]:
    def observe(_options: otel_metrics.CallbackOptions) -> Iterator[Any]:
        for v, labels in observed(name):
            yield otel_metrics.Observation(v, dict(labels))

    return observe


def bind(provider: otel_metrics.MeterProvider | None) -> None:
    """Makes every instrument anew from `provider` (None: the global one)."""
    global _meter, _instruments
    meter = (provider or otel_metrics.get_meter_provider()).get_meter("tq")
    made = {m.name: _make(meter, m) for m in CATALOGUE}
    with _lock:
        _meter, _instruments = meter, made


def _instrument(name: str) -> Any:
    inst = _instruments.get(name)
    if inst is not None:
        return inst
    with _lock:
        inst = _instruments.get(name)
        if inst is None and _meter is not None:
            inst = _instruments[name] = _meter.create_counter(name)
    return inst


def add(name: str, n: int = 1, **labels: str) -> None:
    """Adds `n` to counter (or up-down counter) `name` with these labels."""
    # Labels in call order: value() matches sets and snapshot() sorts, so the
    # hot path skips the sort.
    key = (name, tuple(labels.items()))
    with _lock:
        _values[key] += n
    inst = _instrument(name)
    if inst is not None:
        inst.add(n, labels)


Labels = tuple[tuple[tuple[str, str], ...], Mapping[str, str]]
"""A label set made once by `labels()`, for `add_labelled` / `record_labelled` in hot paths."""


def labels(**labels: str) -> Labels:
    """`labels` made once, for calls that would pass the same ones again and again."""
    return tuple(labels.items()), labels


def add_labelled(name: str, labels: Labels, n: int = 1) -> None:
    """`add(name, n, **labels)` with labels made by `labels()`."""
    key = (name, labels[0])
    with _lock:
        _values[key] += n
    inst = _instrument(name)
    if inst is not None:
        inst.add(n, labels[1])


def record_labelled(name: str, value: float, labels: Labels) -> None:
    """`record(name, value, **labels)` with labels made by `labels()`."""
    inst = _instruments.get(name)
    if inst is not None:
        inst.record(value, labels[1])


def record(name: str, value: float, **labels: str) -> None:
    """Records one observation of histogram `name` (seconds for durations).

    Histograms are not tallied in process (read them through an SDK reader).
    """
    inst = _instruments.get(name)
    if inst is not None:
        inst.record(value, labels)


def instrument(name: str) -> Any:
    """Histogram `name`'s instrument, or None if recording would do nothing now.

    For recording many values in a loop: `inst.record(value, attributes)` is
    what `record` does, without building the attributes anew for every
    value. None while no SDK is installed: the API's instruments are no-ops
    then (a proxy gets a real instrument once a provider is set: take the
    instrument anew for each batch, not once for good).
    """
    inst = _instruments.get(name)
    if inst is None or isinstance(inst, otel_metrics.NoOpHistogram):
        return None
    # The API's proxy instrument before a real provider is set (a private
    # attribute: if it ever goes, values are recorded as usual).
    if getattr(inst, "_real_instrument", True) is None:
        return None
    return inst


def observe(name: str, key: object, source: Source) -> Callable[[], None]:
    """Feeds gauge `name` from `source()` at each collection; returns the unregister call.

    Registrations under the same `key` (e.g. one database) count as one: the
    source is read once however many times it is registered, until every
    registration is undone.
    """
    m = BY_NAME.get(name)
    if m is None or m.kind != "gauge":
        raise ValueError(f"{name!r} is not a gauge of tq._metrics.CATALOGUE")
    with _lock:
        sources = _sources.setdefault(name, {})
        old = sources.get(key)
        sources[key] = (old[0] if old else source, (old[1] if old else 0) + 1)
    done = False

    def unregister() -> None:
        nonlocal done
        with _lock:
            if done:
                return
            done = True
            src, count = _sources[name][key]
            if count > 1:
                _sources[name][key] = (src, count - 1)
            else:
                del _sources[name][key]

    return unregister


def observed(name: str) -> list[Observation]:
    """Reads gauge `name` now from every registered source (a failing source is skipped)."""
    with _lock:
        sources = [s for s, _ in _sources.get(name, {}).values()]
    out: list[Observation] = []
    for s in sources:
        try:
            out.extend(s())
        except Exception:
            log.exception("tq: reading gauge %s failed", name)
    return out


def value(name: str, **labels: str) -> int:
    """The sum of counter `name` over every label set that contains `labels`."""
    want = set(labels.items())
    with _lock:
        return sum(v for (n, ls), v in _values.items() if n == name and want <= set(ls))


def snapshot() -> dict[tuple[str, tuple[tuple[str, str], ...]], int]:
    """Every tallied counter by (name, sorted labels)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
    with _lock:
        for (name, labels), v in _values.items():
            key = (name, tuple(sorted(labels)))
            out[key] = out.get(key, 0) + v
    return out


def reset() -> None:
    """Zeroes the in-process tally (for tests); OpenTelemetry instruments are left alone."""
    with _lock:
        _values.clear()


bind(None)
