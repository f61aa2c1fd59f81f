"""The threads that run an async sweep's blocking store calls.

Store methods block (see `tq.txn.ReminderStore`). An async sweep runs them
in threads of its own, as many as it has scans and batches at once: the
event loop's default executor has a few threads only (min(32, CPUs + 4)),
shared with the application, so the sweep's reads would queue there behind
each other, and the application's calls behind the sweep's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class SweepThreads:
    """A thread pool for one async sweep (or sweep task); `close()` when done."""

    def __init__(self, size: int) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix="tq-sweep-io")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`await asyncio.to_thread(fn, ...)`, in this pool."""
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def close(self) -> None:
        """Lets the threads end once their calls return (without waiting for them)."""
        self._pool.shutdown(wait=False)
