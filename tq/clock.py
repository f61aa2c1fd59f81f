"""The clock tq reads time from, injectable through the current context.

tq never calls `time.time()` directly: it asks `now()`, which reads the clock
set by `use_clock()` in the current context (a `contextvars` variable, so it
follows threads started with `contextvars.copy_context()` and asyncio tasks).
Tests put a fake clock there (see `tqtesting.FakeClock`).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import time
from collections.abc import Iterator
from typing import Protocol


class Clock(Protocol):
    """A source of time."""

    def now(self) -> dt.datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for deadlines)."""
        ...


class SystemClock:
    """The real time."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM = SystemClock()
_current: contextvars.ContextVar[Clock] = contextvars.ContextVar("tq_clock", default=SYSTEM)


def current() -> Clock:
    """The clock of the current context (the system clock by default)."""
    return _current.get()


def now() -> dt.datetime:
    """The current time on the current context's clock."""
    return _current.get().now()


@contextlib.contextmanager
def use_clock(clock: Clock) -> Iterator[Clock]:
    """Makes `clock` the current clock inside the `with` block."""
    token = _current.set(clock)
    try:
        yield clock
    finally:
        _current.reset(token)
