"""Sweeping on a timer (sweeper.run_periodically and its blocking twin), on a fake clock."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

import tq
from sweeper import run_periodically, run_periodically_blocking
from tests import _sweeping as sw
from tq import _metrics
from tqtesting import FakeClock


class CountingSweeper:
    """Counts sweeps, notes the fake time of each, and fails the ones asked to."""

    def __init__(self, clock: FakeClock, fail_on: frozenset[int] = frozenset(), took: float = 0):
        self.clock = clock
        self.fail_on = fail_on
        self.took = took
        self.times: list[float] = []
        self.on_sweep: Callable[[], None] = lambda: None

    def sweep(self, dispatcher: tq.Dispatcher) -> None:
        self.times.append(self.clock.monotonic())
        self.on_sweep()
        self.clock.advance(self.took)
        if len(self.times) in self.fail_on:
            raise RuntimeError("database unavailable")

    async def sweep_async(self, dispatcher: tq.Dispatcher) -> None:
        self.sweep(dispatcher)


def test_blocking_loop_sweeps_every_interval_until_stopped(clock: FakeClock) -> None:
    sweeper = CountingSweeper(clock, took=5)
    disp = sw.dispatcher(submitter=sw.Cloud(), sweeper=sweeper)
    stop = threading.Event()
    pauses: list[float] = []

    def sleep(s: float) -> None:
        pauses.append(s)
        clock.advance(s)
        if len(pauses) == 3:
            stop.set()

    # Stopped during the third pause: no fourth sweep.
    assert run_periodically_blocking(disp, 60, stop, sleep=sleep) == 3
    assert pauses == [55, 55, 55]  # the interval counts from each sweep's start
    start = sweeper.times[0]
    assert [t - start for t in sweeper.times] == [0, 60, 120]


async def test_async_loop_goes_on_after_a_failed_sweep(clock: FakeClock) -> None:
    sweeper = CountingSweeper(clock, fail_on=frozenset({2}))
    disp = sw.dispatcher(submitter=sw.Cloud(), sweeper=sweeper)
    stop = asyncio.Event()
    errors = _metrics.value("tq_sweep_loop_errors")

    async def sleep(s: float) -> None:
        clock.advance(s)
        if len(sweeper.times) == 3:
            stop.set()

    assert await run_periodically(disp, 30, stop, sleep=sleep) == 3
    assert _metrics.value("tq_sweep_loop_errors") == errors + 1


async def test_setting_the_stop_event_ends_the_wait_at_once(clock: FakeClock) -> None:
    sweeper = CountingSweeper(clock)
    disp = sw.dispatcher(submitter=sw.Cloud(), sweeper=sweeper)
    stop = asyncio.Event()
    swept = asyncio.Event()
    sweeper.on_sweep = swept.set
    loop = asyncio.create_task(run_periodically(disp, 3600, stop))
    await asyncio.wait_for(swept.wait(), 60)  # the first sweep runs at once
    stop.set()
    assert await asyncio.wait_for(loop, 60) == 1


def test_a_sweep_longer_than_the_interval_is_followed_at_once(clock: FakeClock) -> None:
    sweeper = CountingSweeper(clock, took=90)
    disp = sw.dispatcher(submitter=sw.Cloud(), sweeper=sweeper)
    stop = threading.Event()
    pauses: list[float] = []

    def sleep(s: float) -> None:
        pauses.append(s)
        stop.set()

    run_periodically_blocking(disp, 60, stop, sleep=sleep)
    assert pauses == [0]


def test_a_loop_without_a_sweeper_is_refused() -> None:
    disp = sw.dispatcher(submitter=sw.Cloud())
    with pytest.raises(tq.ConfigError, match="no sweeper"):
        run_periodically_blocking(disp, 60)
    with pytest.raises(ValueError, match="interval_s"):
        run_periodically_blocking(sw.dispatcher(sweeper=CountingSweeper(FakeClock())), 0)
