"""Pushing one leased task as an HTTP request, the way Cloud Tasks does.

The request carries the task's own method, URL, headers and body, plus the
headers Cloud Tasks adds (`X-CloudTasks-QueueName` with the short queue ID,
`-TaskName`, `-TaskRetryCount`, `-TaskExecutionCount`, `-TaskETA`, and on
retries `-TaskPreviousResponse` and `-TaskRetryReason`; App Engine requests
get the `X-AppEngine-*` twins), `User-Agent: Google-Cloud-Tasks`, and an
OIDC token when the task asks for one and a signer is configured. It goes
out over the network through httpx, or straight into an ASGI app in this
process (`_asgi_call`: no socket, no HTTP client).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email.utils
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

import httpx

from tq import clock
from tq.dbqueue import _asgi_call
from tq.dbqueue._lease import Leased

log = logging.getLogger("tq.dbqueue")

Signer: TypeAlias = Callable[[str, str], str] | Callable[[str, str], Awaitable[str]]
"""Mints an OIDC ID token: `signer(service_account_email, audience) -> token`."""

USER_AGENT = "Google-Cloud-Tasks"
# Headers the push sets itself; copies in the task's own headers are dropped.
_RESERVED = frozenset({"host", "content-length", "user-agent", "transfer-encoding", "connection"})
_SYSTEM_PREFIXES = ("x-cloudtasks-", "x-appengine-")


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    """What one push got: a status (None: no response) and why it failed."""

    status: int | None
    error: str | None = None
    retry_after_s: float | None = None
    body: bytes | None = None  # a result (2xx with x-tq-result) or an error response's body

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def push_headers(t: Leased, token: str | None) -> dict[str, str]:
    """The headers of the push of leased task `t`."""
    h = {
        k: v
        for k, v in t.headers.items()
        if k.lower() not in _RESERVED and not k.lower().startswith(_SYSTEM_PREFIXES)
    }
    system = {
        "QueueName": t.queue,
        "TaskName": t.name,
        "TaskRetryCount": str(t.attempts - 1),
        "TaskExecutionCount": str(t.executions),
        "TaskETA": f"{t.eta_us / 1e6:.6f}",
    }
    if t.attempts > 1:
        if t.last_status is not None:
            system["TaskPreviousResponse"] = str(t.last_status)
        if t.last_error:
            system["TaskRetryReason"] = t.last_error
    for k, v in system.items():
        h["X-CloudTasks-" + k] = v
        if t.app_engine:
            h["X-AppEngine-" + k] = v
    h["User-Agent"] = USER_AGENT
    if token:
        h["Authorization"] = f"Bearer {token}"
    return h


_own: dict[int, tuple[dict[str, str], list[tuple[bytes, bytes]]]] = {}


def _own_raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """The task's own headers that a push keeps, as ASGI has them; worked out once per
    headers dict (leased tasks with the same headers share theirs, see `_lease`)."""
    hit = _own.get(id(headers))
    if hit is not None and hit[0] is headers:
        return hit[1]
    raw = []
    for k, v in headers.items():
        low = k.lower()
        if low not in _RESERVED and not low.startswith(_SYSTEM_PREFIXES):
            raw.append((low.encode("latin-1"), str(v).encode("latin-1")))
    if len(_own) >= 512:
        _own.clear()
    _own[id(headers)] = (headers, raw)  # holding the dict keeps its id unique
    return raw


_UA = (b"user-agent", USER_AGENT.encode())


def push_raw_headers(t: Leased, token: str | None) -> list[tuple[bytes, bytes]]:
    """`push_headers` as ASGI has them (lowercase names, bytes), for a push into an app."""
    raw = list(_own_raw(t.headers))
    system = [
        (b"queuename", t.queue), (b"taskname", t.name),
        (b"taskretrycount", str(t.attempts - 1)), (b"taskexecutioncount", str(t.executions)),
        (b"tasketa", f"{t.eta_us / 1e6:.6f}"),
    ]  # fmt: skip
    if t.attempts > 1:
        if t.last_status is not None:
            system.append((b"taskpreviousresponse", str(t.last_status)))
        if t.last_error:
            system.append((b"taskretryreason", t.last_error))
    for k, v in system:
        value = v.encode("latin-1")
        raw.append((b"x-cloudtasks-" + k, value))
        if t.app_engine:
            raw.append((b"x-appengine-" + k, value))
    raw.append(_UA)
    if token:
        raw.append((b"authorization", f"Bearer {token}".encode("latin-1")))
    return raw


class Pusher:
    """Sends pushes: into an ASGI app in this process, or over HTTP with httpx.

    Args:
      app: an ASGI app to push into directly, without a socket or an HTTP
        client (the host of the task URL only fills the Host header); None
        pushes over the network to the task's URL.
      client: an httpx.AsyncClient to push with instead (it wins over `app`;
        the caller closes it).
      base_url: prefix of relative URIs (App Engine requests).
      signer: mints OIDC tokens for tasks that carry an `oidc_token`.
    """

    def __init__(
        self,
        *,
        app: Any = None,
        client: httpx.AsyncClient | None = None,
        base_url: str = "http://localhost",
        signer: Signer | None = None,
    ) -> None:
        self.app = app if client is None else None
        self._own_client = client is None and app is None
        if client is None and app is None:
            client = httpx.AsyncClient(
                follow_redirects=False,  # Cloud Tasks does not follow redirects
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
            )
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.signer = signer
        self._warned_unsigned = False
        self._deadlines = _Deadlines()

    async def aclose(self) -> None:
        if self._own_client and self.client is not None:
            await self.client.aclose()

    async def push(self, t: Leased, deadline_s: float) -> Attempt:
        """Pushes `t` once and waits up to `deadline_s` for the response."""
        url = t.url if "://" in t.url else self.base_url + t.url
        try:
            token = await self._token(t)
        except Exception as e:
            log.exception("tq.dbqueue: could not mint an OIDC token for %s/%s", t.queue, t.name)
            return Attempt(None, f"OIDC token: {e}")
        task = asyncio.current_task()
        assert task is not None  # a coroutine of asyncio's runs in a task
        deadlines = self._deadlines
        deadlines.add(task, deadline_s)
        try:
            if self.app is not None:
                status, resp_headers, resp_body = await self._call_app(t, url, token)
            else:
                status, resp_headers, resp_body = await self._send(
                    t.method, url, push_headers(t, token), t.body, deadline_s
                )
        except asyncio.CancelledError:
            if not deadlines.end(task):
                raise
            task.uncancel()
            return _past_deadline(deadline_s)
        except httpx.TimeoutException:
            deadlines.end(task)
            return _past_deadline(deadline_s)
        except httpx.HTTPError as e:
            deadlines.end(task)
            return Attempt(None, f"UNAVAILABLE: {type(e).__name__}: {e}")
        except BaseException:
            deadlines.end(task)
            raise
        if deadlines.end(task):
            # Past the deadline, but it answered before the cancellation reached it
            # (as with asyncio.timeout, the cancellation is withdrawn).
            task.uncancel()
        if 200 <= status < 300:
            return Attempt(status, body=resp_body)
        return Attempt(status, f"HTTP {status}", _retry_after_s(resp_headers), resp_body)

    async def _call_app(
        self, t: Leased, url: str, token: str | None
    ) -> tuple[int, Mapping[str, str], bytes | None]:
        try:
            return await _asgi_call.call_raw(
                self.app, t.method, url, push_raw_headers(t, token), t.body
            )
        except _asgi_call.AppError:
            # What a server answers when the app fails before responding.
            log.exception("tq.dbqueue: the app failed on a push to %s", url)
            return 500, {}, None

    async def _send(
        self, method: str, url: str, headers: dict[str, str], body: bytes, deadline_s: float
    ) -> tuple[int, Mapping[str, str], bytes | None]:
        assert self.client is not None
        resp = await self.client.request(
            method, url, headers=headers, content=body, timeout=httpx.Timeout(deadline_s)
        )
        status = resp.status_code
        kept = status >= 300 or _asgi_call.RESULT_HEADER in resp.headers
        return status, resp.headers, resp.content[: _asgi_call.MAX_BODY_KEPT] if kept else None

    async def _token(self, t: Leased) -> str | None:
        if not t.oidc_email:
            return None
        if self.signer is None:
            if not self._warned_unsigned:
                self._warned_unsigned = True
                log.warning(
                    "tq.dbqueue: tasks ask for OIDC tokens (as %s) but the worker has no "
                    "signer; pushing them without Authorization",
                    t.oidc_email,
                )
            return None
        audience = t.oidc_audience or t.url
        token = self.signer(t.oidc_email, audience)
        if inspect.isawaitable(token):
            token = await token
        return str(token)


def _past_deadline(deadline_s: float) -> Attempt:
    return Attempt(None, f"DEADLINE_EXCEEDED: no response within {deadline_s:g} s")


class _Deadlines:
    """Cancels the pushes still running at their deadline, with one timer for all of
    them (at the earliest deadline) where `asyncio.timeout` made and cancelled a
    timer per push (about 3.5 us, a tenth of a no-op push's CPU in process).

    `add(task, s)` when a push starts in `task`, `end(task)` when it ends: True
    when its deadline cancelled it (the caller then withdraws that cancellation
    with `task.uncancel()`, as `asyncio.timeout` does).
    """

    def __init__(self) -> None:
        self._due: dict[asyncio.Task[Any], float] = {}  # task -> the loop time of its deadline
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, task: asyncio.Task[Any], deadline_s: float) -> None:
        loop = task.get_loop()
        if loop is not self._loop:  # used from another event loop: start afresh there
            if self._timer is not None:
                self._timer.cancel()
            self._due.clear()
            self._expired.clear()
            self._timer, self._timer_at, self._loop = None, math.inf, loop
        at = loop.time() + deadline_s
        self._due[task] = at
        if at < self._timer_at:
            self._arm(at)

    def end(self, task: asyncio.Task[Any]) -> bool:
        if self._due.pop(task, None) is not None:
            return False
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _arm(self, at: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = self._loop.call_at(at, self._fire), at

    def _fire(self) -> None:
        assert self._loop is not None
        self._timer, self._timer_at = None, math.inf
        now = self._loop.time()
        later = math.inf
        for task, at in list(self._due.items()):
            if at <= now:
                del self._due[task]
                self._expired.add(task)
                task.cancel()
            elif at < later:
                later = at
        if later < math.inf:
            self._arm(later)


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    v = headers.get("retry-after")
    if not v:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - clock.now()).total_seconds())
