"""Background submits drain at shutdown: `tq serve --happy-path background`, uvicorn's lifespan.

The app (tests/e2e/_background_app.py) answers orders while its Cloud
Tasks stand-in hangs: each order's task waits in the background queue, so
the responses come back (inline, the first request would hang). Then the
server is stopped (SIGTERM) with the queue full of waiting submits, the
stand-in starts answering, and the process must exit only once every
task was created and every reminder deleted (`tq serve` exits 0;
uvicorn raises SIGTERM again once it has stopped).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
ORDERS = [f"order-{i}" for i in range(12)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # poll interval, bounded by the deadline
    raise AssertionError("the server never listened")


def _wait_line(proc: subprocess.Popen[bytes], text: bytes) -> bytes:
    """The server's stderr up to the first line holding `text` (which it must write)."""
    assert proc.stderr is not None
    seen = b""
    for line in proc.stderr:  # ends when the process closes stderr
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"no {text!r} in:\n{seen.decode(errors='replace')}")


@pytest.mark.parametrize(
    ("command", "exit_code"),
    [
        pytest.param(
            ["-m", "tq.cli", "serve", "tests.e2e._background_app:app", "--happy-path",
             "background", "--port"], 0, id="tq-serve",
        ),
        # uvicorn raises the signal again once it has shut down.
        pytest.param(
            ["-m", "uvicorn", "tests.e2e._background_app:app_with_lifespan", "--port"],
            -signal.SIGTERM, id="uvicorn-lifespan",
        ),
    ],
)  # fmt: skip
def test_stopping_the_server_drains_the_background_submits(
    command: list[str], exit_code: int, tmp_path: Path
) -> None:
    port = _free_port()
    gate, created, db = tmp_path / "gate", tmp_path / "created", tmp_path / "app.db"
    env = {**os.environ, "TQ_TEST_DB": str(db), "TQ_TEST_GATE": str(gate),
           "TQ_TEST_CREATED": str(created)}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, *command, str(port)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait_listening(port, proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for name in ORDERS:  # each answers while its submit waits for the gate
                assert client.post(f"/orders/{name}").status_code == 200
        assert not created.exists()
        proc.send_signal(signal.SIGTERM)
        seen = _wait_line(proc, b"Waiting for application shutdown")
        assert proc.poll() is None, "exited without draining"
        gate.touch()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == exit_code, (seen + err).decode(errors="replace")[-3000:]
    assert sorted(created.read_text().split()) == sorted(ORDERS)
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            left = conn.execute(sa.text("SELECT count(*) FROM tq_reminders")).scalar_one()
    finally:
        engine.dispose()
    assert left == 0
