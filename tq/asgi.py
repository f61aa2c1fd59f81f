"""The push endpoint: a Starlette app receiving the tasks Cloud Tasks pushes back.

Mount it where the routing prefix of your task classes points (the default
prefix is `/internal/tasks/t/`):

    app.mount("/internal/tasks", tq.asgi.app(dispatcher))

It serves:

* `POST <mount>/t/<class ID>[/<title>]`: one pushed task. The endpoint
  finds the class by matching the full request path (the mount's root path
  plus the path) against the routing prefixes of the registered classes
  (and the default one), longest first; the path segment after the prefix
  is the class ID. So a class with `routing_prefix="/jobs/"` is served by
  the same app mounted at `/jobs`.
* `GET` (or `POST`) `<mount>/c/sweep`: runs `dispatcher.sweep_async()` once,
  for Cloud Scheduler or App Engine cron.
* `GET` (or `POST`) `<mount>/c/cron/<class ID>`: adds the task of a
  scheduled class (`TaskClass.schedule`) for the current tick, for the
  Cloud Scheduler job or App Engine cron entry `tq schedules` prints. The
  tick is the `X-CloudScheduler-ScheduleTime` header's (the latest tick at
  or before it), else the latest tick at or before now; the task is named
  after the class and the tick, so a retried call adds nothing new. 200
  with the tick; 404 no such scheduled class; 403 as for the sweep.

Push statuses (they tell Cloud Tasks what to do): 200 done; 202 the handler
raised `Fatal` (dropped); 204 `Ignore` (dropped); 429 `Retry`; 500
`Transient` or any other exception, or the token-signing certificates could
not be fetched (retried); 404 no such class or no handler (or no routing
prefix matches the path); 400 bad envelope or body, wrong payload type,
class mismatch between URL and body, or a body over `max_body_bytes`; 403
authentication failed. Every refusal is counted in the
`tq_pushes_rejected` metric by reason (`auth_<reason>` for authentication,
see `tq._auth.REASONS`).

Authentication is on by default: pushes need a Google-signed OIDC token for
the dispatcher's `push_as` (or one of `authorized_pushers`), with the
audience rule described in `tq._auth`. `auth=tq.asgi.INSECURE_NO_AUTH` turns
it off, for local development only, and says so loudly in the logs.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from tq import _metrics, _push, clock
from tq._asgiwire import (  # (the `as` ones are tq.pubsub's too)
    _ERROR_BODY,
    _ERROR_HEADERS,
    RESULT_HEADER,
    _respond_result,
)
from tq._asgiwire import _full_path as _full_path
from tq._asgiwire import _headers as _headers
from tq._asgiwire import _path_and_query as _path_and_query
from tq._asgiwire import _read_body as _read_body
from tq._asgiwire import _respond as _respond
from tq._auth import (
    AuthError,
    OIDCVerifier,
    authenticate_launcher,
    authenticate_push,
    request_audiences,
)
from tq._certs import GOOGLE_CERTS_URL
from tq._dispatcher import Dispatcher
from tq._errors import ConfigError
from tq._taskclass import DEFAULT_ROUTING_PREFIX

log = logging.getLogger("tq.asgi")

# Cloud Tasks caps a whole task at 1 MB, so a genuine body is never larger.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024 + 16 * 1024


class _InsecureNoAuth:
    def __init__(self, name: str = "tq.asgi.INSECURE_NO_AUTH") -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


INSECURE_NO_AUTH = _InsecureNoAuth()
"""Pass as `auth=` to accept pushes and sweep calls with no authentication.

For local development only (a dev server, the database queue on loopback):
anyone who can reach the endpoint can run any task. Logged as a warning,
once, when the endpoint serves its first request (building the app, e.g. in
a script that only adds tasks, says nothing).
"""

_IN_PROCESS_ONLY = _InsecureNoAuth("tq.asgi._IN_PROCESS_ONLY")
# For an endpoint no socket leads to, which only database-queue workers in the
# same process call (`tq serve --with-workers`): no authentication, no warning.

_BANNER = (
    "tq: the push endpoint is running WITHOUT AUTHENTICATION (auth=INSECURE_NO_AUTH): "
    "anyone who can reach it can run tasks. Never use this in production."
)


def app(
    dispatcher: Dispatcher,
    *,
    auth: OIDCVerifier | _InsecureNoAuth | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    authorized_launchers: Collection[str] = (),
    certs_url: str = GOOGLE_CERTS_URL,
) -> Starlette:
    """A Starlette app serving pushes and the sweep endpoint; mount it at "/internal/tasks".

    Args:
      dispatcher: whose task classes are served; its `push_as`,
        `authorized_pushers`, `push_audience` and `app_engine` are read on
        every request, so `configure()` after this call takes effect.
      auth: None (default) verifies OIDC tokens with a new `OIDCVerifier`
        fetching certificates from `certs_url`; an `OIDCVerifier` to share
        one (then leave `certs_url` alone); or `INSECURE_NO_AUTH`.
      max_body_bytes: larger bodies are refused with 400 without being read
        past the limit (default 1 MiB + 16 KiB: Cloud Tasks' task limit).
      authorized_launchers: service-account emails whose OIDC tokens may call
        the sweep endpoint (e.g. Cloud Scheduler's); none by default.
      certs_url: where Google's token-signing certificates are.

    Raises ConfigError on a bad option.
    """
    endpoint = _Endpoint(dispatcher, auth, max_body_bytes, authorized_launchers, certs_url)
    return _PushServingApp(endpoint)


def routes(
    dispatcher: Dispatcher,
    *,
    auth: OIDCVerifier | _InsecureNoAuth | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    authorized_launchers: Collection[str] = (),
    certs_url: str = GOOGLE_CERTS_URL,
) -> list[BaseRoute]:
    """The routes of `app()`, for an app of your own; same arguments.

    They are relative to the mount point, like the app's:
    `Mount("/internal/tasks", routes=tq.asgi.routes(dispatcher))`. They
    include a catch-all POST route, so give them a mount of their own.
    """
    endpoint = _Endpoint(dispatcher, auth, max_body_bytes, authorized_launchers, certs_url)
    return _routes(endpoint)


def _routes(endpoint: _Endpoint) -> list[BaseRoute]:
    return [
        Route("/c/sweep", endpoint.sweep, methods=["GET", "POST"]),
        Route("/c/cron/{class_id}", endpoint.cron, methods=["GET", "POST"]),
        Route("/{path:path}", _PushApp(endpoint), methods=["POST"]),
    ]


class _PushApp:
    # An object, not a method: Starlette's Route then calls it as a plain ASGI app.
    def __init__(self, endpoint: _Endpoint) -> None:
        self._push = endpoint.push

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._push(scope, receive, send)


class _PushServingApp(Starlette):
    """What `app()` returns: its routes, with pushes served without the routing.

    A push (a POST to any path under the mount but `/c/...`) is what the
    catch-all route would serve; taking it here skips Starlette's two
    exception middlewares and the router (about a third of a push's CPU in
    process). What the middlewares would do is done here too: an exception
    before the response started gets a 500 and is raised on. Anything else,
    and every request once middleware or exception handlers were added to
    the app, goes through Starlette as usual.
    """

    def __init__(self, endpoint: _Endpoint) -> None:
        super().__init__(routes=_routes(endpoint))
        self._endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and not self.user_middleware
            and not self.exception_handlers
        ):
            path = _route_path(scope)
            if path[:1] == "/" and not path.startswith("/c/"):
                await self._endpoint.push_guarded(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The path under the mount, as Starlette's router matches it (starlette._utils)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


class _Endpoint:
    def __init__(
        self,
        dispatcher: Dispatcher,
        auth: OIDCVerifier | _InsecureNoAuth | None,
        max_body_bytes: int,
        authorized_launchers: Collection[str],
        certs_url: str,
    ) -> None:
        if not isinstance(dispatcher, Dispatcher):
            raise ConfigError(f"tq.asgi.app takes a tq.Dispatcher, got {dispatcher!r}")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
            raise ConfigError(f"max_body_bytes must be an int, got {max_body_bytes!r}")
        if max_body_bytes <= 0:
            raise ConfigError(f"max_body_bytes must be positive, got {max_body_bytes}")
        if isinstance(authorized_launchers, str):
            raise ConfigError("authorized_launchers must be a collection of emails, not a string")
        if auth is None:
            auth = OIDCVerifier(certs_url)
        elif isinstance(auth, OIDCVerifier):
            if certs_url != GOOGLE_CERTS_URL:
                raise ConfigError("pass certs_url to the OIDCVerifier given as auth=, not here")
        elif not isinstance(auth, _InsecureNoAuth):
            raise ConfigError(
                f"auth must be None, a tq.asgi.OIDCVerifier or tq.asgi.INSECURE_NO_AUTH, "
                f"got {auth!r}"
            )
        self.dispatcher = dispatcher
        self.verifier = auth if isinstance(auth, OIDCVerifier) else None
        self.max_body_bytes = max_body_bytes
        self.launchers = frozenset(authorized_launchers)
        # Warnings wait for the first request: an app that is built but never
        # served (a script adding tasks, `tq schedules`) has nothing to warn of.
        self._warned = auth is _IN_PROCESS_ONLY
        self._prefixes: list[str] = []
        self._prefixes_of = -1  # how many classes _prefixes were worked out for

    async def push(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serves one push (a plain ASGI app: no Request or Response objects per push)."""
        status, outcome, result = await self._answer(scope, receive)
        if result is not None:
            await _respond_result(send, status, result)
        else:
            await _respond(send, status, outcome)

    async def push_guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`push`, doing what Starlette's ServerErrorMiddleware would around it."""
        try:
            status, outcome, result = await self._answer(scope, receive)
        except Exception:
            await send({"type": "http.response.start", "status": 500, "headers": _ERROR_HEADERS})
            await send({"type": "http.response.body", "body": _ERROR_BODY})
            raise
        if result is not None:
            await _respond_result(send, status, result)
        else:
            await _respond(send, status, outcome)

    async def _answer(self, scope: Scope, receive: Receive) -> tuple[int, str, bytes | None]:
        """(status, outcome, the handler's result or None) of one push."""
        headers = _headers(scope)
        path = _full_path(scope)
        class_id = self._class_id(path)
        length = headers.get("content-length", "")
        # isdigit() alone passes "²" (latin-1 \xb2), which int() refuses.
        if length.isascii() and length.isdigit() and int(length) > self.max_body_bytes:
            return _refuse(400, "body_too_large", f"Content-Length {length}", class_id, headers)
        if not self._warned:
            self._warn_once()
        if self.verifier is not None:
            dispatcher = self.dispatcher
            audiences = request_audiences(
                dispatcher.push_audience,
                headers.get("host", ""),
                _path_and_query(path, scope),
                scope.get("scheme", "https"),
            )
            try:
                await authenticate_push(self.verifier, dispatcher, headers, audiences)
            except AuthError as e:
                return _refuse(e.status, "auth_" + e.reason, e.detail, class_id, headers)
        if class_id is None:
            detail = f"no routing prefix matches {path!r}"
            return _refuse(404, "no_route", detail, class_id, headers)
        body = await _read_body(receive, self.max_body_bytes)
        if body is None:
            detail = f"body over {self.max_body_bytes} bytes"
            return _refuse(400, "body_too_large", detail, class_id, headers)
        result = await _push.handle_push(self.dispatcher, class_id, headers, body)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "tq: push %s -> %d %s", _where(class_id, headers), result.status, result.outcome
            )
        return result.status, result.outcome, result.result

    def _class_id(self, path: str) -> str | None:
        """The class ID in a push's path (the segment after the longest routing prefix)."""
        # Classes are only ever added: their count tells whether the prefixes changed.
        classes = self.dispatcher._classes
        if len(classes) != self._prefixes_of:
            prefixes = {c.routing_prefix for c in list(classes.values())}
            prefixes.add(DEFAULT_ROUTING_PREFIX)
            self._prefixes = sorted(prefixes, key=len, reverse=True)
            self._prefixes_of = len(classes)
        for prefix in self._prefixes:
            if path.startswith(prefix):
                class_id = path[len(prefix) :].split("/", 1)[0]
                return class_id or None
        return None

    async def _launcher_refusal(self, request: Request, what: str) -> Response | None:
        """None if the caller may launch sweeps and cron ticks, else the refusal."""
        scope = request.scope
        headers = _headers(scope)
        if not self._warned:
            self._warn_once()
        if self.verifier is None:
            return None
        audiences = request_audiences(
            self.dispatcher.push_audience,
            headers.get("host", ""),
            _path_and_query(_full_path(scope), scope),
            scope.get("scheme", "https"),
        )
        try:
            await authenticate_launcher(
                self.verifier, self.dispatcher, self.launchers, headers, audiences
            )
        except AuthError as e:
            if what == "sweep":
                _metrics.add("tq_sweeps_rejected", reason="auth_" + e.reason)
            else:
                _metrics.add("tq_cron_calls_rejected", reason="auth_" + e.reason)
            log.warning("tq: %s call refused (%d auth_%s): %s", what, e.status, e.reason, e)
            return PlainTextResponse(f"auth_{e.reason}\n", status_code=e.status)
        return None

    async def sweep(self, request: Request) -> Response:
        refused = await self._launcher_refusal(request, "sweep")
        if refused is not None:
            return refused
        try:
            await self.dispatcher.sweep_async()
        except ConfigError as e:
            log.error("tq: sweep endpoint called but the dispatcher cannot sweep: %s", e)
            return PlainTextResponse(f"cannot sweep: {e}\n", status_code=500)
        except Exception:
            log.exception("tq: sweep failed")
            return PlainTextResponse("sweep failed\n", status_code=500)
        return PlainTextResponse("swept\n")

    async def cron(self, request: Request) -> Response:
        refused = await self._launcher_refusal(request, "cron")
        if refused is not None:
            return refused
        class_id = request.path_params["class_id"]
        cls = self.dispatcher.task_class_by_id(class_id)
        if cls is None or cls.schedule is None:
            log.warning("tq: cron call for %r, which is no scheduled task class", class_id)
            return PlainTextResponse("no such scheduled class\n", status_code=404)
        at = _schedule_time(request.headers.get("x-cloudscheduler-scheduletime", ""))
        try:
            tick = cls.schedule.last_at_or_before(at or clock.now())
            if tick is None:
                return PlainTextResponse("no tick yet\n", status_code=404)
            await self.dispatcher.add_scheduled_task_async(class_id, tick)
        except Exception:
            log.exception("tq: cron call for %s failed", class_id)
            return PlainTextResponse("cron failed\n", status_code=500)
        return PlainTextResponse(f"added {tick.isoformat()}\n")

    def _warn_once(self) -> None:
        """What is wrong with how the endpoint is set up, said once, at its first request."""
        self._warned = True
        d = self.dispatcher
        if self.verifier is None:
            log.warning(_BANNER)
        elif not (d.push_as or d.authorized_pushers or d.app_engine):
            log.warning(
                "tq: the dispatcher has no push_as or authorized_pushers: the push endpoint "
                "refuses every push (403 auth_email_not_allowed) until one is configured"
            )


def _refuse(
    status: int, reason: str, detail: str, class_id: str | None, headers: Mapping[str, str]
) -> tuple[int, str, None]:
    _push.reject(status, reason, f"{detail} ({_where(class_id, headers)})")
    return status, reason, None


def _schedule_time(value: str) -> dt.datetime | None:
    """Cloud Scheduler's RFC 3339 schedule time, or None if absent or unreadable."""
    try:
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00")) if value else None
    except ValueError:
        return None
    return t if t is not None and t.tzinfo is not None else None


def _where(class_id: str | None, headers: Mapping[str, str]) -> str:
    task = headers.get("x-cloudtasks-taskname") or headers.get("x-appengine-taskname") or "?"
    queue = headers.get("x-cloudtasks-queuename") or headers.get("x-appengine-queuename") or "?"
    return f"class {class_id or '?'}, task {task}, queue {queue.rsplit('/', 1)[-1]}"


__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "GOOGLE_CERTS_URL",
    "INSECURE_NO_AUTH",
    "RESULT_HEADER",
    "OIDCVerifier",
    "app",
    "routes",
]
