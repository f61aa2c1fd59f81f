"""Google's token-signing certificates, fetched and cached for OIDC verification.

The certificates document is `{key ID: PEM}` JSON (Google's is at
`GOOGLE_CERTS_URL`). `CertsCache` keeps it:

* for the response's `Cache-Control: max-age` less its `Age`, at least
  `MIN_CERTS_TTL_S` and at most `MAX_CERTS_TTL_S`, or `DEFAULT_CERTS_TTL_S`
  without a max-age;
* a key ID not in the cache (Google rotates its keys) makes one refetch, at
  most once per `refetch_interval_s`;
* when a refetch fails the previous certificates stay in use for up to
  `MAX_STALE_S` past their expiry, and no fetch is tried again for
  `FAILED_FETCH_BACKOFF_S`; with no usable certificates at all,
  `verifiers_for` raises `CertsUnavailable`.

Fetches run in a worker thread (`asyncio.to_thread`), never on the event
loop, and concurrent requests share one fetch. Time comes from `tq.clock`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping

from google.auth import crypt

from tq import clock
from tq._errors import ConfigError

log = logging.getLogger("tq.auth")

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
DEFAULT_CERTS_TTL_S = 300.0
MIN_CERTS_TTL_S = 60.0
MAX_CERTS_TTL_S = 24 * 3600.0
MAX_STALE_S = 3600.0
DEFAULT_REFETCH_INTERVAL_S = 30.0
FAILED_FETCH_BACKOFF_S = 5.0
MAX_CERTS_BYTES = 1024 * 1024
_MAX_AGE_RE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)")


class CertsUnavailable(Exception):
    """No usable certificates: never fetched, or stale beyond `MAX_STALE_S`."""


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Certs:
    """One fetched certificates document: verifiers by key ID, fresh until `expires_at`."""

    verifiers: Mapping[str, crypt.Verifier]
    expires_at: float  # on the monotonic clock


class CertsCache:
    """Google's token-signing certificates (`{key ID: PEM}` JSON), cached.

    See the module docstring for the caching rules. `fetches` counts fetch
    attempts (for tests and metrics).
    """

    def __init__(
        self,
        url: str = GOOGLE_CERTS_URL,
        *,
        refetch_interval_s: float = DEFAULT_REFETCH_INTERVAL_S,
        timeout_s: float = 10.0,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise ConfigError(f"certs URL must be http(s), got {url!r}")
        self.url = url
        self.refetch_interval_s = refetch_interval_s
        self.timeout_s = timeout_s
        self.fetches = 0
        self._lock = threading.Lock()
        self._certs: Certs | None = None
        self._next_fetch = float("-inf")
        self._inflight: asyncio.Task[None] | None = None

    async def verifiers_for(self, kid: str | None) -> list[crypt.Verifier]:
        """The verifiers for key `kid` (all known ones when None); [] if unknown.

        Raises CertsUnavailable when no usable certificates exist.
        """
        return (await self.lookup(kid))[1]

    async def lookup(self, kid: str | None) -> tuple[Certs, list[crypt.Verifier]]:
        """(the certificates in use, `verifiers_for(kid)` among them).

        Raises CertsUnavailable when no usable certificates exist.
        """
        mono = clock.current().monotonic()
        certs = self._certs
        if mono >= self._next_fetch and (
            certs is None
            or mono >= certs.expires_at
            or (kid is not None and kid not in certs.verifiers)
        ):
            await self._refresh()
            mono = clock.current().monotonic()
            certs = self._certs
        if certs is None or mono >= certs.expires_at + MAX_STALE_S:
            raise CertsUnavailable(f"could not fetch token-signing certificates from {self.url}")
        if kid is None:
            return certs, list(certs.verifiers.values())
        found = certs.verifiers.get(kid)
        return certs, [found] if found is not None else []

    @property
    def current(self) -> Certs | None:
        """The certificates in use (a new object after each successful fetch)."""
        return self._certs

    async def _refresh(self) -> None:
        loop = asyncio.get_running_loop()
        task = self._inflight
        if task is None or task.get_loop() is not loop:
            task = loop.create_task(asyncio.to_thread(self._fetch_blocking))
            self._inflight = task
            task.add_done_callback(self._fetch_done)
        # Shielded: a request that goes away does not cancel the fetch others await.
        await asyncio.shield(task)

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # _fetch_blocking does not raise; mark it retrieved anyway

    def _fetch_blocking(self) -> None:
        started = clock.current().monotonic()
        with self._lock:
            self.fetches += 1
        try:
            verifiers, ttl = self._download()
        except Exception as e:
            log.warning("tq: cannot fetch token-signing certificates from %s: %s", self.url, e)
            with self._lock:
                self._next_fetch = started + FAILED_FETCH_BACKOFF_S
            return
        with self._lock:
            self._certs = Certs(verifiers, started + ttl)
            self._next_fetch = started + self.refetch_interval_s

    def _download(self) -> tuple[dict[str, crypt.Verifier], float]:
        req = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        opener = _NO_PROXY_OPENER if _is_loopback(self.url) else _DEFAULT_OPENER
        with opener.open(req, timeout=self.timeout_s) as resp:
            raw = resp.read(MAX_CERTS_BYTES + 1)
            cache_control = resp.headers.get("Cache-Control", "")
            age = resp.headers.get("Age", "")
        if len(raw) > MAX_CERTS_BYTES:
            raise ValueError("certificates document is too large")
        doc = json.loads(raw)
        if not isinstance(doc, dict) or not doc:
            raise ValueError('expected a JSON object {"<key id>": "<PEM>"}')
        verifiers = {}
        for kid, pem in doc.items():
            if isinstance(kid, str) and isinstance(pem, str):
                verifiers[kid] = _verifier(pem)
        if not verifiers:
            raise ValueError("no certificates in the document")
        return verifiers, _ttl(cache_control, age)


def _verifier(pem: str) -> crypt.Verifier:
    """An RS256 verifier of an RSA key or certificate, or ES256 for an EC key (IAP's keys)."""
    if "BEGIN PUBLIC KEY" in pem:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = serialization.load_pem_public_key(pem.encode())
        if isinstance(key, ec.EllipticCurvePublicKey):
            return crypt.ES256Verifier.from_string(pem)
    return crypt.RSAVerifier.from_string(pem)  # type: ignore[no-untyped-call,no-any-return]


def _ttl(cache_control: str, age: str) -> float:
    m = _MAX_AGE_RE.search(cache_control.lower())
    if m is None:
        return DEFAULT_CERTS_TTL_S
    ttl = float(m.group(1)) - (float(age) if age.strip().isdigit() else 0.0)
    return min(max(ttl, MIN_CERTS_TTL_S), MAX_CERTS_TTL_S)


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Loopback certificate servers (tests, local issuers) never go through a proxy.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_DEFAULT_OPENER = urllib.request.build_opener()
