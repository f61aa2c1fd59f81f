"""A signer for database-queue workers in the chaos scenarios: `tq worker --signer
tests.chaos._signer:sign`.

Mints Google-like OIDC tokens with the key of the test's `LocalIssuer`,
handed over in TQ_CHAOS_KEY_PEM and TQ_CHAOS_KEY_ID, so that the replicas'
push endpoints verify them as they would Cloud Tasks' (certificates from
the issuer's loopback server).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from google.auth import crypt, jwt


@functools.cache
def _signer() -> Any:
    return crypt.RSASigner.from_string(  # type: ignore[no-untyped-call]
        os.environ["TQ_CHAOS_KEY_PEM"], key_id=os.environ["TQ_CHAOS_KEY_ID"]
    )


def sign(email: str, audience: str) -> str:
    now = int(time.time())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": audience,
        "sub": "1",
        "email": email,
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
    }
    token: bytes = jwt.encode(_signer(), claims)  # type: ignore[no-untyped-call]
    return token.decode("ascii")
