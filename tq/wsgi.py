"""The push endpoint for WSGI apps (Flask, Django under a WSGI server, Bottle, ...).

`tq.wsgi.app(dispatcher)` is a WSGI application serving exactly what
`tq.asgi.app(dispatcher)` serves, with the same options, envelope, status
mapping and OIDC authentication: it is that ASGI app, run on an event loop
of its own in a background thread. Mount it where the routing prefix of
your task classes points, e.g. in Flask with Werkzeug's dispatcher::

    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    flask_app.wsgi_app = DispatcherMiddleware(
        flask_app.wsgi_app, {"/internal/tasks": tq.wsgi.app(disp)}
    )

Under the mount: `POST <mount>/t/<class ID>[/<title>]` (pushes),
`<mount>/c/sweep` and `<mount>/c/cron/<class ID>` (see `tq.asgi`). The
mount is the request's SCRIPT_NAME, as WSGI middleware sets it; a WSGI
server serving this app alone at its root passes `root_path=` instead.

Each request blocks its WSGI worker thread until the handler finishes. Sync
handlers run in the loop's worker threads, async ones on the loop; they run
in a copy of the request thread's context. The request body is read (up to
`max_body_bytes` + 1 bytes) before the push runs; a Content-Length over the
limit is refused without reading the body.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

from tq import _bridge
from tq._auth import OIDCVerifier
from tq._certs import GOOGLE_CERTS_URL
from tq._dispatcher import Dispatcher
from tq.asgi import DEFAULT_MAX_BODY_BYTES, INSECURE_NO_AUTH
from tq.asgi import app as asgi_app

StartResponse = Callable[..., Any]

_REASONS = {
    200: "OK", 202: "Accepted", 204: "No Content", 400: "Bad Request", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 429: "Too Many Requests",
    500: "Internal Server Error",
}  # fmt: skip


class WSGIEndpoint:
    """A WSGI application running an ASGI app (tq's endpoint) on a loop thread.

    Made by `app()`; call `close()` to stop its loop thread (a daemon thread,
    so a process may also just exit).
    """

    def __init__(self, asgi: Any, max_body_bytes: int, root_path: str | None = None) -> None:
        self.asgi = asgi
        self.max_body_bytes = max_body_bytes
        self.root_path = root_path
        self._loop = _bridge.LoopThread("tq-wsgi")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        scope = _bridge.scope_from_environ(environ, self.root_path)
        body = _read_body(environ, self.max_body_bytes)
        resp = self._loop.run(_bridge.call, self.asgi, scope, body)
        reason = _REASONS.get(resp.status, "Unknown")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.headers]
        start_response(f"{resp.status} {reason}", headers)
        return [resp.body]

    def close(self) -> None:
        self._loop.close()


def _read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The body, or b"" when Content-Length is over `limit` (refused unread).

    Without a Content-Length (chunked requests, where the server allows
    them) at most `limit` + 1 bytes are read: enough for the endpoint to
    see that the body is too large.
    """
    length = str(environ.get("CONTENT_LENGTH") or "")
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    if length.isascii() and length.isdigit():
        n = int(length)
        if n > limit:
            return b""
        return bytes(stream.read(n)) if n else b""
    return bytes(stream.read(limit + 1))


def app(
    dispatcher: Dispatcher,
    *,
    auth: OIDCVerifier | object | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    authorized_launchers: Collection[str] = (),
    certs_url: str = GOOGLE_CERTS_URL,
    root_path: str | None = None,
) -> WSGIEndpoint:
    """A WSGI app serving pushes, the sweep and the cron endpoints of `dispatcher`.

    The options are `tq.asgi.app`'s (`auth=tq.wsgi.INSECURE_NO_AUTH` turns
    authentication off, for local development only), plus `root_path`:
    where the app is served when no middleware sets SCRIPT_NAME (e.g.
    "/internal/tasks" for a WSGI server that serves this app alone and
    receives the whole path as PATH_INFO). Raises ConfigError on a bad
    option.
    """
    inner = asgi_app(
        dispatcher,
        auth=auth,  # type: ignore[arg-type]  # checked by tq.asgi
        max_body_bytes=max_body_bytes,
        authorized_launchers=authorized_launchers,
        certs_url=certs_url,
    )
    return WSGIEndpoint(inner, max_body_bytes, root_path)


__all__ = ["GOOGLE_CERTS_URL", "INSECURE_NO_AUTH", "OIDCVerifier", "WSGIEndpoint", "app"]
