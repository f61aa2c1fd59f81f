"""tqtesting.FakeClock and tq.clock's context-local clock."""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import threading

import pytest

import tq
from tqtesting import FakeClock
from tqtesting._clock import DEFAULT_START


def test_fake_clock_starts_at_a_fixed_time_and_stands_still() -> None:
    clock = FakeClock()
    assert clock.now() == DEFAULT_START
    assert clock.now() == clock.now()
    assert clock.now().tzinfo is not None


def test_advance_moves_wall_and_monotonic_time_together() -> None:
    clock = FakeClock()
    mono = clock.monotonic()
    assert clock.advance(dt.timedelta(minutes=2)) == DEFAULT_START + dt.timedelta(minutes=2)
    clock.advance(0.5)
    assert clock.now() == DEFAULT_START + dt.timedelta(seconds=120.5)
    assert clock.monotonic() == mono + 120.5


def test_advance_refuses_going_back() -> None:
    with pytest.raises(ValueError, match="negative"):
        FakeClock().advance(-1)


def test_set_may_go_back_but_monotonic_never_does() -> None:
    clock = FakeClock()
    mono = clock.monotonic()
    clock.set(DEFAULT_START + dt.timedelta(seconds=10))
    assert clock.monotonic() == mono + 10
    clock.set(DEFAULT_START - dt.timedelta(days=1))
    assert clock.now() == DEFAULT_START - dt.timedelta(days=1)
    assert clock.monotonic() == mono + 10


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock().set(dt.datetime(2026, 1, 1))


def test_other_timezones_are_converted_to_utc() -> None:
    tz = dt.timezone(dt.timedelta(hours=5))
    clock = FakeClock(dt.datetime(2026, 1, 1, 5, tzinfo=tz))
    assert clock.now() == DEFAULT_START
    assert clock.now().utcoffset() == dt.timedelta(0)


def test_listeners_hear_every_change_until_removed() -> None:
    clock = FakeClock()
    heard: list[dt.datetime] = []
    remove = clock.on_change(lambda: heard.append(clock.now()))
    clock.advance(1)
    clock.set(DEFAULT_START)
    remove()
    clock.advance(1)
    assert heard == [DEFAULT_START + dt.timedelta(seconds=1), DEFAULT_START]


def test_concurrent_advances_all_count() -> None:
    clock = FakeClock()

    def bump() -> None:
        for _ in range(1000):
            clock.advance(dt.timedelta(microseconds=1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.now() == DEFAULT_START + dt.timedelta(microseconds=4000)


def test_use_clock_is_context_local_and_restored() -> None:
    clock = FakeClock()
    assert tq.clock.current() is tq.clock.SYSTEM
    with tq.clock.use_clock(clock):
        assert tq.clock.now() == DEFAULT_START
        seen: list[dt.datetime] = []
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(lambda: seen.append(tq.clock.now()),))
        t.start()
        t.join()
        assert seen == [DEFAULT_START]
    assert tq.clock.current() is tq.clock.SYSTEM


async def test_use_clock_follows_asyncio_tasks() -> None:
    clock = FakeClock()

    async def read() -> dt.datetime:
        return tq.clock.now()

    with tq.clock.use_clock(clock):
        assert await asyncio.create_task(read()) == DEFAULT_START
    assert await asyncio.create_task(read()) != DEFAULT_START
