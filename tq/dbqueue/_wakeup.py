"""Waking in-process workers as soon as a task is committed.

Workers poll; this only shortens the wait. A submitter notifies after its
commit and every worker of the same database in this process wakes up, from
any thread. Workers in other processes notice new tasks on their next poll.
"""

from __future__ import annotations

import asyncio
import threading

import sqlalchemy as sa


def key_of(engine: sa.Engine) -> str:
    """Which database an engine writes to, as far as wakeups are concerned."""
    return engine.url.render_as_string(hide_password=True)


class Waiter:
    """One worker's wakeup: an asyncio.Event set from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def wake(self) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.event.set()
            return
        try:
            self.loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:
            pass  # the worker's loop is closed; it is not waiting any more


class ThreadWaiter:
    """A wakeup for a blocking caller (a pull lease that waits): a threading.Event."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def wake(self) -> None:
        self.event.set()


_lock = threading.Lock()
_waiters: dict[str, set[Waiter | ThreadWaiter]] = {}


def subscribe(key: str) -> Waiter:
    """A Waiter woken by `notify(key)`; call from the worker's event loop."""
    waiter = Waiter()
    with _lock:
        _waiters.setdefault(key, set()).add(waiter)
    return waiter


def subscribe_thread(key: str) -> ThreadWaiter:
    """A ThreadWaiter woken by `notify(key)`, for blocking code in any thread."""
    waiter = ThreadWaiter()
    with _lock:
        _waiters.setdefault(key, set()).add(waiter)
    return waiter


def unsubscribe(key: str, waiter: Waiter | ThreadWaiter) -> None:
    with _lock:
        ws = _waiters.get(key)
        if ws is not None:
            ws.discard(waiter)
            if not ws:
                del _waiters[key]


def notify(key: str) -> None:
    """Wakes every worker of database `key` in this process."""
    with _lock:
        ws = list(_waiters.get(key, ()))
    for w in ws:
        w.wake()
