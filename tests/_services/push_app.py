"""Helpers for tests that push real HTTP requests to `tq.asgi` under uvicorn.

Not a plugin: `Recorder` wraps an ASGI app and records every HTTP request it
sees (path, headers, response status); `push_app` mounts `tq.asgi.app` at
"/internal/tasks" inside a recorded Starlette app; `wait_until` polls a
condition with a bounded deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import tq
import tq.asgi

WAIT_S = 30.0
POLL_S = 0.02


@dataclasses.dataclass
class Seen:
    """One HTTP request the app received; `status` is None until it answered."""

    method: str
    path: str
    headers: dict[str, str]
    status: int | None = None


class Recorder:
    """ASGI middleware recording every HTTP request and its response status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._seen: list[Seen] = []

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def answered(self) -> list[Seen]:
        """The requests that got a response, in arrival order."""
        return [s for s in self.seen if s.status is not None]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = Seen(
            method=scope["method"],
            path=scope["path"],
            headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
        )
        with self._lock:
            self._seen.append(seen)

        async def send_recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen.status = int(message["status"])
            await send(message)

        await self.app(scope, receive, send_recording)


def push_app(dispatcher: tq.Dispatcher, **asgi_options: Any) -> Recorder:
    """`tq.asgi.app(dispatcher, **asgi_options)` mounted at "/internal/tasks", recorded."""
    inner = Starlette(
        routes=[Mount("/internal/tasks", app=tq.asgi.app(dispatcher, **asgi_options))]
    )
    return Recorder(inner)


def wait_until(cond: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Returns once `cond()` is true; fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_S)


async def wait_until_async(cond: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Like `wait_until`, without blocking the event loop."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(POLL_S)
