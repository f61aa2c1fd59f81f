"""3. The push endpoint under uvicorn against a bare Starlette endpoint.

Two uvicorn servers with the same settings (one worker process each, the
same loop and HTTP implementation, access log off), each in its own
process:

  tq        `tq.asgi.app(...)` served as the app, an `async def` no-op
            handler; it parses the envelope, the protobuf JSON body, the
            X-CloudTasks-* headers, runs the handler and maps the outcome
  baseline  a bare Starlette route that reads the body and parses the JSON
  tq, mounted   the same mounted at /internal/tasks inside an app of its own
            (one more Starlette app and router per request), besides the goal
  tq + auth tq with OIDC verification on (a locally issued token; the
            signing certificates cached): what production runs. Its goal
            (>= 0.85x) is against the bare endpoint sent the same request,
            token included (a JWT of about 900 bytes that any server must
            read); the ratio against the unsigned request is shown too

Load comes from `wrk` in another process (the Debian package; without it,
a slower Python generator, bench/_load.py), on keep-alive connections,
the servers alternating every second. Goal: tq >= 0.8x baseline.

Besides requests per second of wall time, each server's own CPU time (from
/proc) gives pushes per CPU-second of the server process: on a shared
machine it moves less than wall-time rates, and it is what the endpoint
itself costs.

Usage: python -m bench.push [--seconds 5] [--connections 16] [--rounds 3]
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench import _common as c
from tests.testpb import payloads_pb2 as pb
from tq import _envelope

PATH = "/internal/tasks/t/greet/some-title"
HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "Google-Cloud-Tasks",
    "X-CloudTasks-QueueName": "q",
    "X-CloudTasks-TaskName": "0123456789abcdef0123456789abcdef",
    "X-CloudTasks-TaskRetryCount": "0",
    "X-CloudTasks-TaskExecutionCount": "0",
    "X-CloudTasks-TaskETA": "1767225600.000000",
    "X-Tq-Expected-Eta": "1767225600.000000",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server(str):
    """A running server's URL, with its process ID."""

    pid: int

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server(factory: str, env: dict[str, str]) -> Iterator[Server]:
    """Runs `uvicorn --factory bench._apps:<factory>` on a free loopback port."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", f"bench._apps:{factory}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--log-level", "error", "--no-access-log", "--backlog", "1024"],
        cwd=c.ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # generous: a loaded machine starts it slowly
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn ({factory}) did not start")
            time.sleep(0.05)
        url = Server(f"http://127.0.0.1:{port}")
        url.pid = proc.pid
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _lua(body: bytes, headers: dict[str, str], d: str) -> str:
    path = Path(d, "push.lua")
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua_str(body.decode())}"]
    lines += [f"wrk.headers[{_lua_str(k)}] = {_lua_str(v)}" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _lua_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def load(
    url: str, body: bytes, headers: dict[str, str], seconds: float, conns: int
) -> tuple[float, int]:
    """(requests per second, requests) that `wrk` (or bench/_load.py) got; raises on non-2xx."""
    with tempfile.TemporaryDirectory() as d:
        if shutil.which("wrk"):
            proc = subprocess.run(
                ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s",
                 "-s", _lua(body, headers, d), url + PATH],
                capture_output=True, text=True,
            )  # fmt: skip
            if proc.returncode:
                raise RuntimeError(f"wrk failed: {proc.stderr or proc.stdout}")
            out = proc.stdout
            if "Non-2xx" in out:
                raise RuntimeError(f"the server refused pushes:\n{out}")
            m = re.search(r"Requests/sec:\s+([\d.]+)", out)
            n = re.search(r"(\d+) requests in", out)
            if not m or not n:
                raise RuntimeError(f"cannot read wrk's output:\n{out}")
            return float(m.group(1)), int(n.group(1))
        body_file = Path(d, "body")
        body_file.write_bytes(body)
        out = subprocess.run(
            [sys.executable, "-m", "bench._load", url + PATH, str(seconds), str(conns),
             str(body_file), *(f"{k}={v}" for k, v in headers.items())],
            cwd=c.ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        m = re.search(r"requests=(\d+) seconds=([\d.]+) errors=(\d+)", out)
        if not m:
            raise RuntimeError(f"cannot read the load generator's output:\n{out}")
        if int(m.group(3)):
            raise RuntimeError(f"the server refused pushes: {out}")
        return int(m.group(1)) / float(m.group(2)), int(m.group(1))


def main() -> None:
    ap = c.args(__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=16)
    a = ap.parse_args()
    seconds, rounds = (1.0, 1) if a.tiny else (a.seconds, a.rounds)
    body = _envelope.encode("greet", pb.Greet(name="ann"))
    table = c.Table("3. Push endpoint under uvicorn vs a bare Starlette endpoint parsing the JSON")
    with tempfile.TemporaryDirectory() as d, contextlib.ExitStack() as stack:
        targets: dict[str, tuple[Server, dict[str, str]]] = {
            "tq": (stack.enter_context(server("tq_app", {})), HEADERS),
            "baseline": (stack.enter_context(server("bare_app", {})), HEADERS),
        }
        if not a.tiny:  # the smoke test spares itself two more servers
            token_file = str(Path(d, "token"))
            targets["tq, mounted"] = (stack.enter_context(server("tq_mounted_app", {})), HEADERS)
            auth_url = stack.enter_context(
                server("tq_auth_app", {"TQ_BENCH_TOKEN_FILE": token_file})
            )
            token = Path(token_file).read_text()
            signed = {**HEADERS, "Authorization": "Bearer " + token}
            targets["tq + auth"] = (auth_url, signed)
            # The same request as the authenticated push (Cloud Tasks always sends a
            # token): the bare endpoint parses its headers and ignores the token.
            targets["baseline, signed"] = (targets["baseline"][0], signed)
        if not a.tiny:
            for url, hs in targets.values():  # warm up
                load(url, body, hs, 1.0, a.connections)
        # Each round alternates the servers every second (wrk's least
        # duration): a busy machine's swings then hit all of them alike.
        res: dict[str, list[float]] = {k: [] for k in targets}
        per_cpu: dict[str, list[float]] = {k: [] for k in targets}
        slices = max(1, round(seconds))
        for _ in range(rounds):
            got: dict[str, list[float]] = {k: [] for k in targets}
            done = dict.fromkeys(targets, 0)
            cpu = dict.fromkeys(targets, 0.0)
            names = list(targets)
            for _ in range(slices):
                names.reverse()
                for k in names:
                    url, hs = targets[k]
                    cpu0 = url.cpu_s()
                    rps, n = load(url, body, hs, 1.0, a.connections)
                    cpu[k] += url.cpu_s() - cpu0
                    done[k] += n
                    got[k].append(rps)
            for k, v in got.items():
                res[k].append(sum(v) / len(v))
                per_cpu[k].append(done[k] / cpu[k] if cpu[k] > 0 else 0.0)
    table.ratio_row("tq push endpoint, no auth", res["tq"], res["baseline"], goal=0.8)
    if "tq, mounted" in res:
        base = res["baseline"]
        table.ratio_row("tq push endpoint, mounted in an app", res["tq, mounted"], base)
        table.ratio_row(
            "tq push endpoint, OIDC auth, vs the bare endpoint given the same signed request",
            res["tq + auth"], res["baseline, signed"], goal=0.85,
        )  # fmt: skip
        table.ratio_row("tq push endpoint, OIDC auth, vs the bare endpoint unsigned",
                        res["tq + auth"], base)  # fmt: skip
    base_cpu = per_cpu["baseline"]
    table.ratio_row(
        "the same, no auth, per server CPU-second", per_cpu["tq"], base_cpu, unit="/CPU-s"
    )
    if "tq, mounted" in res:
        table.ratio_row(
            "the same, OIDC auth, per server CPU-second",
            per_cpu["tq + auth"],
            base_cpu,
            unit="/CPU-s",
        )
    gen = "wrk -t1" if shutil.which("wrk") else "bench/_load.py (httpx; wrk not installed)"
    import uvicorn

    table.notes.append(
        f"Requests per second; uvicorn {uvicorn.__version__}, 1 worker, access log off, "
        f"{_uvicorn_impl()}; load from {gen}, {a.connections} keep-alive connections, "
        f"{seconds:g} s per server and round, alternating every second; the server and "
        "the load generator share the 2 cores."
    )
    table.print()


def _uvicorn_impl() -> str:
    loop = "uvloop" if _has("uvloop") else "asyncio"
    http = "httptools" if _has("httptools") else "h11"
    return f"{loop} + {http}"


def _has(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


if __name__ == "__main__":
    main()
