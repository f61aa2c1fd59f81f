"""The demo (scripts/demo runs it): the example on the embedded default, under a burst."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
