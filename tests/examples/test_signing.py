"""The example's push signer caches tokens per (account, audience) until near expiry."""

from __future__ import annotations

from examples.orders import signing


def test_tokens_are_cached_per_account_and_audience_until_near_expiry() -> None:
    minted: list[tuple[str, str]] = []
    now = [1000.0]

    def mint(email: str, audience: str) -> str:
        minted.append((email, audience))
        return f"token-{len(minted)}"

    signing._cache.clear()
    a = signing.cached_token("a@x", "https://h", mint=mint, now=lambda: now[0])
    again = signing.cached_token("a@x", "https://h", mint=mint, now=lambda: now[0])
    other = signing.cached_token("a@x", "https://other", mint=mint, now=lambda: now[0])
    now[0] += signing._LIFETIME_S - signing._MARGIN_S + 1
    renewed = signing.cached_token("a@x", "https://h", mint=mint, now=lambda: now[0])
    signing._cache.clear()

    assert (a, again, other, renewed) == ("token-1", "token-1", "token-2", "token-3")
    assert minted == [("a@x", "https://h"), ("a@x", "https://other"), ("a@x", "https://h")]
