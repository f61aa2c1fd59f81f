"""testing_context(): a Scheduler and a FakeClock put in place for a block of code."""

# ruff: noqa: PT028  (a "test"-prefixed name, but not a test function)

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import tq
from tq.clock import Clock
from tqtesting._clock import FakeClock
from tqtesting._options import RetryConfig
from tqtesting._scheduler import Scheduler


@contextlib.contextmanager
def testing_context(
    dispatcher: tq.Dispatcher | None = None,
    clock: Clock | None = None,
    *,
    retry: RetryConfig | None = None,
    queues: Mapping[str, RetryConfig] | None = None,
    raise_on_task_error: bool = True,
    subscriptions: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[Scheduler]:
    """Yields a `Scheduler` that receives every task added inside the block.

    Inside the block, `tq.use_submitter` points at the scheduler and
    `tq.clock.use_clock` at `clock` (default: a new `FakeClock`), so ETAs,
    backoff and `tq.clock.now()` run on fake time. `dispatcher` defaults to
    `tq.default`; the other arguments go to `Scheduler`.
    """
    clk = clock if clock is not None else FakeClock()
    scheduler = Scheduler(
        dispatcher,
        clock=clk,
        retry=retry,
        queues=queues,
        raise_on_task_error=raise_on_task_error,
        subscriptions=subscriptions,
    )
    with tq.clock.use_clock(clk), tq.use_submitter(scheduler):
        yield scheduler


# pytest collects functions named test*: keep it from collecting this one when
# a test module imports it.
testing_context.__test__ = False  # type: ignore[attr-defined]
