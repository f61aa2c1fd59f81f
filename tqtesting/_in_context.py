"""Awaiting a coroutine in a context of its own without a task of its own."""

from __future__ import annotations

import contextvars
from collections.abc import Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class InContext(Generic[T]):
    """`await InContext(coro, ctx)`: runs `coro` in the awaiting task, each step in `ctx`.

    What `asyncio.create_task(coro, context=ctx)` awaited at once gives (the
    coroutine's context variables stay its own), without a task: no event
    loop round trip per coroutine, and a coroutine that never suspends costs
    no more than a call. The awaiting task is the current task while it runs,
    so it must await nothing else meanwhile (cancelling that task cancels
    the coroutine, as awaiting its task would).
    """

    __slots__ = ("_coro", "_ctx")

    def __init__(self, coro: Coroutine[Any, Any, T], ctx: contextvars.Context) -> None:
        self._coro = coro
        self._ctx = ctx

    def __await__(self) -> Generator[Any, Any, T]:
        coro, run = self._coro, self._ctx.run
        try:
            step = run(coro.send, None)
            while True:
                # Pass what the coroutine waits for up to the task, and the
                # task's answer (a value or an exception, e.g. a cancellation)
                # back down: what `yield from` does, but inside `ctx`.
                try:
                    value = yield step
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as e:
                    step = run(coro.throw, e)
                else:
                    step = run(coro.send, value)
        except StopIteration as stop:
            result: T = stop.value
            return result
