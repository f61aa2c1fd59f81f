"""tq.asgi.app serves pushes without Starlette's routing: the same answers as through it."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

import tq
import tq.asgi
from tests.testpb import payloads_pb2 as pb
from tq import _envelope, _metrics


@pytest.fixture(autouse=True)
def _zero_metrics() -> None:
    _metrics.reset()


class _PassThrough:
    """A middleware doing nothing: with it, every request goes through Starlette's stack."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class _Stamp:
    """A middleware marking every response it passes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"x-stamp", b"1")]}
            await send(message)

        await self.app(scope, receive, stamped)


def _dispatcher() -> tq.Dispatcher:
    d = tq.Dispatcher(cloud_project="p", cloud_region="r", default_target_host="h.test")

    @d.task_class(id="greet", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    async def greet(payload: pb.Greet) -> str | None:
        if payload.name == "boom":
            raise tq.Fatal("boom")
        return "hello" if payload.name == "result" else None

    return d


def _scope(path: str, method: str = "POST", root_path: str = "") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": b"",
        "headers": [(b"host", b"h.test"), (b"x-cloudtasks-queuename", b"q")],
        "server": ("h.test", 443),
        "client": ("127.0.0.1", 1),
    }


async def _call(
    app: ASGIApp, scope: dict[str, Any], body: bytes
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    return start["status"], list(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


GREET = _envelope.encode("greet", pb.Greet(name="ann"))

CASES = [
    ("/internal/tasks/t/greet/title", "", GREET),  # done
    ("/internal/tasks/t/greet", "", _envelope.encode("greet", pb.Greet(name="result"))),
    ("/internal/tasks/t/greet", "", _envelope.encode("greet", pb.Greet(name="boom"))),
    ("/internal/tasks/t/nope", "", _envelope.encode("nope", pb.Greet())),  # unknown class
    ("/internal/tasks/t/greet", "", b"{not json"),  # bad envelope
    ("/elsewhere/greet", "", GREET),  # no routing prefix
    ("/internal/tasks/t/greet", "/internal/tasks", GREET),  # mounted
    ("/internal/tasks", "/internal/tasks", GREET),  # the mount itself: Starlette redirects
    ("/internal/tasks/c/sweep", "/internal/tasks", b""),  # not a push
]


@pytest.mark.parametrize(("path", "root_path", "body"), CASES)
async def test_a_push_served_directly_answers_as_through_starlettes_routing(
    path: str, root_path: str, body: bytes
) -> None:
    direct = tq.asgi.app(_dispatcher(), auth=tq.asgi.INSECURE_NO_AUTH)
    routed = tq.asgi.app(_dispatcher(), auth=tq.asgi.INSECURE_NO_AUTH)
    routed.user_middleware.append(Middleware(_PassThrough))
    got = await _call(direct, _scope(path, root_path=root_path), body)
    got_counted = _metrics.snapshot()
    _metrics.reset()
    want = await _call(routed, _scope(path, root_path=root_path), body)
    assert got == want
    assert got_counted == _metrics.snapshot()  # the same counters, the same labels


async def test_middleware_added_to_the_app_sees_every_push() -> None:
    app = tq.asgi.app(_dispatcher(), auth=tq.asgi.INSECURE_NO_AUTH)
    app.add_middleware(_Stamp)
    status, headers, body = await _call(app, _scope("/internal/tasks/t/greet"), GREET)
    assert (status, body) == (200, b"ok\n")
    assert (b"x-stamp", b"1") in headers


@pytest.mark.parametrize("routed", [False, True], ids=["direct", "routed"])
async def test_a_client_gone_before_its_body_gets_500_and_the_error_is_raised(
    routed: bool,
) -> None:
    app = tq.asgi.app(_dispatcher(), auth=tq.asgi.INSECURE_NO_AUTH)
    if routed:
        app.user_middleware.append(Middleware(_PassThrough))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(ClientDisconnect):
        await app(_scope("/internal/tasks/t/greet"), receive, send)
    assert sent[0]["status"] == 500
    assert sent[1]["body"] == b"Internal Server Error"
