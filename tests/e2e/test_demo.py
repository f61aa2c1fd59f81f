"""The demo (scripts/demo runs it): the example on the embedded default, under a burst."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    assert "tasks added       │ 66 (in the queue; 66 committed)" in out
    assert "delivered once    │ 66" in out
    assert "delivered twice   │ 0" in out
    assert "lost              │ 0" in out
    assert "e-mails sent      │ 60 for 60 orders" in out
    assert "retried           │ 6 " in out  # every 10th order's first e-mail fails on purpose
    assert "commit -> handler │ p50" in out
    assert "each of the 66 tasks committed ran exactly once" in out


def test_demo_over_http_to_uvicorn_on_loopback() -> None:
    proc = _run("--orders", "20", "--chain", "2", "--http")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "uvicorn on loopback" in proc.stdout
    assert "lost              │ 0" in proc.stdout


def _push(app: Any, name: str) -> None:
    """One push of task `name` into `app`, as a worker makes it."""
    scope = {
        "type": "http", "method": "POST", "path": "/internal/tasks/t/count-down",
        "headers": [(b"x-cloudtasks-taskname", name.encode())],
    }  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    asyncio.run(app(scope, receive, send))


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _summary_of(tmp_path: Path, tally: demo.Tally) -> tuple[int, str]:
    from examples.orders.db import make_engine
    from examples.orders.service import OrdersService
    from tq import dbqueue

    service = OrdersService(make_engine(f"sqlite:///{tmp_path}/d.db"))
    engine = dbqueue.sqlite_engine(tmp_path / "d.db")
    try:
        service.create_schema()
        dbqueue.create_schema(engine)
        with (tmp_path / "out.txt").open("w") as f:
            console = Console(file=f, width=120)
            code = demo._summary(
                service, demo.DemoMailer(), demo.CommitTimes(service.Session), engine, tally,
                elapsed=0.1, console=console,
            )  # fmt: skip
    finally:
        service.close()
        engine.dispose()
    return code, (tmp_path / "out.txt").read_text()


def test_demo_fails_when_a_task_is_delivered_twice(tmp_path: Path) -> None:
    deliveries = demo.Deliveries(_ok)
    for name in ("t1", "t2", "t2"):  # t2's handler answered twice: a duplicate
        _push(deliveries, name)
    tally = demo.Tally.count(["t1", "t2"], deliveries.ok, demo.DemoMailer(), 0, expected=2)
    code, out = _summary_of(tmp_path, tally)
    assert code == 1
    assert "FAILED: 1 delivered twice" in out


def test_demo_fails_when_a_task_is_lost(tmp_path: Path) -> None:
    deliveries = demo.Deliveries(_ok)
    _push(deliveries, "t1")
    # t2 is in the queue and never delivered; a third committed task never got there.
    tally = demo.Tally.count(["t1", "t2"], deliveries.ok, demo.DemoMailer(), 0, expected=3)
    code, out = _summary_of(tmp_path, tally)
    assert code == 1
    assert "FAILED: 2 lost" in out


def test_demo_fails_when_an_order_is_mailed_twice(tmp_path: Path) -> None:
    mailer = demo.DemoMailer()
    for _ in range(2):
        mailer.send("a@example.com", "Order 1 confirmed", "1 x tea")
    tally = demo.Tally.count([], demo.Deliveries(_ok).ok, mailer, 1, expected=0)
    code, out = _summary_of(tmp_path, tally)
    assert code == 1
    assert "1 orders e-mailed twice" in out


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
