"""The Pub/Sub emulator (the Google Cloud SDK's `cloud-pubsub-emulator`) for tests.

Fixtures:
  pubsub_emulator (session): the emulator on 127.0.0.1:<free port>, with a
    project unique to the session; helpers make topics and subscriptions
    (names never reused) and pull what a subscription holds.

The launcher is looked up at `$TQ_PUBSUB_EMULATOR`, then under the Google
Cloud SDK (`platform/pubsub-emulator/bin/cloud-pubsub-emulator`); it needs
`java` (17) on PATH. Tests that use it skip when either is absent, and get
the `pubsub` marker. The launcher script starts a `java` child: the
emulator runs in a process group of its own, and the whole group is stopped.

What the emulator does: topics, subscriptions (pull, streaming pull, push to
a loopback URL in the wrapped format, with no Authorization header), ack,
nack and redelivery. It ignores dead-letter policies (no `deliveryAttempt`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

START_TIMEOUT_S = 60.0
EXPECT_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
_SDK_ROOTS = ("/usr/lib/google-cloud-sdk", "/usr/share/google-cloud-sdk", "/opt/google-cloud-sdk")
_LAUNCHER = "platform/pubsub-emulator/bin/cloud-pubsub-emulator"


def emulator_launcher() -> Path | None:
    """Where cloud-pubsub-emulator is, or None."""
    env = os.environ.get("TQ_PUBSUB_EMULATOR")
    candidates = [Path(env)] if env else []
    candidates += [Path(root) / _LAUNCHER for root in _SDK_ROOTS]
    gcloud = shutil.which("gcloud")
    if gcloud:
        candidates.append(Path(gcloud).resolve().parents[1] / _LAUNCHER)
    return next((p for p in candidates if p.is_file() and os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class PubSubEmulator:
    """A running emulator: where it listens, its project, and helpers."""

    endpoint: str  # "127.0.0.1:<port>"
    project: str
    log_path: Path

    def publisher_client(self) -> Any:
        from google.cloud import pubsub_v1
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

        channel = grpc.insecure_channel(self.endpoint, options=[("grpc.enable_http_proxy", 0)])
        return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel))

    def subscriber_client(self) -> Any:
        from google.cloud import pubsub_v1
        from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

        channel = grpc.insecure_channel(self.endpoint, options=[("grpc.enable_http_proxy", 0)])
        return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))

    def create_topic(self, prefix: str = "topic") -> str:
        """A new topic (full name)."""
        name = f"projects/{self.project}/topics/{prefix}-{secrets.token_hex(4)}"
        client = self.publisher_client()
        try:
            client.create_topic(name=name, timeout=10)
        finally:
            client.transport.close()
        return name

    def create_subscription(
        self,
        topic: str,
        prefix: str = "sub",
        *,
        push_endpoint: str | None = None,
        ack_deadline_s: int = 10,
    ) -> str:
        """A new subscription (full name) to `topic`: pull, or push to `push_endpoint`."""
        name = f"projects/{self.project}/subscriptions/{prefix}-{secrets.token_hex(4)}"
        request: dict[str, Any] = {
            "name": name,
            "topic": topic,
            "ack_deadline_seconds": ack_deadline_s,
            # Redeliver a nacked message soon (the emulator's default is at once).
            "retry_policy": {"minimum_backoff": {"seconds": 0}, "maximum_backoff": {"seconds": 1}},
        }
        if push_endpoint is not None:
            request["push_config"] = {"push_endpoint": push_endpoint}
        with contextlib.closing(self.subscriber_client()) as client:
            client.create_subscription(request=request, timeout=10)
        return name

    def pull(
        self, subscription: str, *, wait_s: float = 2.0, ack: bool = True, expect: int = 0
    ) -> list[Any]:
        """The messages the subscription delivers within `wait_s` (acked unless told not).

        With `expect`, it goes on pulling past `wait_s` until that many came
        (for up to EXPECT_TIMEOUT_S): a loaded machine may deliver late.
        """
        from google.api_core import exceptions as gexc

        out: list[Any] = []
        with contextlib.closing(self.subscriber_client()) as client:
            started = time.monotonic()  # the window opens once the client is made
            window_ends = started + wait_s
            give_up = started + max(wait_s, EXPECT_TIMEOUT_S)
            while True:
                deadline = window_ends if len(out) >= expect else give_up
                left = deadline - time.monotonic()
                if left <= 0:
                    return out
                try:
                    resp = client.pull(
                        request={"subscription": subscription, "max_messages": 100},
                        timeout=max(0.1, left),
                    )
                except (gexc.DeadlineExceeded, gexc.RetryError):  # nothing came in time
                    continue
                got = list(resp.received_messages)
                if ack and got:
                    client.acknowledge(
                        request={"subscription": subscription, "ack_ids": [m.ack_id for m in got]}
                    )
                out += [m.message for m in got]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _wait_ready(proc: subprocess.Popen[bytes], emu: PubSubEmulator) -> None:
    from google.api_core import exceptions as gexc

    deadline = time.monotonic() + START_TIMEOUT_S
    last: BaseException | None = None
    client = emu.publisher_client()
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"Pub/Sub emulator exited with {proc.returncode}:\n{emu.log_tail()}"
                )
            try:
                client.get_topic(topic=f"projects/{emu.project}/topics/ready-probe", timeout=1.0)
                return
            except gexc.NotFound:
                return  # it answers
            except Exception as e:  # not listening yet
                last = e
            time.sleep(0.05)  # poll interval (bounded by the deadline above)
    finally:
        client.transport.close()
    raise RuntimeError(
        f"Pub/Sub emulator on {emu.endpoint} did not answer within {START_TIMEOUT_S} s "
        f"(last error: {last}):\n{emu.log_tail()}"
    )


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stops the launcher and its java child (the whole process group)."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The launcher is gone; its java child may linger a moment.
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def run_emulator(log_path: Path) -> Iterator[PubSubEmulator]:
    """Starts the emulator on a free loopback port; stops it (and its java child) on exit."""
    launcher = emulator_launcher()
    if launcher is None or shutil.which("java") is None:
        pytest.skip(
            "Pub/Sub emulator not available: it needs the Google Cloud SDK's "
            "cloud-pubsub-emulator (or $TQ_PUBSUB_EMULATOR) and java on PATH"
        )
    pytest.importorskip("google.cloud.pubsub_v1", reason="google-cloud-pubsub not installed")
    port = free_port()
    emu = PubSubEmulator(
        endpoint=f"127.0.0.1:{port}", project=f"tq-test-{secrets.token_hex(3)}", log_path=log_path
    )
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(launcher), "--host=127.0.0.1", f"--port={port}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: the java child stops with it
        )
    try:
        _wait_ready(proc, emu)
        yield emu
    finally:
        _stop_group(proc)


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSubEmulator]:
    """The Pub/Sub emulator, started once per test session."""
    log_path = tmp_path_factory.mktemp("pubsub-emulator") / "emulator.log"
    with run_emulator(log_path) as emu:
        yield emu


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "pubsub_emulator" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.pubsub)
