"""`tq dashboard` as a real process: it serves the pages over the database it is given."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from tests import _dashboard_data as dd
from tq import dbqueue

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0


def _start(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """Starts `tq dashboard ARGS`; returns the process and the address it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tq.cli", "dashboard", "--port", "0", *args],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    _readers[proc.pid] = reader
    seen = []
    while True:
        try:
            line = lines.get(timeout=DEADLINE_S)
        except queue.Empty:
            proc.kill()
            _stop(proc)
            raise AssertionError("tq dashboard printed no address: " + "".join(seen)) from None
        seen.append(line)
        m = re.search(r"open (http://\S+)", line)
        if m:
            return proc, m.group(1)


_readers: dict[int, threading.Thread] = {}


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=DEADLINE_S)
    _readers.pop(proc.pid).join(timeout=DEADLINE_S)
    assert proc.stderr is not None
    proc.stderr.close()
    return code


def test_tq_dashboard_prints_a_sign_in_address_and_serves_the_database(tmp_path: Path) -> None:
    db = tmp_path / "dash.db"
    engine = dbqueue.sqlite_engine(db)
    data = dd.populate(engine)
    engine.dispose()
    proc, address = _start("--db", str(db))
    try:
        assert "/login?token=" in address
        with httpx.Client(follow_redirects=True, timeout=30) as c:
            assert "emails" not in c.get(address.split("/login")[0] + "/").text  # not signed in
            page = c.get(address)  # signs in, lands on the overview
            assert page.status_code == 200
            assert "emails" in page.text
            assert "operator" in page.text
            parked = c.get(address.split("/login")[0] + "/parked")
            assert data.parked_reminders[0] in parked.text
    finally:
        code = _stop(proc)
    assert code == 0


def test_tq_dashboard_takes_a_configured_viewer_token(tmp_path: Path) -> None:
    db = tmp_path / "dash.db"
    engine = dbqueue.sqlite_engine(db)
    dd.create(engine)
    engine.dispose()
    proc, address = _start("--db", str(db), env={"TQ_DASHBOARD_VIEWER_TOKEN": "look-but-dont"})
    try:
        assert "token=" not in address
        with httpx.Client(timeout=30) as c:
            r = c.get(address + "queues/emails", headers={"Authorization": "Bearer look-but-dont"})
            assert r.status_code == 200
            assert "viewer" in r.text
            assert "Purge" not in r.text
    finally:
        assert _stop(proc) == 0


def test_tq_dashboard_refuses_emails_without_an_audience(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tq.cli", "dashboard", "--db", str(tmp_path / "x.db"),
         "--dashboard-operators", "a@example.com"],
        cwd=ROOT, capture_output=True, text=True, timeout=DEADLINE_S, check=False,
    )  # fmt: skip
    assert proc.returncode == 3
    assert "tq: error: dashboard access: emails need audience" in proc.stderr
