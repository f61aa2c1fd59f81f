"""Crash: a process killed (SIGKILL) with its background submits' queue full loses nothing.

A child (tests/chaos/background_child.py) commits transactions with
`tq.BackgroundSubmits` running while its Cloud Tasks hangs: some tasks are
created (and their reminders not all deleted yet), two are stuck in a
submit, the queue is full and the rest were left to the sweeper. It is
killed with SIGKILL. Then one sweep, once the reminders are stale, must
create every committed task that was not created before the kill, and
leave no reminder behind. Runs on every store (SQLite, PostgreSQL,
Spanner on its emulator).
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

import tq
from sweeper import InProcSweeper
from tests import _sweeping as sw
from tests.chaos.background_child import MAX_QUEUED, TAKEN
from tests.chaos.test_chaos import _HARNESSES
from tests.conformance.harness import StoreHarness
from tqtesting import FakeClock

N = 40

for _kind, _module in _HARNESSES.items():  # the harness fixtures, found by name below
    try:
        globals()[f"{_kind}_harness"] = getattr(
            importlib.import_module(_module), f"{_kind}_harness"
        )
    except (ModuleNotFoundError, AttributeError):
        pass


@pytest.fixture(params=list(_HARNESSES))
def harness(request: pytest.FixtureRequest) -> StoreHarness:
    kind: str = request.param
    if f"{kind}_harness" not in globals():
        pytest.skip(f"no conformance harness for {kind}")
    found: StoreHarness = request.getfixturevalue(f"{kind}_harness")
    return found


class Named:
    """Records the Greet name of every task submitted (read back from its request body)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def submit(self, sub: tq.Submission) -> None:
        body = json.loads(sub.request.task.http_request.body)  # type: ignore[attr-defined]
        self.names.append(body["body"]["name"])

    async def submit_async(self, sub: tq.Submission) -> None:
        self.submit(sub)


def test_kill_9_with_a_full_background_queue_loses_no_committed_task(
    harness: StoreHarness, tmp_path: pathlib.Path
) -> None:
    spec = harness.child_spec()
    log = tmp_path / "created.log"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.chaos.background_child", spec.factory, spec.arg,
         str(log), str(N)],
        env={**os.environ, **spec.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # once every transaction committed, the queue full
    finally:
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=60)
    assert line.startswith("full"), line + err[-3000:]
    queued = int(re.search(r"queued=(\d+)", line).group(1))  # type: ignore[union-attr]
    assert 1 <= queued <= MAX_QUEUED, line  # transactions still waiting when it died
    assert "left=0" not in line, line  # and some the full queue left to the sweeper
    assert child.returncode == -signal.SIGKILL

    committed = {k for k in harness.row_keys() if k.startswith("bg-")}
    assert committed == {f"bg-{i}" for i in range(N)}
    created_before = set(log.read_text().split())
    assert len(created_before) == TAKEN
    unparked, parked = harness.store.count_reminders()
    assert parked == 0
    assert unparked >= N - TAKEN  # deleted only what was created (at most TAKEN)

    cloud = Named()
    disp = sw.dispatcher(submitter=cloud, sweeper=InProcSweeper(stores=[harness.store]))
    later = FakeClock(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2))  # all stale
    with tq.clock.use_clock(later):
        disp.sweep()
    swept = set(cloud.names)
    assert len(swept) == len(cloud.names)  # each reminder once
    assert committed - created_before <= swept  # nothing lost
    assert swept <= committed  # nothing invented
    assert harness.store.count_reminders() == (0, 0)


@pytest.fixture(autouse=True)
def _no_background_left() -> None:
    assert tq.background_submits() is None
