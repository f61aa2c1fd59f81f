"""Minting OIDC tokens for pushes of self-hosted database-queue workers.

`tq worker --signer examples.orders.signing:sign` calls `sign(email,
audience)` for each task that asks for a token (the dispatcher's
`push_as`). It asks Google's IAM Credentials API for an ID token of that
service account (the worker's own account needs
roles/iam.serviceAccountOpenIdTokenCreator on it), so the app's push
endpoint verifies it exactly like a Cloud Tasks push. Tokens are cached
until five minutes before they expire.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

_LIFETIME_S = 3600
_MARGIN_S = 300
_cache: dict[tuple[str, str], tuple[str, float]] = {}
_lock = threading.Lock()


def _mint(email: str, audience: str) -> str:
    import google.auth
    from google.auth import impersonated_credentials
    from google.auth.transport.requests import Request

    source, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    target = impersonated_credentials.Credentials(
        source_credentials=source,
        target_principal=email,
        target_scopes=["https://www.googleapis.com/auth/cloud-platform"],
        lifetime=_LIFETIME_S,
    )
    creds: Any = impersonated_credentials.IDTokenCredentials(
        target, target_audience=audience, include_email=True
    )
    creds.refresh(Request())
    return str(creds.token)


def cached_token(email: str, audience: str, mint: Any = _mint, now: Any = time.monotonic) -> str:
    """A token for (email, audience), minted with `mint` unless a fresh one is cached."""
    key = (email, audience)
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[1] > now():
            return hit[0]
    token = mint(email, audience)
    with _lock:
        _cache[key] = (token, now() + _LIFETIME_S - _MARGIN_S)
    return str(token)


async def sign(email: str, audience: str) -> str:
    """The worker's signer: a cached Google-signed ID token, minted off the event loop."""
    return await asyncio.to_thread(cached_token, email, audience)
