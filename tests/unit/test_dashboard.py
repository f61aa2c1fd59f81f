"""The dashboard over HTTP (in-process ASGI): access, roles, CSRF, actions, escaping.

The browser tests (tests/e2e/test_dashboard_browser.py) load the pages in
Chromium; these check every refusal and every action's effect on the
database quickly, on SQLite.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

import tq
import tq.dashboard
from tests import _dashboard_data as dd
from tests.testpb import payloads_pb2 as pb
from tq import dbqueue
from tq._auth import OIDCVerifier
from tq.dashboard import Access
from tq.dashboard._iap import IAP_ISSUER
from tqtesting.oidc import LocalIssuer, SigningKey

OPERATOR, VIEWER = "operator-token-1", "viewer-token-1"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    e = dbqueue.sqlite_engine(tmp_path / "dash.db")
    yield e
    e.dispose()


@pytest.fixture
def data(engine: sa.Engine) -> dd.Data:
    return dd.populate(engine)


def make_app(data: dd.Data, engine: sa.Engine, access: Any) -> Any:
    return tq.dashboard.app(data.dispatcher, engine=engine, stores=[data.store], access=access)


def client(app: Any, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dash.test",
                             headers=headers)  # fmt: skip


@pytest.fixture
def app(data: dd.Data, engine: sa.Engine) -> Any:
    return make_app(data, engine, Access(operator_tokens=[OPERATOR], viewer_tokens=[VIEWER]))


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


async def confirm_and_act(c: httpx.AsyncClient, action: str, **fields: Any) -> httpx.Response:
    """Opens the action's confirmation page, then posts its form as a browser would."""
    page = await c.get(f"/confirm/{action}", params=fields)
    assert page.status_code == 200, page.text
    form = [(k, v) for k, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"',
                                          page.text)]  # fmt: skip
    return await c.post(
        f"/act/{action}",
        content=urllib.parse.urlencode(form),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


PAGES = ["/", "/queues/emails", "/queues/emails?state=failed", "/reminders", "/parked",
         "/schedules"]  # fmt: skip


async def test_closed_unless_configured_and_shows_no_data(data: dd.Data, engine: sa.Engine) -> None:
    async with client(make_app(data, engine, None), OPERATOR) as c:
        for path in PAGES:
            r = await c.get(path)
            assert r.status_code == 403
            assert "closed" in r.text
            assert "emails" not in r.text
            assert data.names["failed"] not in r.text


async def test_unauthenticated_requests_see_no_data(app: Any, data: dd.Data) -> None:
    async with client(app) as c:
        for path in [*PAGES, f"/queues/emails/tasks/{data.names['failed']}"]:
            r = await c.get(path, follow_redirects=False)
            assert r.status_code == 303
            assert r.headers["location"].startswith("/login?next=")
        r = await c.post("/act/pause", data={"queue": "emails"})
        assert r.status_code == 401
        wrong = await c.get("/", headers={"Authorization": "Bearer not-a-known-token"})
        assert wrong.status_code == 401
        assert "emails" not in wrong.text
        login = await c.get("/login")
        assert "emails" not in login.text
    assert not dbqueue.Admin(app_engine(app)).list_queues()[0].paused


def app_engine(app: Any) -> sa.Engine:
    for route in app.routes:
        endpoint = getattr(route, "endpoint", None)
        guard = getattr(endpoint, "__self__", None)
        if guard is not None:
            return guard.src.queues.engine  # type: ignore[no-any-return]
    raise AssertionError("no guarded route")


async def test_token_sign_in_keeps_a_session_and_sign_out_ends_it(app: Any) -> None:
    async with client(app) as c:
        bad = await c.post("/login", data={"token": "guess-guess-guess"})
        assert bad.status_code == 401
        r = await c.post("/login", data={"token": VIEWER, "next": "/parked"})
        assert (r.status_code, r.headers["location"]) == (303, "/parked")
        page = await c.get("/parked")
        assert page.status_code == 200
        assert "viewer" in page.text
        off_site = await c.get("/login", params={"token": VIEWER, "next": "//evil.test/"},
                               follow_redirects=False)  # fmt: skip
        assert off_site.headers["location"] == "/"
        await c.post("/logout")
        assert (await c.get("/parked", follow_redirects=False)).status_code == 303


async def test_every_page_loads_and_decodes_the_payload(app: Any, data: dd.Data) -> None:
    async with client(app, VIEWER) as c:
        for path in [*PAGES, f"/queues/emails/tasks/{data.names['failed']}",
                     f"/queues/pulled/tasks/{data.leased}",
                     f"/reminders/sql/{data.parked_reminders[0]}"]:  # fmt: skip
            r = await c.get(path)
            assert r.status_code == 200, path
        task = await c.get(f"/queues/emails/tasks/{data.names['failed']}")
        assert "Payload: tq.tests.Greet" in task.text
        assert "&quot;name&quot;: &quot;fail-1&quot;" in task.text
        assert "HTTP 500" in task.text  # the retry reason
        assert (await c.get("/queues/nope")).status_code == 404
        assert (await c.get("/queues/emails?cursor=x.y&order=overdue")).status_code == 400


async def test_a_viewer_sees_no_action_and_is_refused_every_action(
    app: Any, data: dd.Data, engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(app, VIEWER) as c:
        page = await c.get("/queues/emails")
        assert "Purge" not in page.text
        assert "Run now" not in page.text
        assert (await c.get("/confirm/purge", params={"queue": "emails"})).status_code == 403
        csrf = csrf_of((await client(app, OPERATOR).get("/confirm/pause?queue=emails")).text)
        with caplog.at_level(logging.WARNING, "tq.dashboard"):
            r = await c.post("/act/purge", data={"queue": "emails", "csrf": csrf})
        assert r.status_code == 403
    assert "read-only" in caplog.text
    assert dbqueue.Admin(engine).count_tasks(queue="emails", state="pending") == 3


async def test_actions_need_the_users_csrf_token_and_a_same_site_origin(
    app: Any, engine: sa.Engine
) -> None:
    async with client(app, OPERATOR) as c:
        assert (await c.post("/act/pause", data={"queue": "emails"})).status_code == 403
        r = await c.post("/act/pause", data={"queue": "emails", "csrf": "forged"})
        assert r.status_code == 403
        csrf = csrf_of((await c.get("/confirm/pause?queue=emails")).text)
        cross = await c.post("/act/pause", data={"queue": "emails", "csrf": csrf},
                             headers={"Origin": "http://evil.test"})  # fmt: skip
        assert cross.status_code == 403
        assert not dbqueue.Admin(engine).list_queues()[0].paused
        ok = await c.post("/act/pause", data={"queue": "emails", "csrf": csrf},
                          headers={"Origin": "http://dash.test"})  # fmt: skip
        assert ok.status_code == 303
    assert {q.name: q.paused for q in dbqueue.Admin(engine).list_queues()}["emails"]


async def test_every_action_changes_the_database_and_is_logged_with_who(
    app: Any, data: dd.Data, engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    admin = dbqueue.Admin(engine)
    paused = lambda: {q.name: q.paused for q in admin.list_queues()}["emails"]  # noqa: E731
    caplog.set_level(logging.WARNING, "tq.dashboard")
    async with client(app, OPERATOR) as c:
        assert (await confirm_and_act(c, "pause", queue="emails")).status_code == 303
        assert paused()
        await confirm_and_act(c, "resume", queue="emails")
        assert not paused()
        await confirm_and_act(c, "run", queue="emails", name=data.names["failed"])
        assert admin.get_task("emails", data.names["failed"]).state is dbqueue.State.PENDING  # type: ignore[union-attr]
        await confirm_and_act(c, "delete", queue="emails", name=data.names["pending"])
        assert admin.get_task("emails", data.names["pending"]).state is dbqueue.State.DELETED  # type: ignore[union-attr]
        r = await confirm_and_act(c, "purge", queue="emails")
        assert r.headers["location"] == "/queues/emails"
        assert admin.count_tasks(queue="emails", state="pending") == 0
        flash = await c.get("/queues/emails")
        assert "queue emails purged: 3 tasks deleted" in flash.text
        await confirm_and_act(c, "replay", store="sql", ids=data.parked_reminders[0])
        assert data.store.count_reminders() == (3, 1)
        await confirm_and_act(c, "drop", all="1")
        assert data.store.count_reminders() == (3, 0)
        again = await confirm_and_act(c, "run", queue="emails", name=data.names["done"])
        assert "Not done: task" in (await c.get(again.headers["location"])).text
    lines = [r.getMessage() for r in caplog.records if r.name == "tq.dashboard"]
    for action in ("pause", "resume", "run", "delete", "purge", "replay", "drop"):
        assert any(f"{action} by token …en-1 (operator, token)" in m for m in lines), action
    record = next(r for r in caplog.records if getattr(r, "tq_action", "") == "purge")
    assert record.tq_user == "token …en-1"  # type: ignore[attr-defined]
    assert record.tq_target == {"queue": "emails"}  # type: ignore[attr-defined]


async def test_priorities_tags_and_results_are_shown(app: Any, data: dd.Data) -> None:
    async with client(app, VIEWER) as c:
        page = await c.get("/queues/pulled")
        assert "batch-a" in page.text
        assert ">priority<" in page.text
        leased = await c.get(f"/queues/pulled/tasks/{data.leased}")
        assert "<dt>tag</dt><dd>batch-a</dd>" in leased.text
        assert "<dt>priority</dt><dd>5</dd>" in leased.text
        done = await c.get(f"/queues/pulled/tasks/{data.finished}")
        assert '<pre id="result">{\n  &quot;rows&quot;: 3\n}</pre>' in done.text


async def test_clean_deletes_the_filtered_tasks_after_saying_how_many(
    app: Any, data: dd.Data, engine: sa.Engine
) -> None:
    async with client(app, OPERATOR) as c:
        page = await c.get("/queues/emails", params={"state": "failed"})
        assert "Clean failed tasks…" in page.text
        ask = await c.get("/confirm/clean", params={"queue": "emails", "state": "failed"})
        assert "1 match: 0 waiting or running would be deleted" in ask.text
        assert "1 finished would be dropped" in ask.text
        done = await confirm_and_act(c, "clean", queue="emails", state="failed")
        assert done.headers["location"] == "/queues/emails?state=failed"
        everything = await c.get("/confirm/clean", params={"queue": "emails"})
        assert everything.status_code == 400  # never the whole queue by accident
    assert dbqueue.Admin(engine).count_tasks(queue="emails", state="failed") == 0
    assert dbqueue.Admin(engine).count_tasks(queue="emails", state="done") == 1


async def test_what_a_task_carries_is_escaped(data: dd.Data, engine: sa.Engine, app: Any) -> None:
    data.dispatcher.add_task(tq.Task(payload=pb.Greet(name="<script>alert(1)</script>"),
                                     title="a&b'c"))  # fmt: skip
    newest = max(dbqueue.Admin(engine).list_tasks(queue="emails", limit=100), key=lambda t: t.id)
    async with client(app, VIEWER) as c:
        r = await c.get(f"/queues/emails/tasks/{newest.name}")
        assert "<script>" not in r.text
        assert "&lt;script&gt;" in r.text
        listing = await c.get("/queues/emails", params={"order": "newest"})
        assert "a&b'c" not in listing.text
        assert "a&amp;b&#x27;c" in listing.text


async def test_insecure_no_auth_lets_anyone_act_and_says_so(
    data: dd.Data, engine: sa.Engine
) -> None:
    async with client(make_app(data, engine, tq.dashboard.INSECURE_NO_AUTH)) as c:
        page = await c.get("/")
        assert "WITHOUT AUTHENTICATION" in page.text
        assert (await confirm_and_act(c, "pause", queue="emails")).status_code == 303
    assert {q.name: q.paused for q in dbqueue.Admin(engine).list_queues()}["emails"]


def test_access_refuses_a_configuration_that_lets_nobody_in() -> None:
    with pytest.raises(ValueError, match="nobody"):
        Access()
    with pytest.raises(ValueError, match="audience"):
        Access(operators=["a@example.com"])
    with pytest.raises(ValueError, match="both"):
        Access(operator_tokens=["same-token"], viewer_tokens=["same-token"])
    with pytest.raises(ValueError, match="8 characters"):
        Access(operator_tokens=["short"])


USER = "ops@example.com"
AUDIENCE = "https://dash.example.com"
IAP_AUD = "/projects/123/global/backendServices/456"


async def test_google_id_tokens_sign_in_listed_emails_with_their_role(
    data: dd.Data, engine: sa.Engine
) -> None:
    with LocalIssuer() as issuer:
        access = Access(operators=[USER], viewers=["look@example.com"], audience=AUDIENCE,
                        verifier=OIDCVerifier(issuer.certs_url))  # fmt: skip
        app = make_app(data, engine, access)
        async with client(app) as c:
            as_op = {"Authorization": issuer.bearer(email=USER, audience=AUDIENCE)}
            page = await c.get("/confirm/pause", params={"queue": "emails"}, headers=as_op)
            assert page.status_code == 200
            assert f"{USER} (operator, oidc)" in page.text
            as_viewer = {"Authorization": issuer.bearer(email="look@example.com",
                                                        audience=AUDIENCE)}  # fmt: skip
            assert (await c.get("/", headers=as_viewer)).status_code == 200
            assert (
                await c.get("/confirm/pause?queue=emails", headers=as_viewer)
            ).status_code == 403
            for refused in (
                issuer.bearer(email="stranger@example.com", audience=AUDIENCE),
                issuer.bearer(email=USER, audience="https://elsewhere.example.com"),
                issuer.bearer(email=USER, audience=AUDIENCE, expired=True),
                issuer.bearer(email=USER, audience=AUDIENCE, email_verified=False),
            ):
                r = await c.get("/", headers={"Authorization": refused})
                assert r.status_code == 401
                assert "emails" not in r.text


async def test_iap_assertions_sign_in_and_bare_email_headers_do_not(
    data: dd.Data, engine: sa.Engine
) -> None:
    with LocalIssuer(key=SigningKey.generate_ec()) as iap:
        access = Access(operators=[USER], iap_audience=IAP_AUD,
                        iap_verifier=tq.dashboard.iap_verifier(iap.certs_url))  # fmt: skip
        app = make_app(data, engine, access)
        assertion = iap.mint(email=USER, audience=IAP_AUD, iss=IAP_ISSUER, email_verified=None)
        async with client(app) as c:
            r = await c.get("/", headers={"X-Goog-IAP-JWT-Assertion": assertion})
            assert r.status_code == 200
            assert f"{USER} (operator, iap)" in r.text
            spoofed = {"X-Goog-Authenticated-User-Email": f"accounts.google.com:{USER}"}
            assert (await c.get("/", headers=spoofed)).status_code == 401
            google_signed = SigningKey.generate().sign({"iss": IAP_ISSUER, "aud": IAP_AUD,
                                                    "email": USER, "iat": 1, "exp": 2})  # fmt: skip
            r = await c.get("/", headers={"X-Goog-IAP-JWT-Assertion": google_signed})
            assert r.status_code == 401  # RS256, not IAP's ES256 keys
            other_aud = iap.mint(email=USER, audience="/projects/9/apps/x", iss=IAP_ISSUER)
            r = await c.get("/", headers={"X-Goog-IAP-JWT-Assertion": other_aud})
            assert r.status_code == 401
