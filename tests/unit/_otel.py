"""In-memory OpenTelemetry for tests: what tq's metrics and spans recorded."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tq.telemetry


class Telemetry:
    """tq's metrics and spans, sent to in-memory exporters while it is in effect."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.tracers.get_tracer("tests")

    def points(self, name: str) -> list[Any]:
        """The data points of metric `name` (cumulative since the start)."""
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [
            p
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == name
            for p in m.data.data_points
        ]

    def unit(self, name: str) -> str:
        data = self.reader.get_metrics_data()
        assert data is not None
        units = {
            m.unit
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == name
        }
        assert len(units) == 1, (name, units)
        return str(units.pop())

    def point(self, name: str, **labels: Any) -> Any:
        """The one data point of `name` whose attributes contain `labels`."""
        found = [p for p in self.points(name) if _contains(p.attributes, labels)]
        assert len(found) == 1, (
            f"{name} {labels}: {[dict(p.attributes) for p in self.points(name)]}"
        )
        return found[0]

    def value(self, name: str, **labels: Any) -> Any:
        """The summed value of counter / gauge points of `name` matching `labels`."""
        return sum(p.value for p in self.points(name) if _contains(p.attributes, labels))

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def span(self, name: str) -> ReadableSpan:
        found = self.spans(name)
        assert len(found) == 1, f"{name}: {[s.name for s in self.spans()]}"
        return found[0]

    def close(self) -> None:
        self.meters.shutdown()
        self.tracers.shutdown()


def _contains(attributes: Mapping[str, Any] | None, labels: Mapping[str, Any]) -> bool:
    attrs = dict(attributes or {})
    return all(attrs.get(k) == v for k, v in labels.items())


@contextlib.contextmanager
def captured() -> Iterator[Telemetry]:
    """Points tq at fresh in-memory providers for the block, then back at the global ones."""
    t = Telemetry()
    tq.telemetry.configure(meter_provider=t.meters, tracer_provider=t.tracers)
    try:
        yield t
    finally:
        tq.telemetry.configure()
        t.close()


@pytest.fixture(name="otel")
def otel_fixture() -> Iterator[Telemetry]:
    """`captured()` for a test (import it marked noqa F401; pytest knows it as `otel`)."""
    with captured() as t:
        yield t
