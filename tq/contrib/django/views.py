"""The push, sweep and cron endpoints as a Django view, under ASGI and WSGI alike.

Mount them with one include where your task classes' routing prefix points
(the default prefix is `/internal/tasks/t/`)::

    urlpatterns = [
        path("internal/tasks/", include("tq.contrib.django.urls")),
        ...
    ]

Under the include: `POST t/<class ID>[/<title>]` (pushes), `c/sweep` and
`c/cron/<class ID>`, exactly as `tq.asgi` serves them: the view hands the
request to `tq.asgi.app(dispatcher, ...)` (built once, from settings.TQ's
AUTH, AUTHORIZED_LAUNCHERS and MAX_BODY_BYTES), so the envelope, the status
mapping and OIDC authentication are the same code. The view is async:
Django runs it on the event loop under ASGI and in `async_to_sync` under
WSGI. It is exempt from CSRF checks (pushes carry OIDC tokens instead).
"""

from __future__ import annotations

import threading
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

import tq.asgi
from tq import _bridge
from tq.contrib.django import _state

_apps: dict[int, Any] = {}  # id(State) -> the ASGI app
_lock = threading.Lock()


def _asgi_app(state: _state.State) -> Any:
    key = id(state)
    app = _apps.get(key)
    if app is None:
        cfg = state.settings
        with _lock:
            app = _apps.get(key)
            if app is None:
                auth = tq.asgi.INSECURE_NO_AUTH if cfg.auth == "insecure-no-auth" else None
                app = tq.asgi.app(
                    state.dispatcher,
                    auth=auth,
                    max_body_bytes=cfg.max_body_bytes,
                    authorized_launchers=cfg.authorized_launchers,
                    certs_url=cfg.certs_url,
                )
                _apps.clear()
                _apps[key] = app
    return app


def _scope(request: HttpRequest, rest: str) -> dict[str, Any]:
    """The ASGI scope of `request`, mounted where the include is (`rest` is the path below)."""
    asgi = getattr(request, "scope", None)
    # ASGI: the server's own scope, headers as they came; WSGI: made from the environ.
    scope = dict(asgi) if asgi is not None else _bridge.scope_from_environ(request.META)
    scope["path"] = request.path  # from the server's root, decoded (as ASGI has it)
    if not any(k == b"host" for k, _ in scope["headers"]):
        # A WSGI request without a Host header (HTTP/1.0, test clients): Django's view of it.
        scope["headers"] = [*scope["headers"], (b"host", request.get_host().encode("latin-1"))]
    mount = request.path[: len(request.path) - len(rest)] if rest else request.path
    scope["root_path"] = mount.rstrip("/")
    return scope


def _read_body(request: HttpRequest, limit: int) -> bytes:
    length = request.META.get("CONTENT_LENGTH") or ""
    if length.isascii() and length.isdigit() and int(length) > limit:
        return b""  # refused from the header, unread
    return bytes(request.read(limit + 1))


@csrf_exempt
async def endpoint(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Serves one push, sweep or cron call through tq's ASGI endpoint."""
    state = _state.current()
    app = _asgi_app(state)
    body = _read_body(request, state.settings.max_body_bytes)
    resp = await _bridge.call(app, _scope(request, rest), body)
    out = HttpResponse(resp.body, status=resp.status)
    for k, v in resp.headers:
        name = k.decode("latin-1")
        if name.lower() != "content-length":
            out[name] = v.decode("latin-1")
    return out
