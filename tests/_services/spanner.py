"""The Cloud Spanner emulator, as a pytest plugin.

`spanner_emulator` (session-scoped) starts the emulator binary
(`emulator_main`, from the Google Cloud SDK's `bin/cloud_spanner_emulator/`)
on a free loopback port, points the Spanner client at it
(`SPANNER_EMULATOR_HOST`, anonymous credentials) and creates one instance.
`spanner_database` gives each test a fresh database with the tq schema.
Tests skip, saying why, where the binary is absent.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

PROJECT = "tq-test"
INSTANCE = "tq-emulator"
_START_TIMEOUT_S = 60.0
_SDK_ROOTS = (
    "/usr/lib/google-cloud-sdk",
    "/usr/share/google-cloud-sdk",
    "/opt/google-cloud-sdk",
    "~/google-cloud-sdk",
)
# Multiplexed sessions break concurrent read-write transactions on the
# emulator (non-retried NotFound / FailedPrecondition instead of ABORTED) and
# make Database.close() block for minutes after a read-only query.
# No built-in metrics export (it would reach for Cloud Monitoring).
CLIENT_ENV = {
    "GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS_FOR_RW": "false",
    "GOOGLE_CLOUD_SPANNER_MULTIPLEXED_SESSIONS": "false",
    "SPANNER_DISABLE_BUILTIN_METRICS": "true",
}


def find_emulator() -> str | None:
    """The path of `emulator_main`, or None where the SDK component is absent."""
    env = os.environ.get("TQ_SPANNER_EMULATOR")
    if env:
        return env if os.access(env, os.X_OK) else None
    roots = [os.path.expanduser(r) for r in _SDK_ROOTS]
    gcloud = shutil.which("gcloud")
    if gcloud:
        # gcloud usually lives in <sdk>/bin (maybe behind a symlink).
        roots.append(str(Path(gcloud).resolve().parent.parent))
    for root in roots:
        path = Path(root, "bin", "cloud_spanner_emulator", "emulator_main")
        if os.access(path, os.X_OK):
            return str(path)
    if gcloud:
        try:
            out = subprocess.run(
                [gcloud, "info", "--format=value(installation.sdk_root)"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return None
        path = Path(out.stdout.strip(), "bin", "cloud_spanner_emulator", "emulator_main")
        if out.stdout.strip() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which("emulator_main")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_until_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"Spanner emulator exited ({proc.returncode}): {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Spanner emulator not listening on {port} after {_START_TIMEOUT_S}s"
                ) from None
            time.sleep(0.01)


class SpannerEmulator:
    """A running emulator with one instance; makes databases on it."""

    def __init__(self, host: str, client: Any, instance: Any) -> None:
        self.host = host
        self.project = PROJECT
        self.client = client
        self.instance = instance
        self._ids = itertools.count(1)
        self.env = {"SPANNER_EMULATOR_HOST": host, **CLIENT_ENV}
        """What a child process needs in its environment to reach the emulator."""

    def create_database(self, extra_ddl: Sequence[str] = ()) -> Any:
        """A new empty database with the tq schema (`create_schema`) and `extra_ddl`."""
        from tq.txn.spanner import create_schema

        db = self.instance.database(f"tq-{os.getpid()}-{next(self._ids)}")
        db.create().result(30)
        create_schema(db)
        if extra_ddl:
            db.update_ddl(list(extra_ddl)).result(30)
        return db

    def drop_database(self, database: Any) -> None:
        database.close()
        database.drop()


def open_client(host: str, project: str = PROJECT) -> Any:
    """A Spanner client for the emulator at `host` (call with CLIENT_ENV set)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import spanner

    return spanner.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": host},
        disable_builtin_metrics=True,
    )


@contextlib.contextmanager
def running_emulator(binary: str, log: Path, *flags: str) -> Iterator[str]:
    """Runs `emulator_main` on a free loopback port; yields its "host:port".

    Sets the client's environment (CLIENT_ENV, SPANNER_EMULATOR_HOST) while
    it runs; stops the emulator and restores the environment after.
    """
    port = _free_port()
    saved = {k: os.environ.get(k) for k in ("SPANNER_EMULATOR_HOST", *CLIENT_ENV)}
    os.environ.update(CLIENT_ENV)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, "--host_port", f"127.0.0.1:{port}", *flags],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        _wait_until_listening(proc, port, log)
        host = f"127.0.0.1:{port}"
        os.environ["SPANNER_EMULATOR_HOST"] = host
        yield host
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start(host: str, instance_id: str = INSTANCE) -> SpannerEmulator:
    """Connects to the emulator at `host` and creates an instance on it."""
    client = open_client(host)
    instance = client.instance(
        instance_id,
        configuration_name=f"projects/{PROJECT}/instanceConfigs/emulator-config",
        display_name="tq tests",
        node_count=1,
    )
    instance.create().result(30)
    return SpannerEmulator(host, client, instance)


def require_emulator() -> str:
    """The emulator binary's path; skips the test where it is absent."""
    binary = find_emulator()
    if binary is None:
        pytest.skip(
            "Cloud Spanner emulator not found: install the Google Cloud SDK component "
            "(Debian package google-cloud-cli-spanner-emulator, or `gcloud components "
            "install cloud-spanner-emulator`), or set TQ_SPANNER_EMULATOR to emulator_main"
        )
    return binary


@pytest.fixture(scope="session")
def spanner_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpannerEmulator]:
    """Starts the Cloud Spanner emulator for the test session (skips if absent)."""
    binary = require_emulator()
    log = tmp_path_factory.mktemp("spanner") / "emulator.log"
    with running_emulator(binary, log) as host:
        yield start(host)


@pytest.fixture
def spanner_database(spanner_emulator: SpannerEmulator) -> Iterator[Any]:
    """A fresh database with the tq schema, dropped after the test."""
    db = spanner_emulator.create_database()
    try:
        yield db
    finally:
        spanner_emulator.drop_database(db)
