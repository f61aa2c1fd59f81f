"""Calling an ASGI app in this process with one HTTP request, no socket, no HTTP client.

What a worker does to push into the app it runs beside: build the ASGI
scope of the request a network push would make, feed it the body, collect
the response status and headers. Several times cheaper than going through
an HTTP client's in-process transport, with the same result for the app.
"""

from __future__ import annotations

import asyncio
import functools
import urllib.parse
from collections.abc import Mapping
from typing import Any

_DEFAULT_PORTS = {"http": 80, "https": 443}
RESULT_HEADER = "x-tq-result"  # tq.asgi.RESULT_HEADER: the body is the handler's result
MAX_BODY_KEPT = 64 * 1024 + 1  # enough to tell a result over the stored limit


class AppError(Exception):
    """The app raised, or ended without a complete response (a network push gets a 500)."""


async def call(
    app: Any, method: str, url: str, headers: Mapping[str, str], body: bytes
) -> tuple[int, dict[str, str], bytes | None]:
    """(status, response headers with lowercase names, body) of one request to `app`.

    The body is kept (its first MAX_BODY_KEPT bytes) only when it matters to
    the database queue: an error response, or a result (RESULT_HEADER);
    otherwise it is None. Raises AppError when the app raises or does not
    finish its response.
    """
    raw_headers = [
        (k.lower().encode("latin-1"), str(v).encode("latin-1"))
        for k, v in headers.items()
        if k.lower() != "host"
    ]
    return await call_raw(app, method, url, raw_headers, body)


@functools.lru_cache(maxsize=256)
def _target(url: str) -> tuple[str, tuple[str, int], bytes, str, bytes, bytes]:
    """The parts of `url` a request's scope takes: scheme, server, Host header, path,
    raw path, query string."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme or "http"
    host = parts.hostname or "localhost"
    port = parts.port or _DEFAULT_PORTS.get(scheme, 80)
    netloc = parts.netloc or host
    raw_path = parts.path or "/"
    return (
        scheme, (host, port), netloc.encode("latin-1"), urllib.parse.unquote(raw_path),
        raw_path.encode("latin-1"), parts.query.encode("latin-1"),
    )  # fmt: skip


async def call_raw(
    app: Any, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> tuple[int, dict[str, str], bytes | None]:
    """`call` with the headers as ASGI has them: lowercase names, bytes, no Host (the
    URL's is added) and no Content-Length (the body's is added)."""
    scheme, server, host, path, raw_path, query = _target(url)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", host), *headers, (b"content-length", str(len(body)).encode())],
        "server": server,
        "client": ("127.0.0.1", 0),
        "state": {},
    }
    sent_body = False
    finished: asyncio.Event | None = None  # made if the app waits for a disconnect
    done = False
    status: int | None = None
    resp_headers: dict[str, str] = {}
    kept: list[bytes] | None = None

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        nonlocal finished
        if finished is None:
            finished = asyncio.Event()
        if not done:
            await finished.wait()  # apps listening for a disconnect get one after the response
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, kept
        kind = message["type"]
        if kind == "http.response.start":
            status = int(message["status"])
            for k, v in message.get("headers", []):
                resp_headers[k.decode("latin-1").lower()] = v.decode("latin-1")
            if status >= 300 or RESULT_HEADER in resp_headers:
                kept = []
        elif kind == "http.response.body":
            if kept is not None and sum(map(len, kept)) < MAX_BODY_KEPT:
                kept.append(message.get("body", b""))
            if not message.get("more_body", False):
                _finish()

    def _finish() -> None:
        nonlocal done
        done = True
        if finished is not None:
            finished.set()

    try:
        await app(scope, receive, send)
    except Exception as e:
        raise AppError(f"{type(e).__name__}: {e}") from e
    finally:
        _finish()
    if status is None:
        raise AppError("the app returned without starting a response")
    return status, resp_headers, None if kept is None else b"".join(kept)[:MAX_BODY_KEPT]
