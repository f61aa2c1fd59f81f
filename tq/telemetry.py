"""Observability: where tq's metrics and spans go, a Prometheus endpoint, JSON logs.

tq records metrics and spans through the OpenTelemetry API. With nothing
configured they cost next to nothing and go nowhere. Three ways to see them:

* Install an OpenTelemetry SDK globally (`metrics.set_meter_provider`,
  `trace.set_tracer_provider`, or the `opentelemetry-instrument` agent):
  tq uses the global providers by default.
* Give tq providers of its own with `configure(meter_provider=...,
  tracer_provider=...)`.
* Mount `prometheus_app()` somewhere (e.g. `app.mount("/metrics", ...)`):
  it serves tq's metrics in the Prometheus text format.

Every metric, span and log field is listed in docs/observability.md and in
`METRICS`. The SDK and the Prometheus exporter come with the `otel` extra
(`pip install tq[otel]`); `import tq` never needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tq import _metrics, _tracing
from tq._jsonlog import JSONFormatter
from tq._metrics import CATALOGUE as METRICS
from tq._metrics import Metric

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import TracerProvider


def configure(
    *,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    propagator: TextMapPropagator | None = None,
) -> None:
    """Sends tq's metrics and spans to these providers.

    Args:
      meter_provider: where tq's instruments are made; None (default): the
        global one (`opentelemetry.metrics.get_meter_provider()`, followed
        even when it is installed later).
      tracer_provider: where tq's spans go; None (default): the global one.
      propagator: how the trace context is written into task headers and
        read from pushes; None (default): the global one
        (`opentelemetry.propagate`, W3C `traceparent` unless
        `OTEL_PROPAGATORS` says otherwise).

    Each call replaces every setting: `configure()` returns to the defaults.
    Call it at start-up; metrics recorded before a call stay with the
    previous provider.
    """
    _metrics.bind(meter_provider)
    _tracing.bind(tracer_provider, propagator)


def prometheus_app(*, registry: Any = None) -> Any:
    """An ASGI app serving tq's metrics in the Prometheus text format.

    Mount it where your scraper looks, e.g.
    `app.mount("/metrics", tq.telemetry.prometheus_app())`. It makes an
    OpenTelemetry SDK MeterProvider with a Prometheus reader and calls
    `configure(meter_provider=...)` (spans and the propagator are left as
    they are configured), so call it once, at start-up.

    Args:
      registry: the `prometheus_client.CollectorRegistry` to expose; None
        (default) makes one holding only tq's metrics (the process's default
        registry stays yours).

    Raises ImportError, saying which extra to install, without
    `opentelemetry-sdk`, `opentelemetry-exporter-prometheus` and
    `prometheus-client`.
    """
    try:
        import prometheus_client
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider as SDKMeterProvider
    except ImportError as e:
        raise ImportError(
            "tq.telemetry.prometheus_app needs the otel extra: pip install 'tq[otel]'"
        ) from e
    if registry is None:
        registry = prometheus_client.CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(registry=registry)
    _metrics.bind(SDKMeterProvider(metric_readers=[reader]))
    return prometheus_client.make_asgi_app(registry)


__all__ = ["METRICS", "JSONFormatter", "Metric", "configure", "prometheus_app"]
