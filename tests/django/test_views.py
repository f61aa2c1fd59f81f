"""tq's Django views: pushes, the sweep and cron endpoints under WSGI and ASGI.

Pushes carry real OIDC tokens from a local issuer; the views must answer as
tq.asgi does (the envelope, the statuses, the authentication), through
Django's test clients (its WSGI and ASGI handlers) and through real servers
(wsgiref for WSGI, uvicorn for ASGI).
"""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
import wsgiref.simple_server
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

import tq
from tests._services.uvicorn_server import ServedApp
from tests.unit.test_asgi import _Capture
from tqtesting.oidc import LocalIssuer, SigningKey

PUSHER = "tq-push@shop.iam.gserviceaccount.com"
LAUNCHER = "scheduler@shop.iam.gserviceaccount.com"
HOST = "testserver"  # the Host header of Django's test clients


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as iss:
        yield iss


@pytest.fixture
def secured(configure: Callable[..., Any], issuer: LocalIssuer) -> Any:
    return configure(
        AUTH="oidc",
        CERTS_URL=issuer.certs_url,
        PUSH_AS=PUSHER,
        AUTHORIZED_LAUNCHERS=[LAUNCHER],
        TARGET_HOST=HOST,
    )


def enqueued_push(order_id: int = 1) -> tuple[str, dict[str, str], bytes, str, str]:
    """(path, headers, body, audience, result ID) of the push of one send_confirmation."""
    from tests.django.shop.tasks import send_confirmation

    cap = _Capture()
    with tq.use_submitter(cap):
        result = send_confirmation.enqueue(order_id)
    req = cap.subs[0].request
    h = req.task.http_request  # type: ignore[attr-defined]
    path = urllib.parse.urlsplit(h.url).path
    return path, dict(h.headers), h.body, h.oidc_token.audience, result.id


def status_of(result_id: str) -> str:
    from tests.django.shop.tasks import send_confirmation

    return str(send_confirmation.get_result(result_id).status)


def wsgi_post(path: str, headers: dict[str, str], body: bytes) -> Any:
    from django.test import Client

    return Client().generic(
        "POST", path, body, content_type=headers.pop("Content-Type", ""), headers=headers
    )


def asgi_post(path: str, headers: dict[str, str], body: bytes) -> Any:
    from django.test import AsyncClient

    async def go() -> Any:
        return await AsyncClient().generic(
            "POST", path, body, content_type=headers.pop("Content-Type", ""), headers=headers
        )

    return asyncio.run(go())


CLIENTS = {"wsgi": wsgi_post, "asgi": asgi_post}


@pytest.fixture(params=sorted(CLIENTS))
def post(request: pytest.FixtureRequest) -> Callable[[str, dict[str, str], bytes], Any]:
    """Django's WSGI handler (test Client) and its ASGI handler (AsyncClient)."""
    return CLIENTS[str(request.param)]


def signed(
    headers: dict[str, str], issuer: LocalIssuer, audience: str, **mint: Any
) -> dict[str, str]:
    token = issuer.bearer(email=mint.pop("email", PUSHER), audience=audience, **mint)
    return {**headers, "Authorization": token}


def test_a_signed_push_runs_the_task(secured: Any, issuer: LocalIssuer, post: Any) -> None:
    path, headers, body, audience, rid = enqueued_push()
    assert path == "/internal/tasks/t/django-task/send_confirmation"
    r = post(path, signed(headers, issuer, audience), body)
    assert (r.status_code, r.content) == (200, b"ok\n")
    assert status_of(rid) == "SUCCESSFUL"


def test_a_forged_or_missing_token_is_403_and_runs_nothing(
    secured: Any, issuer: LocalIssuer, post: Any
) -> None:
    path, headers, body, audience, rid = enqueued_push()
    forged = post(path, signed(headers, issuer, audience, key=SigningKey.generate()), body)
    other = post(path, signed(headers, issuer, audience, email="mallory@evil.test"), body)
    missing = post(path, dict(headers), body)
    assert (forged.status_code, forged.content) == (403, b"auth_bad_signature\n")
    assert (other.status_code, other.content) == (403, b"auth_email_not_allowed\n")
    assert missing.status_code == 403
    assert status_of(rid) == "READY"


def test_bad_pushes_get_the_defined_statuses(secured: Any, issuer: LocalIssuer, post: Any) -> None:
    path, headers, body, audience, _ = enqueued_push()
    h = signed(headers, issuer, audience)
    assert post(path, dict(h), b"{not json").status_code == 400
    nope = body.replace(b'"django-task"', b'"nope"')
    assert post("/internal/tasks/t/nope", dict(h), nope).status_code == 404
    assert (
        post("/internal/tasks/t/django-task", dict(h), body.replace(b"tq.", b"xx.")).status_code
        == 400
    )


def test_a_failing_task_answers_500_so_the_queue_retries_it(
    secured: Any, issuer: LocalIssuer, post: Any
) -> None:
    from tests.django.shop import tasks

    cap = _Capture()
    tasks.failures_left["v"] = 1
    with tq.use_submitter(cap):
        result = tasks.flaky.enqueue("v")
    h = cap.subs[0].request.task.http_request  # type: ignore[attr-defined]
    path = urllib.parse.urlsplit(h.url).path
    first = post(path, signed(dict(h.headers), issuer, h.oidc_token.audience), h.body)
    second = post(path, signed(dict(h.headers), issuer, h.oidc_token.audience), h.body)
    assert (first.status_code, second.status_code) == (500, 200)
    got = tasks.flaky.get_result(result.id)
    assert (got.status, got.attempts, len(got.errors)) == ("SUCCESSFUL", 2, 1)


def test_the_sweep_view_runs_for_a_launcher_only(secured: Any, issuer: LocalIssuer) -> None:
    from django.test import Client

    ok = Client().get(
        "/internal/tasks/c/sweep",
        headers={"Authorization": issuer.bearer(email=LAUNCHER, audience=f"https://{HOST}")},
    )
    pusher = Client().get(
        "/internal/tasks/c/sweep",
        headers={"Authorization": issuer.bearer(email=PUSHER, audience=f"https://{HOST}")},
    )
    assert (ok.status_code, ok.content) == (200, b"swept\n")
    assert pusher.status_code == 403


def test_real_wsgi_and_asgi_servers_serve_the_views(secured: Any, issuer: LocalIssuer) -> None:
    from django.core.asgi import get_asgi_application
    from django.core.wsgi import get_wsgi_application

    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    wsgi = wsgiref.simple_server.make_server(
        "127.0.0.1", 0, get_wsgi_application(), handler_class=Quiet
    )
    thread = threading.Thread(target=wsgi.serve_forever, daemon=True)
    thread.start()
    try:
        with ServedApp(get_asgi_application()) as asgi:
            for base in (f"http://127.0.0.1:{wsgi.server_address[1]}", asgi.url):
                path, headers, body, audience, rid = enqueued_push()
                h = {**signed(headers, issuer, audience), "Host": HOST}
                r = httpx.post(base + path, headers=h, content=body)
                assert (r.status_code, r.text) == (200, "ok\n"), base
                assert status_of(rid) == "SUCCESSFUL"
    finally:
        wsgi.shutdown()
        wsgi.server_close()
        thread.join()
