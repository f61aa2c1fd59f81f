"""tqtesting: an in-memory Cloud Tasks for unit tests of code that uses tq.

`Scheduler` collects the tasks a test adds and runs them through tq's real
push path on a `FakeClock`; `testing_context()` puts both in place, and the
pytest plugin (loaded automatically) offers them as the `tq_scheduler`,
`tq_clock` and `tq_dispatcher` fixtures::

    def test_signup(tq_scheduler):
        signup("ada@example.com")
        tq_scheduler.run(tqtesting.stop_when_drained())
        assert tq_scheduler.tasks().finished().payloads() == [pb.SendEmail(...)]
"""

from __future__ import annotations

from tqtesting._clock import FakeClock
from tqtesting._context import testing_context
from tqtesting._errors import RunLimitExceeded, SchedulerError, TaskFailed
from tqtesting._memstore import MemoryStore
from tqtesting._options import (
    RetryConfig,
    RunOption,
    lose_response,
    max_executions,
    parallel,
    stop_after_task,
    stop_before_task,
    stop_when_drained,
    wait_when_drained,
)
from tqtesting._records import Attempt, TaskList, TaskRecord, TaskStatus
from tqtesting._scheduler import Scheduler

__all__ = [
    "Attempt",
    "FakeClock",
    "MemoryStore",
    "RetryConfig",
    "RunLimitExceeded",
    "RunOption",
    "Scheduler",
    "SchedulerError",
    "TaskFailed",
    "TaskList",
    "TaskRecord",
    "TaskStatus",
    "lose_response",
    "max_executions",
    "parallel",
    "stop_after_task",
    "stop_before_task",
    "stop_when_drained",
    "testing_context",
    "wait_when_drained",
]
