"""The push, sweep and cron endpoints served to WSGI (tq.wsgi): the same as tq.asgi's."""

from __future__ import annotations

import io
import threading
import urllib.parse
import wsgiref.simple_server
import wsgiref.util
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest

import tq
import tq.wsgi
from tests.testpb import payloads_pb2 as pb
from tests.unit.test_asgi import (
    HOST,
    LAUNCHER,
    Calls,
    Push,
    built_push,
    sweeping_dispatcher,
)
from tests.unit.test_asgi import _zero_metrics as _zero_metrics  # autouse fixture
from tests.unit.test_asgi import calls as calls  # fixture
from tests.unit.test_asgi import disp as disp  # fixture
from tests.unit.test_asgi import issuer as issuer  # fixture
from tq import _metrics
from tqtesting.oidc import LocalIssuer, SigningKey

MOUNT = "/internal/tasks"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def mounted(inner: WSGIApp, mount: str = MOUNT) -> WSGIApp:
    """What WSGI middleware (Werkzeug's DispatcherMiddleware) does: SCRIPT_NAME is the mount."""

    def outer(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not path.startswith(mount + "/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not here\n"]
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + mount
        environ["PATH_INFO"] = path[len(mount) :]
        return inner(environ, start_response)

    return outer


class Answer:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status_code = int(status.split()[0])
        self.headers = dict(headers)
        self.text = body.decode()


def request(
    app: WSGIApp,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    stream: Any = None,
) -> Answer:
    """One request through a WSGI app, as a WSGI server would make it."""
    parts = urllib.parse.urlsplit(url)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": urllib.parse.unquote(parts.path),
        "QUERY_STRING": parts.query,
        "SERVER_NAME": parts.hostname or HOST,
        "SERVER_PORT": "443" if parts.scheme == "https" else "80",
        "wsgi.url_scheme": parts.scheme or "https",
        "wsgi.input": stream if stream is not None else io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": parts.netloc or HOST,
    }
    wsgiref.util.setup_testing_defaults(environ)
    for k, v in (headers or {}).items():
        key = k.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = v
        else:
            environ["HTTP_" + key] = v
    got: dict[str, Any] = {}

    def start_response(status: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> None:
        got["status"], got["headers"] = status, hdrs

    out = b"".join(app(environ, start_response))
    return Answer(got["status"], got["headers"], out)


@pytest.fixture
def endpoint(disp: tq.Dispatcher, issuer: LocalIssuer) -> Iterator[tq.wsgi.WSGIEndpoint]:
    ep = tq.wsgi.app(disp, certs_url=issuer.certs_url, authorized_launchers=[LAUNCHER])
    yield ep
    ep.close()


def push(app: WSGIApp, issuer: LocalIssuer, p: Push, **mint: Any) -> Answer:
    headers = dict(p.headers)
    headers["Authorization"] = issuer.bearer(
        email=mint.pop("email", "tq-push@p.iam.gserviceaccount.com"), audience=p.audience, **mint
    )
    return request(app, "POST", p.url, headers=headers, body=p.body)


def test_sync_and_async_handlers_run_and_answer_200(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer, endpoint: tq.wsgi.WSGIEndpoint
) -> None:
    app = mounted(endpoint)
    r1 = push(app, issuer, built_push(disp, pb.Greet(name="ada"), title="welcome/ada"))
    r2 = push(app, issuer, built_push(disp, pb.Count(n=3)))
    assert (r1.status_code, r1.text) == (200, "ok\n")
    assert r2.status_code == 200
    assert calls.payloads == [pb.Greet(name="ada"), pb.Count(n=3)]
    assert calls.infos[0].task_class == "greet"


@pytest.mark.parametrize(
    ("how", "status"),
    [("fatal", 202), ("ignore", 204), ("retry", 429), ("transient", 500), ("boom", 500)],
)
def test_handler_outcomes_map_to_the_same_statuses(
    disp: tq.Dispatcher, issuer: LocalIssuer, endpoint: tq.wsgi.WSGIEndpoint, how: str, status: int
) -> None:
    r = push(mounted(endpoint), issuer, built_push(disp, pb.Fail(how=how)))
    assert r.status_code == status


def test_a_forged_token_is_403_and_the_handler_never_runs(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer, endpoint: tq.wsgi.WSGIEndpoint
) -> None:
    p = built_push(disp, pb.Greet(name="mallory"))
    r = push(mounted(endpoint), issuer, p, key=SigningKey.generate())
    none = request(mounted(endpoint), "POST", p.url, headers=p.headers, body=p.body)
    assert (r.status_code, r.text) == (403, "auth_bad_signature\n")
    assert none.status_code == 403
    assert calls.payloads == []
    assert _metrics.value("tq_pushes_rejected", reason="auth_bad_signature") == 1


def test_bad_envelope_and_unknown_class_get_400_and_404(
    disp: tq.Dispatcher, issuer: LocalIssuer, endpoint: tq.wsgi.WSGIEndpoint
) -> None:
    p = built_push(disp, pb.Greet(name="ada"))
    bad = Push(p.url, p.headers, b"{not json", p.audience)
    unknown = Push(p.url.replace("/greet", "/nope"), p.headers, p.body, p.audience)
    assert push(mounted(endpoint), issuer, bad).status_code == 400
    assert push(mounted(endpoint), issuer, unknown).status_code == 400  # URL and body disagree
    body = p.body.replace(b'"greet"', b'"nope"')
    gone = Push(p.url.replace("/greet", "/nope"), p.headers, body, p.audience)
    assert push(mounted(endpoint), issuer, gone).status_code == 404


class _Unreadable(io.RawIOBase):
    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the body of a refused request was read")


def test_a_declared_oversized_body_is_refused_unread(
    disp: tq.Dispatcher, issuer: LocalIssuer
) -> None:
    ep = tq.wsgi.app(disp, certs_url=issuer.certs_url, max_body_bytes=100)
    try:
        p = built_push(disp, pb.Greet(name="x" * 200))
        headers = dict(p.headers, Authorization=issuer.bearer(email=None, audience=p.audience))
        r = request(mounted(ep), "POST", p.url, headers=headers, body=p.body, stream=_Unreadable())
    finally:
        ep.close()
    assert (r.status_code, r.text) == (400, "body_too_large\n")


def test_the_sweep_endpoint_runs_for_a_launcher_only(issuer: LocalIssuer) -> None:
    d, sweeper = sweeping_dispatcher()
    ep = tq.wsgi.app(d, certs_url=issuer.certs_url, authorized_launchers=[LAUNCHER])
    try:
        url = f"https://{HOST}{MOUNT}/c/sweep"
        ok = request(
            mounted(ep),
            "GET",
            url,
            headers={"Authorization": issuer.bearer(email=LAUNCHER, audience=f"https://{HOST}")},
        )
        refused = request(mounted(ep), "GET", url)
    finally:
        ep.close()
    assert (ok.status_code, ok.text, refused.status_code) == (200, "swept\n", 403)
    assert sweeper.sweeps == 1


def test_handlers_run_in_the_request_threads_context(issuer: LocalIssuer) -> None:
    """A submitter set with tq.use_submitter in the WSGI thread receives the handler's tasks."""
    from tests.unit.test_asgi import _Capture, make_dispatcher

    d = make_dispatcher()

    @d.task_class(id="first", prototype=pb.Greet, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    def first(payload: pb.Greet) -> None:
        d.add_task(tq.Task(payload=pb.Count(n=len(payload.name))))

    d.register_task_class(
        tq.TaskClass(id="then", prototype=pb.Count, kind=tq.Kind.NON_TRANSACTIONAL, queue="q")
    )
    p = built_push(d, pb.Greet(name="abc"))
    ep = tq.wsgi.app(d, certs_url=issuer.certs_url)
    cap = _Capture()
    try:
        with tq.use_submitter(cap):
            r = push(mounted(ep), issuer, p)
    finally:
        ep.close()
    assert r.status_code == 200
    assert [s.payload for s in cap.subs] == [pb.Count(n=3)]


def test_root_path_serves_an_app_that_gets_the_whole_path(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer
) -> None:
    ep = tq.wsgi.app(disp, certs_url=issuer.certs_url, root_path=MOUNT)
    try:
        r = push(ep, issuer, built_push(disp, pb.Greet(name="root")))
    finally:
        ep.close()
    assert r.status_code == 200
    assert calls.payloads == [pb.Greet(name="root")]


def test_a_real_wsgi_server_serves_pushes(
    disp: tq.Dispatcher, calls: Calls, issuer: LocalIssuer, endpoint: tq.wsgi.WSGIEndpoint
) -> None:
    """wsgiref's server (HTTP on loopback) in front of the endpoint, pushed with httpx."""

    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = wsgiref.simple_server.make_server(
        "127.0.0.1", 0, mounted(endpoint), handler_class=Quiet
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        p = built_push(disp, pb.Greet(name="wire"))
        headers = dict(p.headers, Host=HOST)
        headers["Authorization"] = issuer.bearer(
            email="tq-push@p.iam.gserviceaccount.com", audience=p.audience
        )
        port = server.server_address[1]
        path = urllib.parse.urlsplit(p.url).path
        r = httpx.post(f"http://127.0.0.1:{port}{path}", headers=headers, content=p.body)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert (r.status_code, r.text) == (200, "ok\n")
    assert calls.payloads == [pb.Greet(name="wire")]
