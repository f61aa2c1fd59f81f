"""Processes for the replica and fault scenarios: a PostgreSQL cluster that can be
restarted on its port, app replicas under uvicorn, sweepers, database-queue
workers, and a Cloud Tasks emulator that can be stopped and started again.

Every process is started by the test and stopped by it, by its own PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._services import cloudtasks as ct
from tests._services import postgres as pg

ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_S = 20.0


def wait_for(cond: Callable[[], bool], what: str, timeout_s: float) -> None:
    """Returns once `cond()` holds; fails after `timeout_s` (polls, never sleeps blindly)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def stop_process(
    proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, group: bool = True
) -> None:
    """Stops one process we started, with its group (uvicorn's supervisor has children)."""
    if proc.poll() is not None:
        return
    kill = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError):
        kill(proc.pid, sig)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            kill(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT_S)


class Fleet:
    """Child processes of one scenario, each logging to its own file in `logs`."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise AssertionError(f"processes died: {dead}\n{self.tails(list(dead))}")

    def tails(self, names: list[str] | None = None, lines: int = 30) -> str:
        out = []
        for name in names or list(self.procs):
            text = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
            out.append(f"--- {name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def stop(self, name: str) -> int | None:
        proc = self.procs.pop(name)
        stop_process(proc)
        return proc.returncode

    def stop_all(self) -> dict[str, int | None]:
        return {name: self.stop(name) for name in list(self.procs)}


class PgCluster:
    """A throwaway PostgreSQL cluster whose server can be stopped and started on its port."""

    def __init__(self) -> None:
        bindir = pg._server_bindir()
        if bindir is None:
            pytest.skip("no PostgreSQL server binary (apt-get install postgresql)")
        self.bindir = bindir
        self.as_postgres = pg._run_as()
        self.root = tempfile.mkdtemp(prefix="tq-chaos-pg-")
        self.data = f"{self.root}/data"
        self.sockets = f"{self.root}/sock"
        os.mkdir(self.sockets)
        if self.as_postgres:
            for path in (self.root, self.sockets):
                os.chown(path, self.as_postgres["user"], self.as_postgres["group"])
        subprocess.run(
            [f"{bindir}/initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True, capture_output=True, timeout=120, **self.as_postgres,
        )  # fmt: skip
        self.port = pg._free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        with open(f"{self.root}/server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [f"{self.bindir}/postgres", "-D", self.data, "-p", str(self.port),
                 "-k", self.sockets, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "max_connections=300"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                **self.as_postgres,
            )  # fmt: skip
        wait_for(lambda: pg._connectable(self.url), "PostgreSQL to accept connections", 60)

    def stop(self, fast: bool = True) -> None:
        """Fast shutdown (SIGINT: sessions are cut, open transactions roll back)."""
        if self.proc is not None:
            # The postmaster alone: it shuts its backends down itself.
            stop_process(self.proc, signal.SIGINT if fast else signal.SIGTERM, group=False)
            self.proc = None

    def restart(self, down_s: float) -> None:
        self.stop()
        time.sleep(down_s)  # the outage itself: how long the database stays down
        self.start()
        self.restarts += 1

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class CloudTasksEmulator:
    """gcloud-tasks-emulator on a port of its own, to stop and start again on it."""

    def __init__(self, logs: Path, queues: list[str]) -> None:
        binary = ct.emulator_binary()
        if binary is None:
            pytest.skip("Cloud Tasks emulator not installed (scripts/setup)")
        self.binary = binary
        self.logs = logs
        self.port = ct.free_port()
        self.info = ct.CloudTasksEmulator(
            endpoint=f"127.0.0.1:{self.port}",
            project="tq-chaos",
            location=ct.LOCATION,
            log_path=logs / "cloudtasks.log",
        )
        self.queues = [self.info.queue_path(q) for q in queues]
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def endpoint(self) -> str:
        return self.info.endpoint

    def start(self) -> None:
        args = [str(self.binary), "start", "--port", str(self.port), "-q", "-r", "50"]
        for q in self.queues:
            args += ["-d", q]
        with self.info.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=ct._child_env(), start_new_session=True,
            )  # fmt: skip
        ct._wait_ready(self.proc, self.info, self.queues[0])
        self.starts += 1

    def pause(self) -> None:
        """Freezes the emulator (SIGSTOP): calls hang until their deadline."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)
            stop_process(self.proc)
            self.proc = None


@contextlib.contextmanager
def closing_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
