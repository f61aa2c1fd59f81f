"""The Cloud Tasks API emulator (`gcloud-tasks-emulator`) for tests.

Fixtures:
  cloudtasks_emulator (session): the emulator running on 127.0.0.1:<free
    port> in its own virtual environment (it pins protobuf<5), with the
    queues `default` and `tq-sweep` of a project unique to the session.
  cloudtasks_queue (function): a fresh queue (full name) on that emulator,
    paused and purged after the test so that nothing it holds is pushed
    into later tests.

The binary is looked up in `.tq-run/ctemu/bin/` (made by scripts/setup), then
`/tmp/ctemu/bin/`, or at `$TQ_CLOUDTASKS_EMULATOR`; tests that use it skip
when it is absent. Tests using these fixtures get the `cloudtasks` marker.

What the emulator does and does not do (see docs/cloud-tasks.md): it pushes
`http_request` tasks verbatim to their URL, retrying a failed push about
every 0.1 s (at most `MAX_RETRIES` times here); it has no task-name dedup,
no OIDC tokens, no backoff, and sends the full queue path in
X-CloudTasks-QueueName.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCATION = "us-central1"
DEFAULT_QUEUES = ("default", "tq-sweep")
MAX_RETRIES = 50
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


def emulator_binary() -> Path | None:
    """Where gcloud-tasks-emulator is installed, or None."""
    env = os.environ.get("TQ_CLOUDTASKS_EMULATOR")
    candidates = [Path(env)] if env else []
    candidates += [
        ROOT / ".tq-run/ctemu/bin/gcloud-tasks-emulator",
        Path("/tmp/ctemu/bin/gcloud-tasks-emulator"),
    ]
    return next((p for p in candidates if p.is_file() and os.access(p, os.X_OK)), None)


def free_port() -> int:
    """A TCP port free on loopback right now (the emulator cannot pick its own)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _grpc_client(endpoint: str) -> Any:
    from google.cloud import tasks_v2
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    channel = grpc.insecure_channel(endpoint, options=[("grpc.enable_http_proxy", 0)])
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


@dataclasses.dataclass(frozen=True)
class CloudTasksEmulator:
    """A running emulator: where it listens and what queues it has."""

    endpoint: str  # "127.0.0.1:<port>"
    project: str
    location: str
    log_path: Path

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def queue_path(self, queue: str) -> str:
        """The full name of queue `queue` in the emulator's project and location."""
        return f"{self.parent}/queues/{queue}"

    def client(self) -> Any:
        """A new sync CloudTasksClient on the emulator; use it in a `with` block."""
        return _grpc_client(self.endpoint)

    def create_queue(self, prefix: str = "q") -> str:
        """Creates a queue with a name never used before; returns its full name.

        (A queue deleted and recreated under the same name is never
        dispatched again by the emulator, so names are not reused.)
        """
        name = self.queue_path(f"{prefix}-{secrets.token_hex(4)}")
        with self.client() as c:
            c.create_queue(parent=self.parent, queue={"name": name}, timeout=10)
        return name

    def retire_queue(self, name: str) -> None:
        """Stops the queue's pushes for good: pauses it and drops its tasks."""
        with self.client() as c:
            c.pause_queue(name=name, timeout=10)
            c.purge_queue(name=name, timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    # The emulator pushes with urllib: keep every push on loopback, never via a proxy.
    env["NO_PROXY"] = env["no_proxy"] = "*"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    env.pop("PYTHONPATH", None)
    return env


def _wait_ready(proc: subprocess.Popen[bytes], emu: CloudTasksEmulator, queue: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last: BaseException | None = None
    with emu.client() as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"Cloud Tasks emulator exited with {proc.returncode}:\n{emu.log_tail()}"
                )
            try:
                c.get_queue(name=queue, timeout=1.0)
                return
            except Exception as e:  # not listening yet
                last = e
            time.sleep(0.05)  # poll interval (bounded by the deadline above)
    raise RuntimeError(
        f"Cloud Tasks emulator on {emu.endpoint} did not answer within {START_TIMEOUT_S} s "
        f"(last error: {last}):\n{emu.log_tail()}"
    )


@contextlib.contextmanager
def run_emulator(log_path: Path, *, max_retries: int = MAX_RETRIES) -> Iterator[CloudTasksEmulator]:
    """Starts the emulator on a free loopback port; stops it on exit."""
    binary = emulator_binary()
    if binary is None:
        pytest.skip(
            "Cloud Tasks emulator not installed: run scripts/setup (it installs "
            "gcloud-tasks-emulator==0.6.2 into .tq-run/ctemu), or set TQ_CLOUDTASKS_EMULATOR"
        )
    port = free_port()
    emu = CloudTasksEmulator(
        endpoint=f"127.0.0.1:{port}",
        # A project unique to this run: a test never sees another run's queues.
        project=f"tq-test-{secrets.token_hex(3)}",
        location=LOCATION,
        log_path=log_path,
    )
    args = [str(binary), "start", "--port", str(port), "-q", "-r", str(max_retries)]
    for q in DEFAULT_QUEUES:
        args += ["-d", emu.queue_path(q)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_child_env(),
            start_new_session=True,
        )
    try:
        _wait_ready(proc, emu, emu.queue_path(DEFAULT_QUEUES[0]))
        yield emu
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def cloudtasks_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudTasksEmulator]:
    """The Cloud Tasks API emulator, started once per test session."""
    log_path = tmp_path_factory.mktemp("cloudtasks-emulator") / "emulator.log"
    with run_emulator(log_path) as emu:
        yield emu


@pytest.fixture
def cloudtasks_queue(cloudtasks_emulator: CloudTasksEmulator) -> Iterator[str]:
    """A fresh queue on the emulator (full name), retired after the test."""
    name = cloudtasks_emulator.create_queue("t")
    yield name
    cloudtasks_emulator.retire_queue(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "cloudtasks_emulator" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cloudtasks)
