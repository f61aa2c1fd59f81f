"""The Django shop example: its own tests, and its one command run as a user would.

Needs Django 6 (Python 3.12+): scripts/test-django runs this module in
.tq-run/djangoenv.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

pytest.importorskip("django", minversion="6.0", reason="Django 6 needs Python 3.12+")

SHOP = pathlib.Path(__file__).resolve().parents[2] / "examples" / "django_shop"
TIMEOUT_S = 90.0


def _env(tmp_path: pathlib.Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TQ_"))}
    env["SHOP_DATABASE"] = str(tmp_path / "shop.db")
    return env


def test_the_shops_own_tests_pass_through_the_test_client_and_the_database_queue(
    tmp_path: pathlib.Path,
) -> None:
    proc = subprocess.run(
        [sys.executable, "manage.py", "test", "shop"],
        cwd=SHOP,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S * 2,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Ran 2 tests" in proc.stderr
    assert "\nOK\n" in proc.stderr


class _Output:
    """A process's output, read in a thread, for waiting on a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._thread.join(timeout=30)

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, pattern: str, timeout_s: float = TIMEOUT_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for line in self.lines:
                    m = re.search(pattern, line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {pattern!r} in:\n{''.join(self.lines)[-4000:]}")
                self._cond.wait(left)


@pytest.fixture
def dev_server(tmp_path: pathlib.Path) -> Iterator[tuple[str, _Output, subprocess.Popen[str]]]:
    """`python manage.py tq dev --port 0` in the example, on a fresh database."""
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "tq", "dev", "--port", "0"],
        cwd=SHOP,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = _Output(proc)
    try:
        m = out.wait_for(r"serving \S+ on (http://127\.0\.0\.1:\d+)")
        yield m.group(1), out, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()
        assert proc.stdout is not None
        proc.stdout.close()


def test_one_command_runs_the_shop_and_delivers_the_confirmation(
    dev_server: tuple[str, _Output, subprocess.Popen[str]],
) -> None:
    base, out, proc = dev_server
    order = {"email": "ann@example.com", "item": "tea", "quantity": 2}
    r = httpx.post(f"{base}/orders", content=json.dumps(order), timeout=30)
    assert r.status_code == 201, r.text
    order_id = r.json()["order"]
    # The task's email, printed by the console email backend.
    out.wait_for(r"Subject: Order \d+ confirmed")
    deadline = time.monotonic() + TIMEOUT_S
    while not httpx.get(f"{base}/orders/{order_id}", timeout=30).json()["confirmed"]:
        assert time.monotonic() < deadline, "the order was never confirmed"
        time.sleep(0.05)
    refused = httpx.post(
        f"{base}/orders", content=json.dumps({**order, "quantity": 50}), timeout=30
    )
    assert refused.status_code == 409
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    out.wait_for(r"tq dev: stopped")
    # The rolled-back order sent nothing: one email in all.
    assert sum("Subject: Order" in line for line in out.lines) == 1
