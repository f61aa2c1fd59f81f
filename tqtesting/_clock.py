"""FakeClock: time that moves only when a test says so."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

# A fixed, recent start so that tests are deterministic and timestamps look real.
DEFAULT_START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class FakeClock:
    """A `tq.clock.Clock` whose time changes only through `advance` and `set`.

    Args:
      start: the initial time, timezone-aware; default 2026-01-01 00:00 UTC.

    `monotonic()` starts at 1000.0 and moves forward by the same amount as
    the wall time; setting the wall time back leaves it where it is. Thread
    safe. Listeners added with `on_change` are called (outside the lock, in
    the thread that moved the clock) after every change, e.g. to wake a
    `tqtesting.Scheduler` waiting for the next ETA.
    """

    def __init__(self, start: dt.datetime | None = None) -> None:
        start = DEFAULT_START if start is None else start
        _require_aware(start)
        self._lock = threading.Lock()
        self._now = start.astimezone(dt.UTC)
        self._mono = 1000.0
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> dt.datetime:
        """The fake current time (UTC)."""
        # One attribute read is atomic; the lock keeps writers consistent.
        return self._now

    def monotonic(self) -> float:
        """Fake monotonic seconds; never goes back."""
        return self._mono

    def advance(self, delta: dt.timedelta | float) -> dt.datetime:
        """Moves time forward by `delta` (a timedelta or seconds); returns the new now.

        Refuses a negative delta (ValueError): use `set` to go back.
        """
        if not isinstance(delta, dt.timedelta):
            delta = dt.timedelta(seconds=delta)
        if delta < dt.timedelta(0):
            raise ValueError(f"FakeClock.advance: delta must not be negative, got {delta}")
        with self._lock:
            self._now += delta
            self._mono += delta.total_seconds()
            now = self._now
        self._notify()
        return now

    def set(self, when: dt.datetime) -> dt.datetime:
        """Sets the current time (timezone-aware; may go back); returns it."""
        _require_aware(when)
        with self._lock:
            delta = (when - self._now).total_seconds()
            self._now = when.astimezone(dt.UTC)
            if delta > 0:
                self._mono += delta
        self._notify()
        return when

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Calls `listener()` after every change of time; returns a function removing it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def _notify(self) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener()

    def __repr__(self) -> str:
        return f"FakeClock({self.now().isoformat()})"


def _require_aware(when: dt.datetime) -> None:
    if not isinstance(when, dt.datetime) or when.tzinfo is None:
        raise ValueError(f"FakeClock needs a timezone-aware datetime, got {when!r}")
