"""A local stand-in for Google's OIDC token issuer, for tests of the push endpoint.

    with LocalIssuer() as issuer:
        app = tq.asgi.app(disp, auth=tq.asgi.OIDCVerifier(issuer.certs_url))
        token = issuer.mint(email="tq@p.iam.gserviceaccount.com",
                            audience="https://app.example.com")
        headers = {"Authorization": f"Bearer {token}"}

`LocalIssuer` makes an RSA key and a self-signed certificate, serves
`{key ID: certificate PEM}` (the format of
`https://www.googleapis.com/oauth2/v1/certs`) from an HTTP server on
127.0.0.1 in a thread, and mints ID tokens shaped like the ones Cloud Tasks
sends. Needs the `cryptography` package.

`SigningKey.generate_ec()` makes an ES256 key served as a public-key PEM,
the way Identity-Aware Proxy publishes its keys: with it, a `LocalIssuer`
mints IAP-like assertions (`mint(..., iss=IAP issuer, email_verified=None)`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import http.server
import json
import secrets
import threading
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from tq import clock

GOOGLE_ISSUER = "https://accounts.google.com"


@dataclasses.dataclass(frozen=True)
class SigningKey:
    """An RSA key with its key ID and self-signed x509 certificate (PEM)."""

    kid: str
    private_pem: str
    cert_pem: str
    signer: Any = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def generate(cls, kid: str | None = None) -> SigningKey:
        """A fresh 2048-bit key; `kid` defaults to 40 random hex digits (like Google's)."""
        kid = kid or secrets.token_hex(20)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, kid)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .sign(key, hashes.SHA256())
        )
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        # A signer made from the key object: parsing the PEM back costs ~70 ms.
        signer = crypt.RSASigner(key, key_id=kid)  # type: ignore[no-untyped-call]
        return cls(kid=kid, private_pem=private_pem, cert_pem=cert_pem, signer=signer)

    @classmethod
    def generate_ec(cls, kid: str | None = None) -> SigningKey:
        """A fresh P-256 key (ES256); `cert_pem` holds its public key PEM (as IAP serves)."""
        kid = kid or secrets.token_hex(3)
        key = ec.generate_private_key(ec.SECP256R1())
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        signer = crypt.ES256Signer(key, key_id=kid)
        return cls(kid=kid, private_pem=private_pem, cert_pem=public_pem, signer=signer)

    def sign(self, claims: dict[str, Any]) -> str:
        """A JWT (RS256 or ES256, with this key's `kid` in its header) of `claims`."""
        signer = self.signer or crypt.RSASigner.from_string(  # type: ignore[no-untyped-call]
            self.private_pem, key_id=self.kid
        )
        token: bytes = jwt.encode(signer, claims)  # type: ignore[no-untyped-call]
        return token.decode("ascii")


class LocalIssuer:
    """Issues Google-like OIDC ID tokens and serves their certificates on loopback.

    Use as a context manager: the certificate server runs inside the `with`
    block. `key` is the first signing key (default: a new one; generating
    one takes a few tens of milliseconds, so tests may share one).

    Attributes a test may change at any time:

    * `max_age_s`: the `Cache-Control: max-age` of the certificates response
      (None: no Cache-Control header). Default 3600.
    * `unavailable`: when true the server answers 503 (to test fetch failures).

    `fetches` counts the certificate requests served (including 503s).
    """

    def __init__(self, *, key: SigningKey | None = None, max_age_s: int | None = 3600) -> None:
        self.key = key or SigningKey.generate()
        self.max_age_s = max_age_s
        self.unavailable = False
        self._served: dict[str, str] = {self.key.kid: self.key.cert_pem}
        self._lock = threading.Lock()
        self._fetches = 0
        self._server: _CertsServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LocalIssuer:
        server = _CertsServer(("127.0.0.1", 0), _CertsHandler)
        server.issuer = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="tq-local-issuer", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stops the certificate server (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    @property
    def certs_url(self) -> str:
        """The URL serving `{key ID: certificate PEM}`; give it to `OIDCVerifier`."""
        if self._server is None:
            raise RuntimeError("LocalIssuer is not started: use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/oauth2/v1/certs"

    @property
    def fetches(self) -> int:
        """How many certificate requests the server has answered."""
        with self._lock:
            return self._fetches

    def certs(self) -> dict[str, str]:
        """The served `{key ID: certificate PEM}`."""
        with self._lock:
            return dict(self._served)

    def rotate(self, *, keep_old: bool = True) -> SigningKey:
        """Makes a new signing key, served from now on; returns it.

        Tokens are signed with the new key afterwards. With `keep_old=False`
        the previous keys are no longer served.
        """
        key = SigningKey.generate()
        with self._lock:
            if not keep_old:
                self._served.clear()
            self._served[key.kid] = key.cert_pem
            self.key = key
        return key

    def mint(
        self,
        *,
        email: str | None,
        audience: str | None,
        key: SigningKey | None = None,
        expired: bool = False,
        issued_at: dt.datetime | None = None,
        lifetime_s: int = 3600,
        email_verified: bool = True,
        **claims: Any,
    ) -> str:
        """An ID token for `email` with audience `audience`, as Google would sign it.

        Claims: iss (Google's), aud, azp, sub, email, email_verified, iat
        (`issued_at`, default `tq.clock.now()`, so a fake clock applies), exp
        (iat + `lifetime_s`). `expired=True` issues it two lifetimes ago.
        None for `email` or `audience` leaves that claim out. `key` signs
        instead of the issuer's (e.g. `SigningKey.generate()`, a key the
        issuer does not serve). Extra keyword arguments override claims; a
        value of None removes the claim.
        """
        iat = issued_at or clock.now()
        if expired:
            iat -= dt.timedelta(seconds=2 * lifetime_s)
        sub = str(int(hashlib.sha256(str(email).encode()).hexdigest()[:15], 16))
        payload: dict[str, Any] = {
            "iss": GOOGLE_ISSUER,
            "aud": audience,
            "azp": sub,
            "sub": sub,
            "email": email,
            "email_verified": email_verified,
            "iat": int(iat.timestamp()),
            "exp": int(iat.timestamp()) + lifetime_s,
        }
        payload = {k: v for k, v in payload.items() if v is not None}
        for name, value in claims.items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        return (key or self.key).sign(payload)

    def bearer(self, **mint_args: Any) -> str:
        """`"Bearer " + mint(**mint_args)`: an Authorization header value."""
        return "Bearer " + self.mint(**mint_args)

    def _count_fetch(self) -> None:
        with self._lock:
            self._fetches += 1


class _CertsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    issuer: LocalIssuer


class _CertsHandler(http.server.BaseHTTPRequestHandler):
    server: _CertsServer

    def do_GET(self) -> None:
        issuer = self.server.issuer
        issuer._count_fetch()
        if issuer.unavailable:
            self.send_error(503, "certificates unavailable (LocalIssuer.unavailable)")
            return
        body = json.dumps(issuer.certs()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        if issuer.max_age_s is not None:
            self.send_header("Cache-Control", f"public, max-age={issuer.max_age_s}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests need no access log


__all__ = ["GOOGLE_ISSUER", "LocalIssuer", "SigningKey"]
