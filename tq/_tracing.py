"""Spans around tq's work, and the trace context that travels in task headers.

Spans come from the OpenTelemetry API: the global tracer provider by
default, or the one given to `tq.telemetry.configure`. Until a real provider
is installed, `span()` costs a check and no span is made (a no-op span of
the API costs several microseconds, a lot next to `add_task`); a global
provider installed later is picked up within a second.

The trace context of the span that added a task is written into the task's
headers (W3C `traceparent`, through the global propagator unless one is
configured); the push span reads it back and links to it, so a trace shows
which request added the task that a handler runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator

Kind = trace.SpanKind

_explicit: trace.Tracer | None = None  # from configure(tracer_provider=...)
_global: trace.Tracer | None = None  # the global provider's, once one is installed
_propagator: TextMapPropagator | None = None
_fields: tuple[TextMapPropagator | None, frozenset[str]] = (None, frozenset())
RECHECK_S = 1.0
_recheck_at = float("-inf")


def bind(
    provider: trace.TracerProvider | None, propagator: TextMapPropagator | None = None
) -> None:
    """Uses `provider` (None: the global one) and `propagator` (None: the global one)."""
    global _explicit, _propagator, _recheck_at
    _explicit = provider.get_tracer("tq") if provider is not None else None
    _propagator = propagator
    _recheck_at = float("-inf")


def tracer() -> trace.Tracer | None:
    """The tracer tq uses, or None while no tracer provider is installed.

    A global provider installed later is noticed within `RECHECK_S`.
    """
    global _global, _recheck_at
    if _explicit is not None:
        return _explicit
    if _global is not None:
        return _global
    # Asking the API costs an environment lookup: not on every add_task.
    now = time.monotonic()
    if now < _recheck_at:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        _recheck_at = now + RECHECK_S
        return None
    # A global provider is set once per process: keep its tracer.
    _global = provider.get_tracer("tq")
    return _global


@contextlib.contextmanager
def span(
    name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: trace.SpanKind = Kind.INTERNAL,
    context: Context | None = None,
    links: list[trace.Link] | None = None,
    record_exception: bool = True,
    set_status_on_exception: bool = True,
) -> Iterator[trace.Span | None]:
    """A span made current for the block, or None when tracing is off.

    By default an exception escaping the block is recorded and marks the
    span as an error.
    """
    t = tracer()
    if t is None:
        yield None
        return
    with t.start_as_current_span(
        name,
        context=context,
        kind=kind,
        attributes=attributes,
        links=links,
        record_exception=record_exception,
        set_status_on_exception=set_status_on_exception,
    ) as s:
        yield s


def _textmap() -> TextMapPropagator:
    if _propagator is not None:
        return _propagator
    from opentelemetry import propagate  # reads OTEL_PROPAGATORS: on first use, not at import

    return propagate.get_global_textmap()


def outgoing_headers() -> dict[str, str] | None:
    """The trace context of the current span as headers, or None without a valid span."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _textmap().inject(carrier)
    return carrier or None


def incoming(headers: Mapping[str, str]) -> tuple[Context | None, list[trace.Link] | None]:
    """(parent context, links) for a span handling a push with these lowercase headers.

    The span links to the context in the headers. It is also its child,
    unless a span is current already (an ASGI tracing middleware's, say), in
    which case that span stays the parent.
    """
    global _fields
    textmap = _textmap()
    if _fields[0] is not textmap:
        _fields = (textmap, frozenset(textmap.fields))
    if not any(f in headers for f in _fields[1]):
        return None, None
    ctx = textmap.extract(headers)
    sc = trace.get_current_span(ctx).get_span_context()
    if not sc.is_valid:
        return None, None
    parent = None if trace.get_current_span().get_span_context().is_valid else ctx
    return parent, [trace.Link(sc)]


def set_attributes(s: trace.Span | None, attributes: Mapping[str, Any]) -> None:
    if s is not None and s.is_recording():
        s.set_attributes(attributes)


def set_error(s: trace.Span | None, description: str) -> None:
    """Marks the span as failed without an exception escaping it."""
    if s is not None and s.is_recording():
        s.set_status(trace.Status(trace.StatusCode.ERROR, description))
