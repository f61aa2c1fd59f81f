"""The demo (scripts/demo runs it): the example on the embedded default, under a burst."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from rich.console import Console

from examples.orders import demo

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "examples.orders.demo", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_demo_delivers_every_task_and_exits_0() -> None:
    proc = _run("--orders", "60", "--chain", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "tasks added       │ 66" in out
    assert "delivered         │ 66" in out
    assert "lost              │ 0" in out
    assert "retried           │ 6 " in out  # every 10th order's first e-mail fails on purpose
    assert "commit -> handler │ p50" in out


def test_demo_over_http_to_uvicorn_on_loopback() -> None:
    proc = _run("--orders", "20", "--chain", "2", "--http")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "uvicorn on loopback" in proc.stdout
    assert "lost              │ 0" in proc.stdout


def test_demo_summary_fails_when_a_task_is_lost(tmp_path: Path) -> None:
    from examples.orders.db import make_engine
    from examples.orders.service import OrdersService
    from tq import dbqueue

    service = OrdersService(make_engine(f"sqlite:///{tmp_path}/d.db"))
    engine = dbqueue.sqlite_engine(tmp_path / "d.db")
    try:
        service.create_schema()
        dbqueue.create_schema(engine)
        console = Console(file=open(tmp_path / "out.txt", "w"), width=100)  # noqa: SIM115
        try:
            code = demo._summary(
                service, demo.DemoMailer(), demo.CommitTimes(service.Session), engine,
                added=3, lost=1, elapsed=0.1, console=console,
            )  # fmt: skip
        finally:
            console.file.close()
    finally:
        service.close()
        engine.dispose()
    assert code == 1
    assert "1 lost" in (tmp_path / "out.txt").read_text()


def test_demo_ends_by_serving_the_dashboard_at_the_address_it_prints() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.orders.demo", "--orders", "10", "--chain", "2",
         "--dashboard", "--port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:  # ends when the demo exits (if it never prints the address)
            seen.append(line)
            m = re.search(r"Dashboard: (http://\S+)", line)
            if m:
                with httpx.Client(follow_redirects=True, timeout=30) as client:
                    page = client.get(m.group(1))
                    assert page.status_code == 200, page.text
                    assert "Overview" in page.text
                    assert "orders" in page.text
                    assert "parked" in page.text
                break
        else:
            raise AssertionError("no dashboard address: " + "".join(seen))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
