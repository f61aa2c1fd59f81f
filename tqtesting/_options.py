"""Run options of the in-memory scheduler, and its retry configuration."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from tqtesting._records import TaskRecord

DEFAULT_MAX_EXECUTIONS = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class RetryConfig:
    """How a failed task is retried, as a Cloud Tasks queue's retry config.

    The wait before retry k (k = 1 for the first retry) is `min_backoff`
    doubled `max_doublings` times, then growing linearly by the last doubled
    value, capped at `max_backoff`: with 10 s / 300 s / 3 doublings that is
    10, 20, 40, 80, 160, 240, 300, 300 ... seconds.

    Args:
      max_attempts: executions before the task is failed for good (Cloud
        Tasks defaults to 100; 5 keeps a failing test short). At least 1.
      min_backoff, max_backoff: bounds of the wait (default 0.1 s and 1 h).
      max_doublings: default 16.
    """

    max_attempts: int = 5
    min_backoff: dt.timedelta = dt.timedelta(seconds=0.1)
    max_backoff: dt.timedelta = dt.timedelta(hours=1)
    max_doublings: int = 16

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryConfig.max_attempts must be at least 1")
        if self.min_backoff < dt.timedelta(0) or self.max_backoff < self.min_backoff:
            raise ValueError("RetryConfig needs 0 <= min_backoff <= max_backoff")
        if self.max_doublings < 0:
            raise ValueError("RetryConfig.max_doublings must not be negative")

    def backoff(self, retry: int) -> dt.timedelta:
        """The wait before retry number `retry` (1 for the first retry)."""
        k = max(0, retry - 1)
        if k <= self.max_doublings:
            wait = self.min_backoff * (1 << k)
        else:
            wait = self.min_backoff * (1 << self.max_doublings) * (k - self.max_doublings + 1)
        return min(wait, self.max_backoff)


TaskMatcher = str | Callable[[TaskRecord], bool]


class RunOption:
    """An option of `Scheduler.run` / `run_async`; build one with the functions below."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True, slots=True)
class _StopWhenDrained(RunOption):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class _StopAfterTask(RunOption):
    matcher: TaskMatcher


@dataclasses.dataclass(frozen=True, slots=True)
class _StopBeforeTask(RunOption):
    matcher: TaskMatcher


@dataclasses.dataclass(frozen=True, slots=True)
class _Parallel(RunOption):
    n: int


@dataclasses.dataclass(frozen=True, slots=True)
class _MaxExecutions(RunOption):
    n: int


@dataclasses.dataclass(frozen=True, slots=True)
class _WaitWhenDrained(RunOption):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class _LoseResponse(RunOption):
    matcher: TaskMatcher
    times: int


def stop_when_drained() -> RunOption:
    """Stop once no task is pending or executing (the default without a stop option).

    Tasks due later count as pending: with a FakeClock the run moves the clock
    to them (see `Scheduler(auto_advance=...)`).
    """
    return _StopWhenDrained()


def stop_after_task(task: TaskMatcher) -> RunOption:
    """Stop after an attempt of a matching task ends (whatever its outcome).

    `task` is a task class ID or a predicate on `TaskRecord`. Tasks running
    alongside finish first; nothing new starts.
    """
    return _StopAfterTask(task)


def stop_before_task(task: TaskMatcher) -> RunOption:
    """Stop when a matching task is next to run, leaving it pending.

    `task` is a task class ID or a predicate on `TaskRecord`.
    """
    return _StopBeforeTask(task)


def parallel(n: int) -> RunOption:
    """Run up to `n` due tasks at once (default 1: one after the other)."""
    if n < 1:
        raise ValueError("parallel(n) needs n >= 1")
    return _Parallel(n)


def max_executions(n: int) -> RunOption:
    """Raise `RunLimitExceeded` instead of starting execution number n + 1.

    A safety cap against task chains that never end; default 1,000 per run.
    """
    if n < 1:
        raise ValueError("max_executions(n) needs n >= 1")
    return _MaxExecutions(n)


def wait_when_drained() -> RunOption:
    """When nothing is left to run, wait for new tasks instead of ending.

    For runs alongside code that adds tasks concurrently (another thread, or
    another asyncio task with `run_async`). The run then ends on another
    stop option, or when cancelled.
    """
    return _WaitWhenDrained()


def lose_response(task: TaskMatcher, times: int = 1) -> RunOption:
    """Lose the response of the next `times` attempts of a matching task.

    The handler runs to its end (its transaction commits), then the
    scheduler acts as if the response never came back (the process died or
    the connection dropped before Cloud Tasks saw it): the attempt is
    recorded with status 504 and outcome "lost", and the task is retried
    after the queue's backoff, as Cloud Tasks would. For testing that a
    redelivery does not repeat a handler's effects (`tq.txn.sql.once`).
    `task` is a task class ID or a predicate on `TaskRecord`.
    """
    if times < 1:
        raise ValueError("lose_response(task, times) needs times >= 1")
    return _LoseResponse(task, times)


@dataclasses.dataclass(slots=True)
class RunConfig:
    """The run options, gathered."""

    stop_when_drained: bool = False
    wait_when_drained: bool = False
    stop_after: list[TaskMatcher] = dataclasses.field(default_factory=list)
    stop_before: list[TaskMatcher] = dataclasses.field(default_factory=list)
    parallel: int = 1
    max_executions: int = DEFAULT_MAX_EXECUTIONS
    # [matcher, attempts whose response is still to lose], per lose_response().
    lose: list[list[Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def of(cls, options: Sequence[RunOption]) -> RunConfig:
        cfg = cls()
        for opt in options:
            if isinstance(opt, _StopWhenDrained):
                cfg.stop_when_drained = True
            elif isinstance(opt, _WaitWhenDrained):
                cfg.wait_when_drained = True
            elif isinstance(opt, _StopAfterTask):
                cfg.stop_after.append(opt.matcher)
            elif isinstance(opt, _StopBeforeTask):
                cfg.stop_before.append(opt.matcher)
            elif isinstance(opt, _Parallel):
                cfg.parallel = opt.n
            elif isinstance(opt, _MaxExecutions):
                cfg.max_executions = opt.n
            elif isinstance(opt, _LoseResponse):
                cfg.lose.append([opt.matcher, opt.times])
            else:
                raise TypeError(
                    f"not a run option: {opt!r}; use tqtesting.stop_when_drained() and the like"
                )
        if cfg.stop_when_drained and cfg.wait_when_drained:
            raise ValueError("stop_when_drained() and wait_when_drained() exclude each other")
        if not (cfg.stop_after or cfg.stop_before or cfg.wait_when_drained):
            cfg.stop_when_drained = True
        return cfg


def loses_response(cfg: RunConfig, record: TaskRecord) -> bool:
    """Whether the attempt of `record` that just ended loses its response (see lose_response)."""
    for entry in cfg.lose:
        if entry[1] > 0 and matches(entry[0], record):
            entry[1] -= 1
            return True
    return False


def matches(matcher: TaskMatcher, record: TaskRecord) -> bool:
    if isinstance(matcher, str):
        return record.class_id == matcher
    return bool(matcher(record))
