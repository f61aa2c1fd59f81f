"""Serving tq's ASGI endpoint (`tq.asgi.app`) from a server of another kind.

A WSGI server (`tq.wsgi`) or a web framework's view (the Django views)
hands over one whole request; `call` runs it through the ASGI app and gives
back the whole response. `scope_from_environ` turns a WSGI environ into the
ASGI scope of the same request, and `LoopThread` runs coroutines for
blocking callers on one event loop of their own, in the caller's context.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# WSGI keeps these two headers outside the HTTP_ keys.
_UNPREFIXED = {"CONTENT_TYPE": b"content-type", "CONTENT_LENGTH": b"content-length"}


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    """A whole ASGI response: status, headers (raw pairs) and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def scope_from_environ(environ: Mapping[str, Any], root_path: str | None = None) -> dict[str, Any]:
    """The ASGI HTTP scope of the request a WSGI `environ` describes.

    `path` is the full path from the server's root (SCRIPT_NAME + PATH_INFO);
    `root_path` is where the ASGI app is mounted (default SCRIPT_NAME).
    WSGI strings are latin-1 decodings of the raw bytes (PEP 3333), so they
    are encoded back the same way.
    """
    script = str(environ.get("SCRIPT_NAME", ""))
    path = script + str(environ.get("PATH_INFO", ""))
    raw_path = path.encode("latin-1")
    headers: list[tuple[bytes, bytes]] = []
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower().encode("latin-1")
        elif key in _UNPREFIXED:
            if not value:
                continue
            name = _UNPREFIXED[key]
        else:
            continue
        headers.append((name, str(value).encode("latin-1")))
    server_port = environ.get("SERVER_PORT") or "80"
    client = environ.get("REMOTE_ADDR")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": str(environ.get("SERVER_PROTOCOL", "HTTP/1.1")).partition("/")[2] or "1.1",
        "method": str(environ.get("REQUEST_METHOD", "GET")).upper(),
        "scheme": str(environ.get("wsgi.url_scheme", "http")),
        # PATH_INFO is percent-decoded already (as ASGI's path is).
        "path": path,
        "raw_path": raw_path,
        "query_string": str(environ.get("QUERY_STRING", "")).encode("latin-1"),
        "root_path": script if root_path is None else root_path,
        "headers": headers,
        "server": (str(environ.get("SERVER_NAME", "localhost")), int(server_port)),
        "client": (str(client), int(environ.get("REMOTE_PORT") or 0)) if client else None,
        "state": {},
    }


async def call(app: Any, scope: dict[str, Any], body: bytes) -> Response:
    """Runs one request with this whole `body` through the ASGI `app`.

    An app that raises propagates its exception (a server answers 500); an
    app that returns without a response gives a 500 response.
    """
    sent = False
    done = asyncio.Event()
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # an app waiting for a disconnect gets one after its response
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        kind = message["type"]
        if kind == "http.response.start":
            status = int(message["status"])
            headers.extend((bytes(k), bytes(v)) for k, v in message.get("headers", []))
        elif kind == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    if status is None:
        return Response(500, [(b"content-type", b"text/plain; charset=utf-8")], b"no response\n")
    return Response(status, headers, b"".join(chunks))


class LoopThread:
    """An event loop on a daemon thread of its own, for blocking callers.

    `run(coroutine_function, *args)` runs it on the loop, in a copy of the
    caller's context (contextvars such as `tq.use_submitter` follow), and
    blocks until it is done. The thread starts on first use; `close()` stops
    it (a later `run` starts a new one).
    """

    def __init__(self, name: str = "tq-loop") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                thread = threading.Thread(target=serve, name=self._name, daemon=True)
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        loop = self._running_loop()
        ctx = contextvars.copy_context()
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def start() -> None:
            task = loop.create_task(fn(*args), context=ctx)

            def finish(t: asyncio.Task[T]) -> None:
                if t.cancelled():
                    done.cancel()
                elif (err := t.exception()) is not None:
                    done.set_exception(err)
                else:
                    done.set_result(t.result())

            task.add_done_callback(finish)

        loop.call_soon_threadsafe(start)
        return done.result()

    def close(self) -> None:
        """Stops the loop (abandoning what still runs on it) and waits for its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
