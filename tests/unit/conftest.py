"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tq
from tqtesting import FakeClock


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    """A FakeClock installed as tq's clock for the test (a module may override it)."""
    clk = FakeClock()
    with tq.clock.use_clock(clk):
        yield clk
