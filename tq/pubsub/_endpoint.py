"""The push-subscription endpoint: an ASGI app receiving what Pub/Sub pushes.

Mount it where the push subscriptions point:

    app.mount("/internal/pubsub", tq.pubsub.app(dispatcher))

It answers `POST <mount>/<anything>` (e.g. one path per subscription, for
the logs) in Pub/Sub's wrapped push format, runs the handler of the
message's class (see `tq.pubsub._message` for ack and nack), and answers
200, 202 or 204 to ack, or 400, 404, 429 or 500 to nack (Pub/Sub then
delivers again with the subscription's backoff, and moves the message to
its dead-letter topic after the policy's attempts). 403 when the OIDC token
is refused (nacked too: a misconfigured push is retried, not lost).

Authentication is tq's OIDC verifier (`tq.asgi.OIDCVerifier`): the token
must be Google-signed for one of `authorized_pushers` (the push
subscriptions' service accounts; default the dispatcher's `push_as` and
`authorized_pushers`), with the audience rule of `tq._auth` (the
subscription's `push_config.oidc_token.audience`, which defaults to the
push URL). `auth=tq.asgi.INSECURE_NO_AUTH` turns it off, for local runs only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from tq import _push
from tq._auth import AuthError, OIDCVerifier, pushers, request_audiences
from tq._certs import GOOGLE_CERTS_URL
from tq._dispatcher import Dispatcher
from tq._errors import ConfigError
from tq.asgi import (
    _BANNER,
    INSECURE_NO_AUTH,
    _full_path,
    _headers,
    _InsecureNoAuth,
    _path_and_query,
    _read_body,
    _respond,
)
from tq.pubsub._message import BadPushBody, Received, handle, parse_push_body

log = logging.getLogger("tq.pubsub")

# Pub/Sub takes messages up to 10 MB; base64 and the JSON wrapper add a third.
DEFAULT_MAX_BODY_BYTES = 14 * 1024 * 1024


def app(
    dispatcher: Dispatcher,
    *,
    auth: OIDCVerifier | _InsecureNoAuth | None = None,
    authorized_pushers: Collection[str] | None = None,
    audience: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    certs_url: str = GOOGLE_CERTS_URL,
) -> Starlette:
    """A Starlette app receiving Pub/Sub pushes for `dispatcher`'s classes.

    Args:
      auth: None (default) verifies OIDC tokens with a new `OIDCVerifier`
        on `certs_url`; an `OIDCVerifier` to share one; or
        `tq.asgi.INSECURE_NO_AUTH`.
      authorized_pushers: the service accounts whose tokens are accepted
        (those of the push subscriptions); default: the dispatcher's
        `push_as` and `authorized_pushers`, read on every request.
      audience: the one token audience accepted; default: the dispatcher's
        `push_audience`, else `https://<Host>` or the request's URL.
      max_body_bytes: larger bodies are refused (400) unread (default 14 MiB).
    """
    return Starlette(
        routes=routes(
            dispatcher,
            auth=auth,
            authorized_pushers=authorized_pushers,
            audience=audience,
            max_body_bytes=max_body_bytes,
            certs_url=certs_url,
        )
    )


def routes(
    dispatcher: Dispatcher,
    *,
    auth: OIDCVerifier | _InsecureNoAuth | None = None,
    authorized_pushers: Collection[str] | None = None,
    audience: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    certs_url: str = GOOGLE_CERTS_URL,
) -> list[BaseRoute]:
    """The routes of `app()`, relative to its mount; same arguments."""
    endpoint = _PushEndpoint(
        dispatcher, auth, authorized_pushers, audience, max_body_bytes, certs_url
    )
    return [Route("/{path:path}", endpoint, methods=["POST"])]


class _PushEndpoint:
    def __init__(
        self,
        dispatcher: Dispatcher,
        auth: OIDCVerifier | _InsecureNoAuth | None,
        authorized_pushers: Collection[str] | None,
        audience: str | None,
        max_body_bytes: int,
        certs_url: str,
    ) -> None:
        if not isinstance(dispatcher, Dispatcher):
            raise ConfigError(f"tq.pubsub.app takes a tq.Dispatcher, got {dispatcher!r}")
        if isinstance(authorized_pushers, str):
            raise ConfigError("authorized_pushers must be a collection of emails, not a string")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
            raise ConfigError(f"max_body_bytes must be an int, got {max_body_bytes!r}")
        if max_body_bytes <= 0:
            raise ConfigError(f"max_body_bytes must be positive, got {max_body_bytes}")
        if auth is None:
            auth = OIDCVerifier(certs_url)
        elif not isinstance(auth, OIDCVerifier) and auth is not INSECURE_NO_AUTH:
            raise ConfigError(
                f"auth must be None, a tq.asgi.OIDCVerifier or tq.asgi.INSECURE_NO_AUTH, "
                f"got {auth!r}"
            )
        self.dispatcher = dispatcher
        self.verifier = auth if isinstance(auth, OIDCVerifier) else None
        self.emails = None if authorized_pushers is None else frozenset(authorized_pushers)
        self.audience = audience
        self.max_body_bytes = max_body_bytes
        if self.verifier is None:
            log.warning(_BANNER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        path = _full_path(scope)
        length = headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > self.max_body_bytes:
            await _refuse(send, 400, "body_too_large", f"Content-Length {length} ({path})")
            return
        if self.verifier is not None:
            d = self.dispatcher
            audiences = request_audiences(
                self.audience or d.push_audience,
                headers.get("host", ""),
                _path_and_query(path, scope),
                scope.get("scheme", "https"),
            )
            allowed = self.emails if self.emails is not None else pushers(d)
            try:
                await self.verifier.verify(
                    headers.get("authorization"), audiences=audiences, allowed_emails=allowed
                )
            except AuthError as e:
                await _refuse(send, e.status, "auth_" + e.reason, f"{e.detail} ({path})")
                return
        body = await _read_body(receive, self.max_body_bytes)
        if body is None:
            await _refuse(send, 400, "body_too_large", f"body over {self.max_body_bytes} bytes")
            return
        try:
            msg = parse_push_body(body)
        except BadPushBody as e:
            await _refuse(send, 400, "bad_push_body", f"{e} ({path})")
            return
        if msg.delivery_attempt is None:
            msg = _with_queue_attempt(msg, headers)
        handled = await handle(self.dispatcher, msg)
        await _respond(send, handled.status, handled.result.outcome)


def _with_queue_attempt(msg: Received, headers: dict[str, str]) -> Received:
    """`msg` with the delivery attempt the database queue's worker sends as a header.

    Its pushes carry `X-CloudTasks-TaskRetryCount`; Pub/Sub's never do (it
    says `deliveryAttempt` in the body, where it says it at all).
    """
    retries = headers.get("x-cloudtasks-taskretrycount", "")
    if retries.isascii() and retries.isdigit() and len(retries) < 10:
        return dataclasses.replace(msg, delivery_attempt=int(retries) + 1)
    return msg


async def _refuse(send: Send, status: int, reason: str, detail: str) -> None:
    _push.reject(status, reason, detail)
    await _respond(send, status, reason)
