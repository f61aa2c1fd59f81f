"""Calling an ASGI app with a hand-made request, as a server would, for fuzzing.

No HTTP client in between: header names and values, their repetitions and
the body's chunking reach the app exactly as generated. An exception the app
raises propagates to the caller (a server would answer 500 and log it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

from starlette.types import ASGIApp, Message


@dataclasses.dataclass
class Exchange:
    """What one call did: the response, and how much of the body the app pulled."""

    status: int | None = None
    starts: int = 0
    body: bytes = b""
    pulled_bytes: int = 0
    pulled_messages: int = 0


async def call(
    app: ASGIApp,
    *,
    method: str = "POST",
    path: str,
    headers: Iterable[tuple[bytes, bytes]],
    chunks: Iterable[bytes],
    host: str = "app.test",
    scheme: str = "https",
) -> Exchange:
    """Sends one HTTP request to `app`; `chunks` may be a lazy generator."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower(), v) for k, v in headers],
        "client": ("127.0.0.1", 40000),
        "server": (host, 443),
        "state": {},
    }
    ex = Exchange()
    body_iter: Iterator[bytes] = iter(chunks)
    pending: bytes | None = next(body_iter, None)
    finished = False

    async def receive() -> Message:
        nonlocal pending, finished
        if finished:
            return {"type": "http.disconnect"}
        chunk = pending if pending is not None else b""
        pending = next(body_iter, None)
        finished = pending is None
        ex.pulled_bytes += len(chunk)
        ex.pulled_messages += 1
        return {"type": "http.request", "body": chunk, "more_body": not finished}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            ex.starts += 1
            ex.status = int(message["status"])
        elif message["type"] == "http.response.body":
            ex.body += bytes(message.get("body", b""))

    await app(scope, receive, send)
    return ex
