"""Serving an ASGI app under real uvicorn, on loopback, for a test.

`ServedApp(app)` runs uvicorn in a background thread on 127.0.0.1 and a port
the kernel picks (the listening socket is bound before uvicorn starts, so no
other process can take the port in between). The `serve_app` fixture starts
apps and stops them all at the end of the test.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import pytest
import uvicorn

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class ServedApp:
    """An ASGI app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.host = "127.0.0.1"
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(
            app,
            log_config=None,  # leave the test's logging (caplog) alone
            access_log=False,
            lifespan="auto",
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._sock]},
            name=f"uvicorn-{self.port}",
            daemon=True,
        )

    @property
    def netloc(self) -> str:
        """The "127.0.0.1:<port>" of the server, e.g. a Dispatcher's default_target_host."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The base URL, "http://127.0.0.1:<port>"."""
        return f"http://{self.netloc}"

    def start(self) -> ServedApp:
        """Starts serving; returns once uvicorn accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive():
                self._sock.close()
                raise RuntimeError("uvicorn exited during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start within {START_TIMEOUT_S} s")
            time.sleep(0.01)  # poll interval (bounded by the deadline above)
        return self

    def stop(self) -> None:
        """Stops uvicorn (graceful, bounded) and closes the socket."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(STOP_TIMEOUT_S)
        self._sock.close()
        if self._thread.is_alive():
            raise RuntimeError(f"uvicorn on {self.netloc} did not stop")

    def __enter__(self) -> ServedApp:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture
def serve_app() -> Iterator[Callable[[Any], ServedApp]]:
    """`serve_app(app)` serves `app` under uvicorn until the test ends."""
    served: list[ServedApp] = []

    def serve(app: Any) -> ServedApp:
        s = ServedApp(app)
        served.append(s)
        return s.start()

    yield serve
    for s in reversed(served):
        s.stop()
