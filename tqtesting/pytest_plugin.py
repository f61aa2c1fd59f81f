"""pytest fixtures for testing code that uses tq (loaded automatically).

* `tq_dispatcher`: the dispatcher under test; `tq.default` unless a test
  module or conftest overrides this fixture.
* `tq_clock`: a `FakeClock`, made current for the test.
* `tq_scheduler`: a `Scheduler` on `tq_dispatcher` and `tq_clock`, set as the
  submitter for the test (see `testing_context`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tq
from tqtesting._clock import FakeClock
from tqtesting._context import testing_context
from tqtesting._scheduler import Scheduler


@pytest.fixture
def tq_dispatcher() -> tq.Dispatcher:
    """The dispatcher `tq_scheduler` runs tasks with (`tq.default`); override to change."""
    return tq.default


@pytest.fixture
def tq_clock() -> Iterator[FakeClock]:
    """A FakeClock, current (`tq.clock.now()`) for the duration of the test."""
    clock = FakeClock()
    with tq.clock.use_clock(clock):
        yield clock


@pytest.fixture
def tq_scheduler(tq_dispatcher: tq.Dispatcher, tq_clock: FakeClock) -> Iterator[Scheduler]:
    """An in-memory Cloud Tasks receiving every task the test adds."""
    with testing_context(tq_dispatcher, tq_clock) as scheduler:
        yield scheduler
