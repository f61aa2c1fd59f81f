"""Who may call the push and sweep endpoints: OIDC ID tokens signed by Google.

Cloud Tasks (and Cloud Scheduler) attach `Authorization: Bearer <ID token>`
to each request when the task names a service account (`push_as`). The
endpoint accepts a request when the token:

* is a well-formed RS256 JWT whose signature checks out against Google's
  certificates (fetched from `certs_url`, by default
  `https://www.googleapis.com/oauth2/v1/certs`);
* was issued by `https://accounts.google.com` or `accounts.google.com`;
* is within its validity (`iat` not in the future, `exp` not past), with a
  small allowance for clock skew (`clock_skew_s`, default 30 s);
* carries an accepted audience (below);
* has `email_verified: true` and an `email` the endpoint accepts: for pushes
  the dispatcher's `push_as` or one of its `authorized_pushers`, for the
  sweep endpoint one of `authorized_launchers`.

The audience rule (sender and receiver agree on it; a mismatch is the usual
cause of refused pushes):

* The sender (`tq._request`) sets the token audience to the dispatcher's
  `push_audience`, or else to `https://<target host>` (the class's
  `target_host` or the dispatcher's `default_target_host`).
* The receiver accepts exactly the dispatcher's `push_audience` when it is
  set. Otherwise it accepts `https://<Host header>` and also the full request
  URL (`https://<Host header><path>[?query]`, and the same URL with the
  request's own scheme if that differs): Cloud Tasks uses the task's URL as
  the audience when a task names a service account but no audience.
  So behind a proxy that rewrites the Host header, set `push_audience` on
  the dispatcher.

Certificates are fetched off the event loop and cached (see `tq._certs`).
A token whose verification succeeded is remembered (by its exact text, up to
`MAX_VERIFIED_TOKENS` of them), so the same token on later requests skips
the signature check while the certificates it was checked against are still
the ones in use and fresh; its claims (validity, audience, email) are
checked again on every request, so a remembered token past its `exp` is
refused all the same. Failed verifications are never remembered.
When none can be had the request fails with `certs_unavailable`, which the
endpoint answers with 500 so that Cloud Tasks retries it later (a 403 would
be retried too, but reads as the caller's fault).

On App Engine (`dispatcher.app_engine`), a push carrying
`X-AppEngine-QueueName` and a cron call carrying `X-Appengine-Cron: true` are
trusted without a token: App Engine strips these headers from requests that
come from outside. Anywhere else those headers grant nothing.

Every refusal is an `AuthError` with one of `REASONS`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from google.auth import crypt

from tq import clock
from tq._certs import (
    DEFAULT_REFETCH_INTERVAL_S,
    GOOGLE_CERTS_URL,
    Certs,
    CertsCache,
    CertsUnavailable,
)

if TYPE_CHECKING:
    from tq._dispatcher import Dispatcher

ISSUERS = frozenset({"https://accounts.google.com", "accounts.google.com"})
REASONS = (
    "no_token",
    "malformed",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "wrong_issuer",
    "wrong_audience",
    "unverified_email",
    "email_not_allowed",
    "certs_unavailable",
)

DEFAULT_CLOCK_SKEW_S = 30.0
MAX_TOKEN_CHARS = 16 * 1024
MAX_VERIFIED_TOKENS = 1024


class AuthError(Exception):
    """A request was refused; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    @property
    def status(self) -> int:
        """403, or 500 when certificates could not be had (so the caller retries)."""
        return 500 if self.reason == "certs_unavailable" else 403


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """Who made an accepted request: `via` is "oidc" (with `email`) or "app_engine"."""

    via: str
    email: str = ""


class OIDCVerifier:
    """Verifies Google-signed OIDC ID tokens (see the module docstring).

    Args:
      certs_url: where the `{key ID: PEM}` certificates are; default Google's.
      clock_skew_s: how far `iat` may be ahead and `exp` behind the clock.
      refetch_interval_s: the least time between two fetches caused by
        unknown key IDs.
      issuers, algorithm, require_verified_email: what a token must say
        (default Google's ID tokens: RS256, `ISSUERS`, `email_verified`).
        Identity-Aware Proxy's assertions are ES256 from
        `https://cloud.google.com/iap` with no `email_verified` claim (see
        `tq.dashboard`).

    One verifier (and its certificate cache) may serve any number of
    endpoints; `tq.asgi.app` makes one per app unless given one. It
    remembers tokens it verified (see the module docstring).
    """

    def __init__(
        self,
        certs_url: str = GOOGLE_CERTS_URL,
        *,
        clock_skew_s: float = DEFAULT_CLOCK_SKEW_S,
        refetch_interval_s: float = DEFAULT_REFETCH_INTERVAL_S,
        issuers: Collection[str] = ISSUERS,
        algorithm: str = "RS256",
        require_verified_email: bool = True,
    ) -> None:
        self.certs = CertsCache(certs_url, refetch_interval_s=refetch_interval_s)
        self.clock_skew_s = clock_skew_s
        self.issuers = frozenset(issuers)
        self.algorithm = algorithm
        self.require_verified_email = require_verified_email
        # Token text -> its claims, the certificates its signature was checked
        # against, and the last request its claims were accepted for.
        self._verified: dict[str, _Verified] = {}
        self._verified_lock = threading.Lock()

    async def verify(
        self,
        authorization: str | None,
        *,
        audiences: Collection[str],
        allowed_emails: Collection[str],
    ) -> Caller:
        """Checks an `Authorization` header value; raises AuthError if refused."""
        token = _bearer_token(authorization)
        known = self._verified.get(token)
        if known is not None:
            claims, certs = known.claims, known.certs
            if certs is self.certs.current and clock.current().monotonic() < certs.expires_at:
                accepted = known.accepted
                if (
                    accepted is not None
                    and accepted.audiences == audiences
                    and accepted.allowed == allowed_emails
                    and accepted.not_before <= clock.now().timestamp() <= accepted.not_after
                ):
                    return accepted.caller
                caller = self._check_claims(claims, audiences, allowed_emails)
                known.accepted = self._accepted(claims, audiences, allowed_emails, caller)
                return caller
            with self._verified_lock:
                self._verified.pop(token, None)
        header, claims, signed, signature = _split(token)
        alg = header.get("alg")
        if alg != self.algorithm:
            raise AuthError("bad_signature", f"unsupported signing algorithm {alg!r}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed", "token header has a non-string kid")
        try:
            certs, verifiers = await self.certs.lookup(kid)
        except CertsUnavailable as e:
            raise AuthError("certs_unavailable", str(e)) from None
        if not verifiers:
            raise AuthError("bad_signature", f"token signed with unknown key {kid!r}")
        if not any(_verifies(v, signed, signature) for v in verifiers):
            raise AuthError("bad_signature", "token signature does not verify")
        caller = self._check_claims(claims, audiences, allowed_emails)
        self._remember(token, claims, certs)
        return caller

    def _remember(self, token: str, claims: dict[str, Any], certs: Certs) -> None:
        if clock.current().monotonic() >= certs.expires_at:
            return  # stale certificates (a failed refetch): check again next time
        with self._verified_lock:
            verified = self._verified
            if token not in verified and len(verified) >= MAX_VERIFIED_TOKENS:
                del verified[next(iter(verified))]  # the oldest
            verified[token] = _Verified(claims, certs)

    def _accepted(
        self,
        claims: Mapping[str, Any],
        audiences: Collection[str],
        allowed: Collection[str],
        caller: Caller,
    ) -> _Accepted:
        """What `_check_claims` accepted, and the times between which it would again.

        Every claim check but the validity window depends only on the claims,
        the audiences and the accepted emails; the window is kept as bounds.
        """
        iat, exp = _number(claims.get("iat")), _number(claims.get("exp"))
        assert iat is not None
        assert exp is not None
        skew = self.clock_skew_s
        return _Accepted(audiences, allowed, iat - skew, exp + skew, caller)

    def _check_claims(
        self, claims: Mapping[str, Any], audiences: Collection[str], allowed: Collection[str]
    ) -> Caller:
        iss = claims.get("iss")
        if iss not in self.issuers:
            raise AuthError("wrong_issuer", f"token issued by {iss!r}, not {sorted(self.issuers)}")
        iat, exp = _number(claims.get("iat")), _number(claims.get("exp"))
        if iat is None or exp is None:
            raise AuthError("malformed", "token lacks numeric iat and exp claims")
        now = clock.now().timestamp()
        if now > exp + self.clock_skew_s:
            raise AuthError("expired", f"token expired {now - exp:.0f} s ago")
        if now < iat - self.clock_skew_s:
            raise AuthError("not_yet_valid", f"token issued {iat - now:.0f} s in the future")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and a in audiences for a in auds):
            raise AuthError(
                "wrong_audience", f"token audience {aud!r}, expected one of {sorted(audiences)}"
            )
        if self.require_verified_email and claims.get("email_verified") not in (True, "true"):
            raise AuthError("unverified_email", "token's email is not verified")
        email = claims.get("email")
        if not isinstance(email, str) or email not in allowed:
            raise AuthError(
                "email_not_allowed",
                f"token is for {email!r}, accepted: {sorted(allowed) or 'nobody'}",
            )
        return Caller("oidc", email)


@dataclasses.dataclass(frozen=True, slots=True)
class _Accepted:
    """A remembered token's claims accepted for these audiences and emails, within
    [not_before, not_after] (its iat and exp, widened by the clock skew allowed)."""

    audiences: Collection[str]
    allowed: Collection[str]
    not_before: float
    not_after: float
    caller: Caller


@dataclasses.dataclass(slots=True)
class _Verified:
    """A token whose signature checked out against `certs`."""

    claims: dict[str, Any]
    certs: Certs
    accepted: _Accepted | None = None


def _bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("no_token", "no Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("no_token", "Authorization header holds no bearer token")
    return token.strip()


def _split(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """(header, claims, signed part, signature) of a JWT, unverified."""
    if len(token) > MAX_TOKEN_CHARS:
        raise AuthError("malformed", f"token longer than {MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthError("malformed", "token is not a JWT (header.claims.signature)")
    try:
        header = json.loads(_b64decode(parts[0]))
        claims = json.loads(_b64decode(parts[1]))
        signature = _b64decode(parts[2])
        signed = f"{parts[0]}.{parts[1]}".encode("ascii")
    except (ValueError, UnicodeError, RecursionError) as e:
        raise AuthError("malformed", f"token does not decode: {e}") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AuthError("malformed", "token header or claims are not JSON objects")
    return header, claims, signed, signature


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _number(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _verifies(verifier: crypt.Verifier, signed: bytes, signature: bytes) -> bool:
    return bool(verifier.verify(signed, signature))  # type: ignore[no-untyped-call]


def request_audiences(
    push_audience: str | None, host: str, path_and_query: str, scheme: str = "https"
) -> tuple[str, ...]:
    """The audiences a request may carry (the receiver's half of the audience rule)."""
    if push_audience:
        return (push_audience,)
    if not host:
        return ()
    auds = [f"https://{host}", f"https://{host}{path_and_query}"]
    if scheme != "https":
        auds.append(f"{scheme}://{host}{path_and_query}")
    return tuple(auds)


def pushers(dispatcher: Dispatcher) -> frozenset[str]:
    """The emails whose tokens the push endpoint accepts."""
    key = (dispatcher.push_as, dispatcher.authorized_pushers)
    cached = _pushers.get(id(dispatcher))
    if cached is not None and cached[0] == key:
        return cached[1]
    emails = set(dispatcher.authorized_pushers)
    if dispatcher.push_as:
        emails.add(dispatcher.push_as)
    found = frozenset(emails)
    if len(_pushers) >= 64:
        _pushers.clear()
    _pushers[id(dispatcher)] = (key, found)
    return found


# id(dispatcher) -> ((push_as, authorized_pushers) it was worked out from, the emails):
# worked out again when either changes (configure()), so it never goes stale.
_pushers: dict[int, tuple[tuple[str | None, tuple[str, ...]], frozenset[str]]] = {}


async def authenticate_push(
    verifier: OIDCVerifier,
    dispatcher: Dispatcher,
    headers: Mapping[str, str],
    audiences: Collection[str],
) -> Caller:
    """Accepts a push (lowercase `headers`) or raises AuthError."""
    if dispatcher.app_engine and headers.get("x-appengine-queuename"):
        return Caller("app_engine")
    return await verifier.verify(
        headers.get("authorization"), audiences=audiences, allowed_emails=pushers(dispatcher)
    )


async def authenticate_launcher(
    verifier: OIDCVerifier,
    dispatcher: Dispatcher,
    launchers: Collection[str],
    headers: Mapping[str, str],
    audiences: Collection[str],
) -> Caller:
    """Accepts a call of the sweep endpoint (lowercase `headers`) or raises AuthError."""
    if dispatcher.app_engine and headers.get("x-appengine-cron", "").lower() == "true":
        return Caller("app_engine")
    return await verifier.verify(
        headers.get("authorization"), audiences=audiences, allowed_emails=launchers
    )
