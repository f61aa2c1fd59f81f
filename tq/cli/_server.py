"""Serving an app under uvicorn with background jobs (workers, sweeps) in the same loop.

Also `InsecurePushFront`: what `tq dev` puts in front of the app so that
pushes reach the handlers with authentication off, whatever the app mounted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx

import tq
import tq.asgi
from tq._taskclass import DEFAULT_ROUTING_PREFIX
from tq.cli._errors import UNAVAILABLE, fail

log = logging.getLogger("tq.cli")

Job = Callable[[asyncio.Event], Awaitable[Any]]
_SWEEP_MOUNT = DEFAULT_ROUTING_PREFIX.rsplit("t/", 1)[0].rstrip("/")  # "/internal/tasks"


class InsecurePushFront:
    """An ASGI app serving the dispatcher's pushes without authentication, the rest by `app`.

    POSTs under any routing prefix of the dispatcher's classes (and the
    default `/internal/tasks/t/`), and `/internal/tasks/c/sweep`, go to
    `tq.asgi.app(dispatcher, auth=INSECURE_NO_AUTH)`; everything else,
    lifespan included, to `app`. For local development only; or, with
    `in_process`, for workers of this process that push into it directly
    (no socket leads to it, so it logs no warning).
    """

    def __init__(self, app: Any, dispatcher: tq.Dispatcher, *, in_process: bool = False) -> None:
        self.app = app
        self.dispatcher = dispatcher
        auth = tq.asgi._IN_PROCESS_ONLY if in_process else tq.asgi.INSECURE_NO_AUTH
        self.push = tq.asgi.app(dispatcher, auth=auth)

    def _prefixes(self) -> set[str]:
        found = {c.routing_prefix for c in self.dispatcher.task_classes()}
        found.add(DEFAULT_ROUTING_PREFIX)
        return found

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == _SWEEP_MOUNT + "/c/sweep":
                await self.push({**scope, "root_path": _SWEEP_MOUNT}, receive, send)
                return
            if scope["method"] == "POST" and any(path.startswith(p) for p in self._prefixes()):
                await self.push({**scope, "root_path": ""}, receive, send)
                return
        await self.app(scope, receive, send)


class RedirectTransport(httpx.AsyncBaseTransport):
    """Sends every request to `base_url` (scheme, host, port), keeping path and headers.

    The Host header stays the task's own, so the push endpoint checks the
    audience the task was made for.
    """

    def __init__(self, base_url: str) -> None:
        self.base = httpx.URL(base_url)
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(
            scheme=self.base.scheme, host=self.base.host, port=self.base.port
        )
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one); exit 4 if it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # Listening now: connections made before uvicorn starts wait in the backlog.
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise fail(f"cannot listen on {host}:{port}: {e.strerror or e}", UNAVAILABLE) from e
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def graceful_signals() -> Iterator[list[int]]:
    """Records SIGINT/SIGTERM instead of dying, so uvicorn's shutdown ends in our cleanup.

    uvicorn handles both signals while it serves and raises them again once
    it has stopped: they land here, and the command exits 0.
    """
    caught: list[int] = []

    def record(signum: int, _frame: Any) -> None:
        caught.append(signum)

    old = {s: signal.signal(s, record) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in old.items():
            signal.signal(s, h)


async def serve(app: Any, sock: socket.socket, log_level: str, jobs: list[Job]) -> None:
    """Serves `app` on `sock` until SIGINT/SIGTERM; runs `jobs` once the app has started.

    Each job gets an event set at shutdown and must return soon after. A job
    that fails stops the server (its error is logged).
    """
    import uvicorn

    class Server(uvicorn.Server):
        ready = asyncio.Event()

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            self.ready.set()

    config = uvicorn.Config(app, log_level=log_level, lifespan="auto", timeout_graceful_shutdown=10)
    server = Server(config)
    stop = asyncio.Event()
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    ready = asyncio.create_task(server.ready.wait())
    running: list[asyncio.Task[Any]] = []
    try:
        await asyncio.wait([serving, ready], return_when=asyncio.FIRST_COMPLETED)
        if server.started:
            running = [asyncio.create_task(_watch(job, stop, server)) for job in jobs]
        await serving
    finally:
        ready.cancel()
        stop.set()
        if not serving.done():
            server.should_exit = True
            await asyncio.gather(serving, return_exceptions=True)
        await asyncio.gather(ready, *running, return_exceptions=True)


async def _watch(job: Job, stop: asyncio.Event, server: Any) -> None:
    try:
        await job(stop)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("tq: a background job failed; stopping the server")
        server.should_exit = True
