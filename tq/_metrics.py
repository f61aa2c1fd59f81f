"""In-process counters for what tq does (rejections, submits, parks, ...).

Every counter is also readable in tests through `snapshot()`. An exporter
(OpenTelemetry, Prometheus) reads the same values.
"""

from __future__ import annotations

import threading
from collections import Counter as _Tally

_lock = threading.Lock()
_values: _Tally[tuple[str, tuple[tuple[str, str], ...]]] = _Tally()


def add(name: str, n: int = 1, **labels: str) -> None:
    """Adds `n` to counter `name` with these labels."""
    key = (name, tuple(sorted(labels.items())))
    with _lock:
        _values[key] += n


def value(name: str, **labels: str) -> int:
    """The sum of counter `name` over every label set that contains `labels`."""
    want = set(labels.items())
    with _lock:
        return sum(v for (n, ls), v in _values.items() if n == name and want <= set(ls))


def snapshot() -> dict[tuple[str, tuple[tuple[str, str], ...]], int]:
    with _lock:
        return dict(_values)


def reset() -> None:
    """Zeroes every counter (for tests)."""
    with _lock:
        _values.clear()
