"""Who may look at the dashboard and who may act: roles, logins, sessions, CSRF tokens.

Closed unless configured: with no `Access` (and no `INSECURE_NO_AUTH`),
every request is refused and no data is shown. An `Access` names who is a
**viewer** (sees every page, acts on nothing) and who is an **operator**
(also pauses, purges, deletes, runs, replays and drops):

* **Tokens**, for local runs and scripts: `operator_tokens` and
  `viewer_tokens`. A browser signs in once at `<mount>/login` (or follows
  `<mount>/login?token=...`, which `tq dashboard` prints); scripts send
  `Authorization: Bearer <token>`.
* **Google identities**: with `audience` set, `Authorization: Bearer <Google
  ID token>` is verified by tq's `OIDCVerifier` (as the push endpoint's
  tokens are) and the token's verified email must be among `operators` or
  `viewers`.
* **Identity-Aware Proxy**: with `iap_audience` set (IAP's
  `/projects/NUMBER/global/backendServices/ID` or
  `/projects/NUMBER/apps/PROJECT`), the `X-Goog-IAP-JWT-Assertion` header
  IAP adds to every request is verified (ES256, IAP's keys) and its email
  mapped to a role the same way.

A browser's sign-in is kept in an HttpOnly, SameSite=Strict cookie signed
with `session_secret` (random per process unless given: give one to share
sessions between replicas). Every action is a POST carrying a CSRF token
bound to the signed-in user, and a cross-site `Origin` is refused.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import hmac
import secrets
from collections.abc import Collection, Mapping

from tq import clock
from tq._auth import AuthError, OIDCVerifier

SESSION_COOKIE = "tq_dashboard"
DEFAULT_SESSION_TTL_S = 12 * 3600.0


class Role(enum.IntEnum):
    """What a user may do: a viewer looks, an operator also acts."""

    VIEWER = 1
    OPERATOR = 2


@dataclasses.dataclass(frozen=True, slots=True)
class User:
    """A signed-in user: `name` (an email, or "token …abcd"), `role`, `via` (how)."""

    name: str
    role: Role
    via: str

    @property
    def may_act(self) -> bool:
        return self.role >= Role.OPERATOR

    def describe(self) -> str:
        return f"{self.name} ({self.role.name.lower()}, {self.via})"


class _InsecureNoAuth:
    def __repr__(self) -> str:
        return "tq.dashboard.INSECURE_NO_AUTH"


INSECURE_NO_AUTH = _InsecureNoAuth()
"""Pass as `access=` to let anyone who reaches the dashboard operate it.

For a dev server on loopback only (`tq dev`, the demo); every page says so.
"""

ANONYMOUS = User("anyone (no authentication)", Role.OPERATOR, "insecure")


class Access:
    """Who may look and act (see the module docstring).

    Args:
      operator_tokens, viewer_tokens: shared secrets for the two roles.
      operators, viewers: emails of Google identities (OIDC or IAP).
      audience: the audience Google ID tokens must carry (turns on OIDC).
      iap_audience: IAP's expected audience (turns on IAP assertions).
      verifier: the OIDCVerifier for ID tokens (default: one of its own,
        Google's certificates); iap_verifier likewise for IAP assertions.
      session_secret: key signing session cookies and CSRF tokens.
      session_ttl_s: how long a browser sign-in lasts (12 hours).

    Raises ValueError when nothing would let anyone in, or a token or email
    is given two roles.
    """

    def __init__(
        self,
        *,
        operator_tokens: Collection[str] = (),
        viewer_tokens: Collection[str] = (),
        operators: Collection[str] = (),
        viewers: Collection[str] = (),
        audience: str | None = None,
        iap_audience: str | None = None,
        verifier: OIDCVerifier | None = None,
        iap_verifier: OIDCVerifier | None = None,
        session_secret: bytes | None = None,
        session_ttl_s: float = DEFAULT_SESSION_TTL_S,
    ) -> None:
        self.tokens: dict[str, Role] = {}
        for tokens, role in ((viewer_tokens, Role.VIEWER), (operator_tokens, Role.OPERATOR)):
            for t in tokens:
                if len(t) < 8:
                    raise ValueError("dashboard tokens must be at least 8 characters")
                if t in self.tokens:
                    raise ValueError("a dashboard token cannot be both viewer and operator")
                self.tokens[t] = role
        self.emails: dict[str, Role] = dict.fromkeys(viewers, Role.VIEWER)
        for e in operators:
            if e in self.emails:
                raise ValueError(f"{e} cannot be both viewer and operator")
            self.emails[e] = Role.OPERATOR
        if self.emails and not (audience or iap_audience):
            raise ValueError("emails need audience (Google ID tokens) or iap_audience (IAP)")
        if not self.tokens and not self.emails:
            raise ValueError("Access lets nobody in: give tokens, or emails with an audience")
        self.audience = audience
        self.iap_audience = iap_audience
        self.verifier = verifier or (OIDCVerifier() if audience else None)
        self.iap_verifier = iap_verifier
        if iap_audience and iap_verifier is None:
            from tq.dashboard._iap import iap_verifier as make_iap_verifier

            self.iap_verifier = make_iap_verifier()
        self.secret = session_secret or secrets.token_bytes(32)
        self.session_ttl_s = session_ttl_s

    @property
    def has_tokens(self) -> bool:
        return bool(self.tokens)

    def by_token(self, token: str) -> User | None:
        """The user a shared token signs in (compared in constant time)."""
        for known, role in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return User(f"token …{known[-4:]}", role, "token")
        return None

    async def authenticate(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> User:
        """The user a request comes from (lowercase `headers`); AuthError if none."""
        iap = headers.get("x-goog-iap-jwt-assertion")
        if iap and self.iap_audience and self.iap_verifier is not None:
            caller = await self.iap_verifier.verify(
                f"Bearer {iap}", audiences=(self.iap_audience,), allowed_emails=self.emails
            )
            return User(caller.email, self.emails[caller.email], "iap")
        authorization = headers.get("authorization", "")
        scheme, _, bearer = authorization.partition(" ")
        if scheme.lower() == "bearer" and bearer.strip():
            user = self.by_token(bearer.strip())
            if user is not None:
                return user
            if self.audience and self.verifier is not None:
                caller = await self.verifier.verify(
                    authorization, audiences=(self.audience,), allowed_emails=self.emails
                )
                return User(caller.email, self.emails[caller.email], "oidc")
            raise AuthError("malformed", "unknown dashboard token")
        session = cookies.get(SESSION_COOKIE)
        if session:
            user = self.read_session(session)
            if user is not None:
                return user
        raise AuthError("no_token", "not signed in")

    # Sessions and CSRF tokens.

    def _sign(self, text: str) -> str:
        mac = hmac.new(self.secret, text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def session_for(self, user: User) -> str:
        """A cookie value naming `user` until the session's end."""
        expires = int(clock.now().timestamp() + self.session_ttl_s)
        body = base64.urlsafe_b64encode(
            f"{user.name}\n{int(user.role)}\n{user.via}\n{expires}".encode()
        ).decode()
        return f"{body}.{self._sign(body)}"

    def read_session(self, value: str) -> User | None:
        """The user of a session cookie, or None if forged, malformed or expired."""
        body, _, mac = value.partition(".")
        if not hmac.compare_digest(self._sign(body), mac):
            return None
        try:
            name, role, via, expires = base64.urlsafe_b64decode(body.encode()).decode().split("\n")
            if int(expires) < clock.now().timestamp():
                return None
            return User(name, Role(int(role)), via)
        except ValueError:
            return None

    def csrf_token(self, user: User) -> str:
        """The token every action form of `user` carries."""
        return self._sign(f"csrf\n{user.name}\n{user.via}")

    def check_csrf(self, user: User, token: str) -> bool:
        return hmac.compare_digest(self.csrf_token(user), token)


class OpenAccess:
    """`INSECURE_NO_AUTH` as an `Access`: everyone is an operator; CSRF still checked."""

    has_tokens = False

    def __init__(self) -> None:
        self.secret = secrets.token_bytes(32)

    async def authenticate(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> User:
        return ANONYMOUS

    def by_token(self, token: str) -> User | None:
        return None

    def session_for(self, user: User) -> str:
        return ""

    def csrf_token(self, user: User) -> str:
        mac = hmac.new(self.secret, b"csrf-anonymous", hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def check_csrf(self, user: User, token: str) -> bool:
        return hmac.compare_digest(self.csrf_token(user), token)
