"""OIDC verification (tq._auth) and the certificate cache (tq._certs), against a LocalIssuer."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import threading
from collections.abc import Iterator

import google.auth.transport.requests
import pytest
import requests
from google.oauth2 import id_token

from tq import _auth, _certs
from tq._auth import AuthError, OIDCVerifier, request_audiences
from tq.clock import use_clock
from tqtesting import FakeClock
from tqtesting.oidc import LocalIssuer, SigningKey

EMAIL = "pusher@p.iam.gserviceaccount.com"
AUD = "https://app.example.com"


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    # Real "now": the issuer's self-signed certificates are valid around it.
    clk = FakeClock(dt.datetime.now(dt.UTC))
    with use_clock(clk):
        yield clk


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def issuer(key: SigningKey) -> Iterator[LocalIssuer]:
    with LocalIssuer(key=key) as iss:
        yield iss


async def verify(verifier: OIDCVerifier, token: str, *, allowed: str = EMAIL) -> _auth.Caller:
    return await verifier.verify(f"Bearer {token}", audiences={AUD}, allowed_emails={allowed})


async def reason_of(verifier: OIDCVerifier, token: str) -> str:
    with pytest.raises(AuthError) as e:
        await verify(verifier, token)
    return e.value.reason


async def test_valid_token_names_its_caller(clock: FakeClock, issuer: LocalIssuer) -> None:
    caller = await verify(OIDCVerifier(issuer.certs_url), issuer.mint(email=EMAIL, audience=AUD))
    assert caller == _auth.Caller("oidc", EMAIL)


def test_local_issuer_tokens_verify_with_google_auth(issuer: LocalIssuer) -> None:
    token = issuer.mint(email=EMAIL, audience=AUD)
    with requests.Session() as session:
        claims = id_token.verify_token(
            token,
            google.auth.transport.requests.Request(session),
            audience=AUD,
            certs_url=issuer.certs_url,
        )
    assert claims["email"] == EMAIL
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["email_verified"] is True


async def test_issuer_without_scheme_is_accepted(clock: FakeClock, issuer: LocalIssuer) -> None:
    token = issuer.mint(email=EMAIL, audience=AUD, iss="accounts.google.com")
    assert (await verify(OIDCVerifier(issuer.certs_url), token)).email == EMAIL


async def test_audience_list_claim_with_an_accepted_value_is_accepted(
    clock: FakeClock, issuer: LocalIssuer
) -> None:
    token = issuer.mint(email=EMAIL, audience=AUD, aud=["https://other", AUD])
    assert (await verify(OIDCVerifier(issuer.certs_url), token)).email == EMAIL


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://evil.example.com"}, "wrong_issuer"),
        ({"iss": None}, "wrong_issuer"),
        ({"aud": "https://other.example.com"}, "wrong_audience"),
        ({"aud": None}, "wrong_audience"),
        ({"email_verified": False}, "unverified_email"),
        ({"email_verified": None}, "unverified_email"),
        ({"email": "someone@else.com"}, "email_not_allowed"),
        ({"email": None}, "email_not_allowed"),
        ({"exp": None}, "malformed"),
        ({"iat": "yesterday"}, "malformed"),
    ],
)
async def test_bad_claims_are_refused_with_their_reason(
    clock: FakeClock, issuer: LocalIssuer, claims: dict[str, object], reason: str
) -> None:
    token = issuer.mint(**({"email": EMAIL, "audience": AUD} | claims))  # type: ignore[arg-type]
    assert await reason_of(OIDCVerifier(issuer.certs_url), token) == reason


async def test_clock_skew_within_allowance_is_tolerated(
    clock: FakeClock, issuer: LocalIssuer
) -> None:
    verifier = OIDCVerifier(issuer.certs_url, clock_skew_s=30)
    now = clock.now()
    early = issuer.mint(email=EMAIL, audience=AUD, issued_at=now + dt.timedelta(seconds=20))
    late = issuer.mint(
        email=EMAIL, audience=AUD, issued_at=now - dt.timedelta(seconds=620), lifetime_s=600
    )
    assert (await verify(verifier, early)).email == EMAIL
    assert (await verify(verifier, late)).email == EMAIL


async def test_clock_skew_beyond_allowance_is_refused(
    clock: FakeClock, issuer: LocalIssuer
) -> None:
    verifier = OIDCVerifier(issuer.certs_url, clock_skew_s=30)
    now = clock.now()
    early = issuer.mint(email=EMAIL, audience=AUD, issued_at=now + dt.timedelta(seconds=40))
    late = issuer.mint(
        email=EMAIL, audience=AUD, issued_at=now - dt.timedelta(seconds=640), lifetime_s=600
    )
    assert await reason_of(verifier, early) == "not_yet_valid"
    assert await reason_of(verifier, late) == "expired"


def _b64(doc: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


async def test_unsigned_token_is_refused(clock: FakeClock, issuer: LocalIssuer) -> None:
    good = issuer.mint(email=EMAIL, audience=AUD)
    claims = good.split(".")[1]
    unsigned = f"{_b64({'alg': 'none', 'kid': issuer.key.kid})}.{claims}."
    assert await reason_of(OIDCVerifier(issuer.certs_url), unsigned) == "bad_signature"


async def test_tampered_claims_are_refused(clock: FakeClock, issuer: LocalIssuer) -> None:
    header, _, sig = issuer.mint(email="other@x.com", audience=AUD).split(".")
    forged_claims = _b64(
        {
            "iss": "https://accounts.google.com",
            "aud": AUD,
            "email": EMAIL,
            "email_verified": True,
            "iat": int(clock.now().timestamp()),
            "exp": int(clock.now().timestamp()) + 600,
        }
    )
    forged = f"{header}.{forged_claims}.{sig}"
    assert await reason_of(OIDCVerifier(issuer.certs_url), forged) == "bad_signature"


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "no_token"),
        ("", "no_token"),
        ("Basic dXNlcjpwYXNz", "no_token"),
        ("Bearer ", "no_token"),
        ("Bearer not-a-jwt", "malformed"),
        ("Bearer a.b.c", "malformed"),
        (f"Bearer {_b64([1])}.{_b64({})}.c2ln", "malformed"),
        ("Bearer " + "a" * 20_000, "malformed"),
    ],
)
async def test_missing_or_malformed_tokens_are_refused(
    clock: FakeClock, issuer: LocalIssuer, authorization: str | None, reason: str
) -> None:
    verifier = OIDCVerifier(issuer.certs_url)
    with pytest.raises(AuthError) as e:
        await verifier.verify(authorization, audiences={AUD}, allowed_emails={EMAIL})
    assert e.value.reason == reason
    assert e.value.status == 403
    assert issuer.fetches == 0  # refused before any certificate was needed


async def test_concurrent_verifications_share_one_fetch(
    clock: FakeClock, issuer: LocalIssuer
) -> None:
    verifier = OIDCVerifier(issuer.certs_url)
    tokens = [issuer.mint(email=EMAIL, audience=AUD) for _ in range(20)]
    callers = await asyncio.gather(*(verify(verifier, t) for t in tokens))
    callers += [await verify(verifier, t) for t in tokens]
    assert all(c.email == EMAIL for c in callers)
    assert issuer.fetches == 1
    assert verifier.certs.fetches == 1


async def test_certs_are_refetched_after_max_age(clock: FakeClock, issuer: LocalIssuer) -> None:
    issuer.max_age_s = 600
    verifier = OIDCVerifier(issuer.certs_url)
    await verify(verifier, issuer.mint(email=EMAIL, audience=AUD))
    clock.advance(599)
    await verify(verifier, issuer.mint(email=EMAIL, audience=AUD))
    assert issuer.fetches == 1
    clock.advance(2)
    await verify(verifier, issuer.mint(email=EMAIL, audience=AUD))
    assert issuer.fetches == 2


async def test_tiny_max_age_is_raised_to_the_floor(clock: FakeClock, issuer: LocalIssuer) -> None:
    issuer.max_age_s = 0
    verifier = OIDCVerifier(issuer.certs_url)
    for _ in range(5):
        await verify(verifier, issuer.mint(email=EMAIL, audience=AUD))
    assert issuer.fetches == 1
    clock.advance(_certs.MIN_CERTS_TTL_S)
    await verify(verifier, issuer.mint(email=EMAIL, audience=AUD))
    assert issuer.fetches == 2


async def test_missing_cache_control_uses_default_ttl(
    clock: FakeClock, issuer: LocalIssuer
) -> None:
    issuer.max_age_s = None
    verifier = OIDCVerifier(issuer.certs_url)
    await verify(verifier, issuer.mint(email=EMAIL, audience=AUD))
    clock.advance(_certs.DEFAULT_CERTS_TTL_S - 1)
    await verify(verifier, issuer.mint(email=EMAIL, audience=AUD))
    assert issuer.fetches == 1
    clock.advance(1)
    await verify(verifier, issuer.mint(email=EMAIL, audience=AUD))
    assert issuer.fetches == 2


async def test_rotated_key_is_fetched_on_first_sight(clock: FakeClock, issuer: LocalIssuer) -> None:
    verifier = OIDCVerifier(issuer.certs_url, refetch_interval_s=30)
    await verify(verifier, issuer.mint(email=EMAIL, audience=AUD))
    clock.advance(31)
    issuer.rotate()
    assert (await verify(verifier, issuer.mint(email=EMAIL, audience=AUD))).email == EMAIL
    assert issuer.fetches == 2


async def test_unknown_key_refetches_at_most_once_per_interval(
    clock: FakeClock, issuer: LocalIssuer
) -> None:
    verifier = OIDCVerifier(issuer.certs_url, refetch_interval_s=30)
    await verify(verifier, issuer.mint(email=EMAIL, audience=AUD))
    clock.advance(31)
    stranger = SigningKey.generate()
    for _ in range(5):
        token = issuer.mint(email=EMAIL, audience=AUD, key=stranger)
        assert await reason_of(verifier, token) == "bad_signature"
    assert issuer.fetches == 2
    clock.advance(31)
    assert await reason_of(verifier, issuer.mint(email=EMAIL, audience=AUD, key=stranger)) == (
        "bad_signature"
    )
    assert issuer.fetches == 3


async def test_no_certs_at_all_is_certs_unavailable_with_backoff(
    clock: FakeClock, issuer: LocalIssuer
) -> None:
    issuer.unavailable = True
    verifier = OIDCVerifier(issuer.certs_url)
    token = issuer.mint(email=EMAIL, audience=AUD)
    with pytest.raises(AuthError) as e:
        await verify(verifier, token)
    assert (e.value.reason, e.value.status) == ("certs_unavailable", 500)
    assert await reason_of(verifier, token) == "certs_unavailable"
    assert issuer.fetches == 1  # the second request did not fetch again at once
    issuer.unavailable = False
    clock.advance(_certs.FAILED_FETCH_BACKOFF_S)
    assert (await verify(verifier, token)).email == EMAIL
    assert issuer.fetches == 2


async def test_stale_certs_serve_while_refetch_fails_up_to_a_bound(
    clock: FakeClock, issuer: LocalIssuer
) -> None:
    issuer.max_age_s = 600
    verifier = OIDCVerifier(issuer.certs_url)
    await verify(verifier, issuer.mint(email=EMAIL, audience=AUD))
    issuer.unavailable = True
    clock.advance(601)
    assert (await verify(verifier, issuer.mint(email=EMAIL, audience=AUD))).email == EMAIL
    assert issuer.fetches == 2
    clock.advance(_certs.MAX_STALE_S)
    assert await reason_of(verifier, issuer.mint(email=EMAIL, audience=AUD)) == (
        "certs_unavailable"
    )


async def test_certs_fetch_does_not_block_the_event_loop(
    clock: FakeClock, issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = OIDCVerifier(issuer.certs_url)
    release = threading.Event()
    download = verifier.certs._download

    def slow_download() -> object:
        # Released by a coroutine on the loop: if the fetch ran on the loop, it
        # could never be released and the fetch would fail.
        if not release.wait(timeout=30):
            raise TimeoutError("the event loop was blocked during the fetch")
        return download()

    monkeypatch.setattr(verifier.certs, "_download", slow_download)

    async def unblock() -> None:
        await asyncio.sleep(0)
        release.set()

    caller, _ = await asyncio.gather(
        verify(verifier, issuer.mint(email=EMAIL, audience=AUD)), unblock()
    )
    assert caller.email == EMAIL


def test_audiences_are_push_audience_alone_when_set() -> None:
    assert request_audiences("https://aud", "app.test", "/internal/tasks/t/x") == ("https://aud",)


def test_audiences_are_host_and_full_url_without_push_audience() -> None:
    assert request_audiences(None, "app.test:8080", "/t/x?a=1") == (
        "https://app.test:8080",
        "https://app.test:8080/t/x?a=1",
    )
    assert request_audiences(None, "app.test", "/t/x", "http") == (
        "https://app.test",
        "https://app.test/t/x",
        "http://app.test/t/x",
    )
    assert request_audiences(None, "", "/t/x") == ()


# Verified tokens are remembered: the signature check runs once per token.


@pytest.fixture
def rsa_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    checked: list[str] = []
    real = _auth._verifies

    def counting(verifier: object, signed: bytes, signature: bytes) -> bool:
        checked.append(signed.decode())
        return real(verifier, signed, signature)  # type: ignore[arg-type]

    monkeypatch.setattr(_auth, "_verifies", counting)
    return checked


async def test_a_verified_token_skips_the_signature_check_next_time(
    clock: FakeClock, issuer: LocalIssuer, rsa_checks: list[str]
) -> None:
    verifier = OIDCVerifier(issuer.certs_url)
    token = issuer.mint(email=EMAIL, audience=AUD)
    for _ in range(3):
        assert (await verify(verifier, token)).email == EMAIL
    assert len(rsa_checks) == 1
    # Its claims are still checked against each request's audiences and emails.
    with pytest.raises(AuthError) as e:
        await verifier.verify(
            f"Bearer {token}", audiences={"https://other"}, allowed_emails={EMAIL}
        )
    assert e.value.reason == "wrong_audience"
    with pytest.raises(AuthError) as e:
        await verify(verifier, token, allowed="someone@else.com")
    assert e.value.reason == "email_not_allowed"
    assert len(rsa_checks) == 1


async def test_a_remembered_token_past_its_expiry_is_refused(
    clock: FakeClock, issuer: LocalIssuer, rsa_checks: list[str]
) -> None:
    issuer.max_age_s = 24 * 3600  # certificates outlive the token
    verifier = OIDCVerifier(issuer.certs_url)
    token = issuer.mint(email=EMAIL, audience=AUD, lifetime_s=600)
    await verify(verifier, token)
    clock.advance(600 + _auth.DEFAULT_CLOCK_SKEW_S - 1)
    assert (await verify(verifier, token)).email == EMAIL
    clock.advance(2)
    assert await reason_of(verifier, token) == "expired"
    assert len(rsa_checks) == 1  # refused from memory, by its claims


async def test_forged_tokens_never_pass_through_the_memory(
    clock: FakeClock, issuer: LocalIssuer, rsa_checks: list[str]
) -> None:
    verifier = OIDCVerifier(issuer.certs_url)
    good = issuer.mint(email=EMAIL, audience=AUD)
    await verify(verifier, good)
    header, claims, sig = good.split(".")
    other_sig = issuer.mint(email="other@x.com", audience=AUD).split(".")[2]
    for forged in (f"{header}.{claims}.{other_sig}", f"{header}.{claims}.{sig[:-4]}AAAA"):
        for _ in range(2):
            assert await reason_of(verifier, forged) == "bad_signature"
    assert len(rsa_checks) == 1 + 4  # every forged attempt was checked
    assert (await verify(verifier, good)).email == EMAIL
    assert len(rsa_checks) == 5


async def test_refused_tokens_are_not_remembered(
    clock: FakeClock, issuer: LocalIssuer, rsa_checks: list[str]
) -> None:
    verifier = OIDCVerifier(issuer.certs_url)
    token = issuer.mint(email=EMAIL, audience="https://elsewhere")
    for _ in range(3):
        assert await reason_of(verifier, token) == "wrong_audience"
    assert len(rsa_checks) == 3


async def test_a_remembered_token_is_checked_again_with_new_certificates(
    clock: FakeClock, issuer: LocalIssuer, rsa_checks: list[str]
) -> None:
    issuer.max_age_s = 600
    verifier = OIDCVerifier(issuer.certs_url)
    token = issuer.mint(email=EMAIL, audience=AUD, lifetime_s=7200)
    await verify(verifier, token)
    clock.advance(601)  # the certificates expire and are fetched again
    assert (await verify(verifier, token)).email == EMAIL
    assert (issuer.fetches, len(rsa_checks)) == (2, 2)
    issuer.rotate(keep_old=False)  # the token's key is no longer served
    clock.advance(601)
    assert await reason_of(verifier, token) == "bad_signature"
    assert issuer.fetches == 3


async def test_the_memory_of_verified_tokens_is_bounded(
    clock: FakeClock, issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch, rsa_checks: list[str]
) -> None:
    monkeypatch.setattr(_auth, "MAX_VERIFIED_TOKENS", 3)
    verifier = OIDCVerifier(issuer.certs_url)
    tokens = [issuer.mint(email=EMAIL, audience=AUD, jti=str(i)) for i in range(5)]
    for t in tokens:
        await verify(verifier, t)
    assert len(verifier._verified) == 3
    await verify(verifier, tokens[-1])  # remembered
    assert len(rsa_checks) == 5
    await verify(verifier, tokens[0])  # forgotten: checked again
    assert len(rsa_checks) == 6
    assert len(verifier._verified) == 3


async def test_a_remembered_token_is_forgotten_when_certificates_rotate_early(
    clock: FakeClock, issuer: LocalIssuer
) -> None:
    issuer.max_age_s = 24 * 3600
    verifier = OIDCVerifier(issuer.certs_url, refetch_interval_s=30)
    old = issuer.mint(email=EMAIL, audience=AUD)
    await verify(verifier, old)
    clock.advance(31)
    issuer.rotate(keep_old=False)
    # A token signed with the new key makes the verifier fetch before the old
    # certificates expire; the old key is gone from them.
    await verify(verifier, issuer.mint(email=EMAIL, audience=AUD))
    assert issuer.fetches == 2
    assert await reason_of(verifier, old) == "bad_signature"
