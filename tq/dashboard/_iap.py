"""Identity-Aware Proxy's signed headers, verified by tq's OIDC verifier.

Behind IAP every request carries `X-Goog-IAP-JWT-Assertion`: an ES256 JWT
issued by `https://cloud.google.com/iap`, signed with the keys published at
`IAP_CERTS_URL`, whose audience is the backend service's or App Engine
app's (`/projects/NUMBER/global/backendServices/ID`,
`/projects/NUMBER/apps/PROJECT`) and whose `email` is the signed-in user.
"""

from __future__ import annotations

from tq._auth import OIDCVerifier

IAP_CERTS_URL = "https://www.gstatic.com/iap/verify/public_key"
IAP_ISSUER = "https://cloud.google.com/iap"


def iap_verifier(certs_url: str = IAP_CERTS_URL) -> OIDCVerifier:
    """An `OIDCVerifier` of IAP's assertions (ES256, IAP's issuer, no email_verified claim)."""
    return OIDCVerifier(
        certs_url, issuers=(IAP_ISSUER,), algorithm="ES256", require_verified_email=False
    )
