"""The dashboard's ASGI app: routes, signing in, refusing, and running pages off the loop."""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from tq._auth import AuthError
from tq.dashboard import _actions, _outbox_pages, _pages
from tq.dashboard._access import (
    SESSION_COOKIE,
    Access,
    OpenAccess,
    User,
    _InsecureNoAuth,
)
from tq.dashboard._context import Ctx, Forbidden, NotFound
from tq.dashboard._html import join, layout, link, tag
from tq.dashboard._sources import Sources

if TYPE_CHECKING:
    from tq._dispatcher import Dispatcher
    from tq.admin import QueueAdmin
    from tq.txn import ReminderStore

log = logging.getLogger("tq.dashboard")
FLASH_COOKIE = "tq_dashboard_flash"

Page = Callable[[Ctx, Request], str]


def app(
    dispatcher: Dispatcher | None = None,
    *,
    access: Access | _InsecureNoAuth | None = None,
    queues: QueueAdmin | None = None,
    engine: Any = None,
    stores: Sequence[ReminderStore] | None = None,
    label: str = "",
) -> Starlette:
    """The dashboard as a Starlette app; mount it anywhere (`app.mount("/tq", ...)`).

    Args:
      dispatcher: decodes payloads with its classes' types, lists its cron
        schedules, and shows its in-process sweeper's last run.
      access: who may look and act (`Access`). None (the default) refuses
        every request; `INSECURE_NO_AUTH` lets anyone operate (dev only).
      queues: the task backend's admin (`tq.admin.DbQueueAdmin`,
        `tq.admin.CloudTasksAdmin`); or give `engine` for the database
        queue in that SQLAlchemy engine. Neither: no queue pages.
      stores: outbox stores to show (default: those registered with
        `tq.txn` at each request).
      label: a line shown on the overview (e.g. which database).
    """
    if queues is None and engine is not None:
        from tq.admin import DbQueueAdmin

        queues = DbQueueAdmin(engine)
    src = Sources(queues=queues, stores=stores, dispatcher=dispatcher, label=label)
    if isinstance(access, _InsecureNoAuth):
        log.warning("tq dashboard: running WITHOUT AUTHENTICATION (INSECURE_NO_AUTH)")
    guard = _Guard(access, src)

    routes = [
        Route("/", guard.page(lambda c, r: _pages.overview(c))),
        Route(
            "/queues/{queue}",
            guard.page(lambda c, r: _pages.queue(c, r.path_params["queue"], r.query_params)),
        ),
        Route(
            "/queues/{queue}/tasks/{name:path}",
            guard.page(lambda c, r: _pages.task(c, r.path_params["queue"], r.path_params["name"])),
        ),
        Route("/reminders", guard.page(lambda c, r: _outbox_pages.reminders(c, r.query_params))),
        Route(
            "/reminders/{store}/{id}",
            guard.page(
                lambda c, r: _outbox_pages.reminder(c, r.path_params["store"], r.path_params["id"])
            ),
        ),
        Route("/parked", guard.page(lambda c, r: _outbox_pages.parked(c, r.query_params))),
        Route("/schedules", guard.page(lambda c, r: _outbox_pages.schedules(c))),
        Route("/confirm/{action}", guard.confirm),
        Route("/act/{action}", guard.act, methods=["POST"]),
        Route("/login", guard.login, methods=["GET", "POST"]),
        Route("/logout", guard.logout, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=_NO_STORE)


_NO_STORE = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


def _message(
    request: Request, title: str, text: str, status: int, *, sign_in: bool = False
) -> Response:
    root = _root(request)
    body = [tag("p", text, class_="error")]
    if sign_in:
        body.append(tag("p", link(f"{root}/login", "Sign in")))
    return _html(layout(root, title, join(body)), status)


class _Guard:
    """Authenticates every request and hands pages a `Ctx` (in a worker thread)."""

    def __init__(self, access: Access | _InsecureNoAuth | None, src: Sources) -> None:
        self.insecure = isinstance(access, _InsecureNoAuth)
        self.access: Access | OpenAccess | None = (
            OpenAccess() if isinstance(access, _InsecureNoAuth) else access
        )
        self.src = src

    async def _user(self, request: Request) -> User | Response:
        if self.access is None:
            return _message(
                request,
                "Dashboard closed",
                "This dashboard is closed: its app was given no access "
                "configuration (tq.dashboard.Access). See docs/dashboard.md.",
                403,
            )
        try:
            return await self.access.authenticate(
                {k.lower(): v for k, v in request.headers.items()}, request.cookies
            )
        except AuthError as e:
            if e.reason == "certs_unavailable":
                return _message(request, "Try again", "Sign-in keys could not be fetched.", 503)
            log.info("tq dashboard: refused %s %s: %s", request.method, request.url.path, e)
            if request.method == "GET" and self.access.has_tokens and e.reason == "no_token":
                nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(
                    f"{_root(request)}/login?" + urllib.parse.urlencode({"next": nxt}), 303
                )
            return _message(
                request,
                "Not signed in",
                f"Refused: {e.detail}.",
                401,
                sign_in=self.access.has_tokens,
            )

    def _ctx(self, request: Request, user: User) -> Ctx:
        assert self.access is not None
        return Ctx(
            root=_root(request),
            user=user,
            csrf=self.access.csrf_token(user),
            src=self.src,
            flash=request.cookies.get(FLASH_COOKIE, ""),
            insecure=self.insecure,
        )

    def page(self, render: Page) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            user = await self._user(request)
            if isinstance(user, Response):
                return user
            ctx = self._ctx(request, user)
            try:
                text = await run_in_threadpool(render, ctx, request)
            except NotFound as e:
                return _message(request, "Not found", str(e), 404)
            except Forbidden as e:
                return _message(request, "Not allowed", str(e), 403)
            except _actions.Refused as e:
                return _message(request, "Bad request", str(e), 400)
            except ValueError as e:  # a filter or cursor the backend refuses
                return _message(request, "Bad request", str(e), 400)
            response = _html(text)
            if ctx.flash:
                response.delete_cookie(FLASH_COOKIE, path=ctx.root or "/")
            return response

        return endpoint

    async def confirm(self, request: Request) -> Response:
        response: Response = await self.page(self._confirm_page)(request)
        return response

    def _confirm_page(self, ctx: Ctx, request: Request) -> str:
        if not ctx.user.may_act:
            raise Forbidden("Your role is read-only.")
        r = _actions.Request.parse(
            request.path_params["action"],
            dict(request.query_params),
            request.query_params.getlist("ids"),
        )
        return _actions.confirm(ctx, r)

    async def act(self, request: Request) -> Response:
        user = await self._user(request)
        if isinstance(user, Response):
            return user
        if not user.may_act:
            log.warning(
                "tq dashboard: %s refused to %s (read-only)",
                user.describe(),
                request.path_params["action"],
            )
            return _message(request, "Not allowed", "Your role is read-only.", 403)
        origin = request.headers.get("origin")
        if (
            origin
            and origin != "null"
            and urllib.parse.urlsplit(origin).netloc != request.url.netloc
        ):
            return _message(request, "Not allowed", "Cross-site request refused.", 403)
        pairs = await _form(request)
        if pairs is None:
            return _message(request, "Bad request", "Expected a form.", 400)
        ctx = self._ctx(request, user)
        fields = dict(pairs)
        ids = [v for k, v in pairs if k == "ids"]
        assert self.access is not None
        if not self.access.check_csrf(user, fields.get("csrf", "")):
            return _message(
                request,
                "Not allowed",
                "Missing or stale form token: reload the page and try again.",
                403,
            )
        try:
            r = _actions.Request.parse(request.path_params["action"], fields, ids)
            message, back, ok = await run_in_threadpool(_actions.perform, ctx, r)
        except _actions.Refused as e:
            return _message(request, "Bad request", str(e), 400)
        except NotFound as e:
            return _message(request, "Not found", str(e), 404)
        response = RedirectResponse(ctx.root + back, 303)
        response.set_cookie(
            FLASH_COOKIE,
            ("" if ok else "Not done: ") + message,
            max_age=60,
            path=ctx.root or "/",
            httponly=True,
            samesite="strict",
        )
        return response

    async def login(self, request: Request) -> Response:
        root = _root(request)
        access = self.access
        if access is None or not access.has_tokens:
            return _message(
                request,
                "Sign in",
                "This dashboard takes no tokens: sign in "
                "through your identity provider (IAP) or send an ID token.",
                404,
            )
        nxt = request.query_params.get("next", "")
        token = request.query_params.get("token", "")
        if request.method == "POST":
            form = dict(await _form(request) or [])
            token, nxt = form.get("token", ""), form.get("next", "")
        if token:
            user = access.by_token(token)
            if user is None:
                log.warning("tq dashboard: sign-in with an unknown token refused")
                return _login_form(root, nxt, "Unknown token.", 401)
            log.warning("tq dashboard: %s signed in", user.describe())
            if not nxt.startswith(root + "/") or nxt.startswith("//"):
                nxt = root + "/"
            response = RedirectResponse(nxt, 303)
            response.set_cookie(
                SESSION_COOKIE,
                access.session_for(user),
                path=root or "/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
            return response
        return _login_form(root, nxt)

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse(f"{_root(request)}/login", 303)
        response.delete_cookie(SESSION_COOKIE, path=_root(request) or "/")
        return response


MAX_FORM_BYTES = 256 * 1024


async def _form(request: Request) -> list[tuple[str, str]] | None:
    """The fields of an urlencoded form (no multipart: the pages never send one)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        return urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return None


def _login_form(root: str, nxt: str, error: str = "", status: int = 200) -> Response:
    form = tag(
        "form",
        join(
            [
                tag(
                    "label",
                    join(
                        [
                            "Dashboard token",
                            tag(
                                "input",
                                type="password",
                                name="token",
                                id="token",
                                autocomplete="off",
                            ),
                        ]
                    ),
                ),
                tag("input", type="hidden", name="next", value=nxt),
                tag("button", "Sign in", type="submit", class_="go", id="sign-in"),
            ]
        ),
        method="post",
        action=f"{root}/login",
        class_="filters",
    )
    body = join([tag("p", error, class_="error") if error else "", form])
    return _html(layout(root, "Sign in", body), status)
