"""Sweeping on a timer in one process (the dev server, the `tq sweep` command)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from tq import _metrics, clock
from tq._errors import ConfigError

if TYPE_CHECKING:
    from tq import Dispatcher

log = logging.getLogger("tq.sweeper")

DEFAULT_INTERVAL_S = 60.0


def _check(dispatcher: Dispatcher, interval_s: float) -> None:
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive, got {interval_s}")
    if dispatcher.sweeper is None:
        raise ConfigError(
            "no sweeper configured: pass sweeper=sweeper.InProcSweeper() (or make a "
            "sweeper.DistributedSweeper(dispatcher)) before sweeping periodically"
        )


def _pause(started: float, interval_s: float) -> float:
    return max(0.0, interval_s - (clock.current().monotonic() - started))


async def run_periodically(
    dispatcher: Dispatcher,
    interval_s: float = DEFAULT_INTERVAL_S,
    stop_event: asyncio.Event | None = None,
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> int:
    """Sweeps now, then every `interval_s` seconds, until `stop_event` is set.

    Each round starts `interval_s` after the previous one started (at once
    if a sweep took longer). A failed sweep is logged and counted
    (`tq_sweep_loop_errors`) and the loop goes on; a ConfigError (a
    misconfiguration no retry can fix) ends it. Returns how many sweeps
    ran. `sleep(seconds)` replaces the wait between rounds (for tests with a
    fake clock); by default the loop waits on `stop_event`, so setting it
    ends the wait at once. Cancelling the coroutine stops it too.

    Raises ConfigError (the dispatcher has no sweeper) or ValueError
    (interval_s <= 0) before sweeping.
    """
    _check(dispatcher, interval_s)
    stop = stop_event if stop_event is not None else asyncio.Event()
    rounds = 0
    while not stop.is_set():
        started = clock.current().monotonic()
        try:
            await dispatcher.sweep_async()
        except ConfigError:
            raise
        except Exception:
            _metrics.add("tq_sweep_loop_errors")
            log.exception("tq sweep: a periodic sweep failed; trying again next round")
        rounds += 1
        if stop.is_set():
            break
        pause = _pause(started, interval_s)
        if sleep is not None:
            await sleep(pause)
        else:
            try:
                await asyncio.wait_for(stop.wait(), pause)
            except TimeoutError:
                pass
    return rounds


def run_periodically_blocking(
    dispatcher: Dispatcher,
    interval_s: float = DEFAULT_INTERVAL_S,
    stop_event: threading.Event | None = None,
    *,
    sleep: Callable[[float], None] | None = None,
) -> int:
    """The blocking twin of `run_periodically` (what `tq sweep` runs).

    Sweeps with `dispatcher.sweep()` now and every `interval_s` seconds
    until `stop_event` is set (e.g. from a signal handler); returns how many
    sweeps ran. `sleep(seconds)` replaces the wait, as in `run_periodically`.
    """
    _check(dispatcher, interval_s)
    stop = stop_event if stop_event is not None else threading.Event()
    rounds = 0
    while not stop.is_set():
        started = clock.current().monotonic()
        try:
            dispatcher.sweep()
        except ConfigError:
            raise
        except Exception:
            _metrics.add("tq_sweep_loop_errors")
            log.exception("tq sweep: a periodic sweep failed; trying again next round")
        rounds += 1
        if stop.is_set():
            break
        pause = _pause(started, interval_s)
        if sleep is not None:
            sleep(pause)
        else:
            stop.wait(pause)
    return rounds
