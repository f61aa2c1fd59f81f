"""Memory is bounded by the body limit, not by what a caller sends.

In process: the app pulls no more of a 64 MiB body than the limit plus one
chunk, and its allocations stay within a few times the limit (tracemalloc).
Under real uvicorn, in a process of its own: after many huge bodies
(chunked, or with an honest or lying Content-Length), the server's peak
resident memory has not grown by as much as one body, and it still serves.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import tq
import tq.asgi
from tests._longmode import pick, record_figure
from tests.hardening._asgi_call import call
from tests.testpb import payloads_pb2 as pb
from tq import _envelope, _metrics
from tqtesting.oidc import LocalIssuer

ROOT = Path(__file__).resolve().parents[2]
HOST = "app.test"  # as tests/hardening/_served_app.py
PUSHER = "tq-push@p.iam.gserviceaccount.com"
CHUNK = 64 * 1024
LIMIT = tq.asgi.DEFAULT_MAX_BODY_BYTES


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as iss:
        yield iss


def bearer(issuer: LocalIssuer) -> bytes:
    return issuer.bearer(email=PUSHER, audience=f"https://{HOST}").encode()


def spaces(total: int) -> Iterator[bytes]:
    """A body of `total` bytes made on the fly, CHUNK at a time."""
    for _ in range(total // CHUNK):
        yield b" " * CHUNK


# In process.


@pytest.mark.parametrize(
    "length",
    [None, b"10", str(64 << 20).encode()],
    ids=["no_length", "lying_length", "honest_length"],
)
async def test_huge_body_is_pulled_and_held_no_further_than_the_limit(
    issuer: LocalIssuer, length: bytes | None
) -> None:
    handled: list[pb.Greet] = []
    d = tq.Dispatcher(cloud_project="p", cloud_region="r", default_target_host=HOST, push_as=PUSHER)
    d.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")(
        handled.append
    )
    app = Starlette(
        routes=[Mount("/internal/tasks", app=tq.asgi.app(d, certs_url=issuer.certs_url))]
    )
    path = "/internal/tasks/t/greet"
    headers = [(b"host", HOST.encode()), (b"authorization", bearer(issuer))]
    # A first push fetches the certificates and warms up every code path.
    warm = await call(
        app, path=path, headers=headers, chunks=[_envelope.encode("greet", pb.Greet())]
    )
    assert warm.status == 200
    if length is not None:
        headers.append((b"content-length", length))
    _metrics.reset()

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        ex = await call(app, path=path, headers=headers, chunks=spaces(64 << 20))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()

    assert (ex.status, ex.body) == (400, b"body_too_large\n")
    assert ex.pulled_bytes <= LIMIT + CHUNK
    if length == str(64 << 20).encode():
        assert ex.pulled_bytes == 0  # refused on the declared length, unread
    assert peak < 3 * LIMIT, f"peak {peak} bytes for a body limit of {LIMIT}"
    assert _metrics.value("tq_pushes_rejected", reason="body_too_large") == 1
    assert len(handled) == 1  # the warm-up push only


# Under uvicorn, in a process of its own.


@contextlib.contextmanager
def served(certs_url: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    env = {**os.environ, "TQ_TEST_CERTS_URL": certs_url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.hardening._served_app:app",
         "--fd", str(sock.fileno()), "--log-level", "error", "--no-access-log"],
        env=env, cwd=ROOT, pass_fds=[sock.fileno()],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    sock.close()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http_get(port, "/handled") is not None:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the app did not start: {proc.stderr.read()!r}")  # type: ignore[union-attr]
            time.sleep(0.05)  # poll interval, bounded by the deadline
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def http_get(port: int, path: str) -> str | None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return body.decode() if head.startswith(b"HTTP/1.1 200") else None


def post(port: int, head: bytes, body: Iterator[bytes]) -> bytes:
    """Sends a request while reading the answer; returns the status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)

        def pump() -> None:
            with contextlib.suppress(OSError):  # the server may hang up once it answered
                for chunk in body:
                    s.sendall(chunk)

        sender = threading.Thread(target=pump)
        sender.start()
        data = b""
        with contextlib.suppress(OSError):
            while b"\r\n" not in data and (chunk := s.recv(4096)):
                data += chunk
        sender.join(60)
    return data.split(b"\r\n", 1)[0]


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc")


def chunked(total: int) -> Iterator[bytes]:
    for piece in spaces(total):
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_uvicorn_server_memory_stays_flat_under_huge_bodies(issuer: LocalIssuer) -> None:
    size = 32 << 20
    rounds = pick(3, 30)
    start = (
        b"POST /internal/tasks/t/greet HTTP/1.1\r\nHost: app.test\r\n"
        b"Content-Type: application/json\r\nAuthorization: " + bearer(issuer) + b"\r\n"
    )
    kinds = {
        "chunked": lambda: (start + b"Transfer-Encoding: chunked\r\n\r\n", chunked(size)),
        "honest_length": lambda: (start + b"Content-Length: %d\r\n\r\n" % size, spaces(size)),
        # Declares 10 bytes and sends 32 MiB: the server must read 10, answer,
        # and not hold what follows (it is not a request).
        "lying_length": lambda: (start + b"Content-Length: 10\r\n\r\n", spaces(size)),
    }
    with served(issuer.certs_url) as (proc, port):
        for make in kinds.values():  # warm-up: every code path once
            assert post(port, *make()) == b"HTTP/1.1 400 Bad Request"
        before = peak_rss_kib(proc.pid)
        statuses = [post(port, *make()) for _ in range(rounds) for make in kinds.values()]
        grown_kib = peak_rss_kib(proc.pid) - before

        body = _envelope.encode("greet", pb.Greet(name="after"))
        ok = post(port, start + b"Content-Length: %d\r\n\r\n" % len(body), iter([body]))
        handled = http_get(port, "/handled")

    assert statuses == [b"HTTP/1.1 400 Bad Request"] * (len(kinds) * rounds)
    assert ok == b"HTTP/1.1 200 OK"
    assert handled == "1"
    # One body is 32 MiB; the limit is 1 MiB. Nothing of the bodies may stay.
    assert grown_kib * 1024 < 4 * LIMIT, f"peak RSS grew by {grown_kib} KiB"
    record_figure(
        "huge_bodies_uvicorn",
        requests=len(kinds) * rounds,
        body_mib=size >> 20,
        peak_rss_growth_kib=grown_kib,
    )
