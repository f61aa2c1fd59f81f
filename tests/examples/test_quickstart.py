"""The README's quick start works as written: unit test and emulator run."""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import subprocess
import sys
import time
from typing import IO

import pytest
from google.api_core import exceptions as gexc

import tqtesting
from examples.quickstart import app as quickstart
from examples.quickstart import tasks_pb2 as pb
from tests._services.cloudtasks import CloudTasksEmulator, free_port

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def tq_dispatcher() -> object:
    return quickstart.disp


# This test is the one the README shows.
def test_greet_later_runs_the_handler(tq_scheduler: tqtesting.Scheduler, capsys) -> None:  # type: ignore[no-untyped-def]
    quickstart.greet_later("Ada")
    tq_scheduler.run(tqtesting.stop_when_drained())
    assert tq_scheduler.tasks().finished().payloads() == [pb.Greet(name="Ada")]
    assert "hello, Ada! (attempt 1, queue greetings)" in capsys.readouterr().out


def test_readme_shows_the_quick_start_files_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    for rel in ("examples/quickstart/app.py", "proto/examples/quickstart/tasks.proto"):
        body = (ROOT / rel).read_text()
        # The README quotes each file after a line naming it.
        m = re.search(rf"`{re.escape(rel)}`:\n\n```\w*\n(.*?)```", readme, re.S)
        assert m, f"README.md does not quote {rel}"
        assert m.group(1) == body, f"README.md's copy of {rel} is out of date"


def _wait_for(log: IO[str], text: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        log.seek(0)
        out = log.read()
        if text in out or time.monotonic() > deadline:
            return out
        time.sleep(0.05)


def test_quick_start_against_the_emulator_and_uvicorn(
    cloudtasks_emulator: CloudTasksEmulator, tmp_path: pathlib.Path
) -> None:
    queue = "projects/my-project/locations/us-central1/queues/greetings"
    # The queue may exist from an earlier test of the session.
    with cloudtasks_emulator.client() as c, contextlib.suppress(gexc.AlreadyExists):
        c.create_queue(parent=queue.rsplit("/queues/", 1)[0], queue={"name": queue})
    port = free_port()
    env = {**os.environ, "TQ_CLOUDTASKS_ENDPOINT": cloudtasks_emulator.endpoint}
    env["PYTHONUNBUFFERED"] = "1"
    with (tmp_path / "uvicorn.log").open("w+") as log:
        # The README's two commands, on the port the test chose.
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "examples.quickstart.app:app", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            assert "startup complete" in _wait_for(log, "startup complete")
            code = (
                "import examples.quickstart.app as a; "
                f"a.disp.configure(default_target_host='127.0.0.1:{port}'); a.greet_later('Ada')"
            )
            added = subprocess.run(
                [sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60,
                capture_output=True, text=True,
            )  # fmt: skip
            # Only adding a task: the insecure endpoint's warning is for where it serves.
            assert "WITHOUT AUTHENTICATION" not in added.stderr, added.stderr
            out = _wait_for(log, "hello, Ada!")
            assert "hello, Ada! (attempt 1, queue greetings)" in out, out
            assert 'POST /internal/tasks/t/greet/greet-Ada HTTP/1.1" 200' in out, out
            assert out.count("WITHOUT AUTHENTICATION") == 1, out  # where it serves, once
        finally:
            server.terminate()
            server.wait(timeout=20)
