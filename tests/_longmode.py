"""Short and long runs of the hardening and chaos tests (a pytest plugin).

`TQ_LONG=1` selects the long mode (`scripts/long` sets it): tests marked
`slow` run (they are skipped otherwise), scenarios take their long sizes
(`pick(short, long)`), and the Hypothesis profile `tq-long` (100,000
examples unless a property asks fewer) replaces `tq-ci` (300 examples,
derandomized so that CI is repeatable). Tests take the profile explicitly
with `fuzz_settings()`, so other tests keep Hypothesis' defaults.

Tests report what they measured with `record_figure(name, **values)`:
the figures are printed at the end of the run and, with `TQ_FIGURES=<file>`,
appended to that file as JSON lines (docs/reliability.md quotes them).
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

LONG = os.environ.get("TQ_LONG", "") not in ("", "0")

_QUIET_CHECKS = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.function_scoped_fixture,
    HealthCheck.filter_too_much,
]
settings.register_profile(
    "tq-ci",
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=_QUIET_CHECKS,
    print_blob=True,
)
settings.register_profile(
    "tq-long",
    max_examples=100_000,
    deadline=None,
    suppress_health_check=_QUIET_CHECKS,
    print_blob=True,
)
PROFILE = "tq-long" if LONG else "tq-ci"


def fuzz_settings(*, ci: int | None = None, long: int | None = None) -> settings:
    """The profile of this run; `ci` / `long` override its `max_examples` per mode."""
    base = settings.get_profile(PROFILE)
    examples = long if LONG else ci
    return settings(base, max_examples=examples or base.max_examples)


def pick(short: Any, long: Any) -> Any:
    """`long` in the long mode, else `short` (sizes of bursts, rounds of faults)."""
    return long if LONG else short


_figures: list[dict[str, Any]] = []
_lock = threading.Lock()


def record_figure(name: str, **values: Any) -> None:
    """Keeps one measured figure (cases tried, faults injected, tasks lost...)."""
    row = {"figure": name, "mode": "long" if LONG else "short", **values}
    with _lock:
        _figures.append(row)
    path = os.environ.get("TQ_FIGURES")
    if path:
        with _lock, open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if LONG:
        return
    skip = pytest.mark.skip(reason="long-running: runs with TQ_LONG=1")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    with _lock:
        rows = list(_figures)
    if not rows:
        return
    terminalreporter.section("tq figures")
    for row in rows:
        terminalreporter.write_line(json.dumps(row, sort_keys=True))
