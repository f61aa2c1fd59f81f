"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

The dashboard is served by uvicorn on loopback over a database holding tasks
in every state (tests/_dashboard_data.py). Each test signs in as a person
would, loads pages, clicks through confirmations, and checks the database
afterwards; screenshots of every page go to .tq-run/screenshots/ (ignored
by git). CI runs the short version on SQLite; TQ_LONG=1 (scripts/long) adds
PostgreSQL, every action through the browser, and a queue of 10,000 tasks
paged through.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import tq.dashboard
from tests import _dashboard_data as dd
from tests._longmode import LONG
from tests._services.chromium import screenshot_path
from tests._services.uvicorn_server import ServedApp
from tq import dbqueue
from tq.dashboard import Access

OPERATOR, VIEWER = "browser-operator-1", "browser-viewer-1"


@pytest.fixture(params=["sqlite", "postgres"] if LONG else ["sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        e = dbqueue.sqlite_engine(tmp_path / "dash.db")
    else:
        e = sa.create_engine(request.getfixturevalue("postgres_db_url"))
    yield e
    e.dispose()


@pytest.fixture
def data(engine: sa.Engine) -> dd.Data:
    return dd.populate(engine)


@pytest.fixture
def served(data: dd.Data, engine: sa.Engine) -> Iterator[ServedApp]:
    access = Access(operator_tokens=[OPERATOR], viewer_tokens=[VIEWER])
    app = tq.dashboard.app(data.dispatcher, engine=engine, stores=[data.store], access=access)
    server = ServedApp(app).start()
    yield server
    server.stop()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    p = context.new_page()
    p.set_default_timeout(15_000)
    yield p
    context.close()


def expect(target: Any) -> Any:
    """Playwright's `expect`: its checks retry until they hold (or 15 s pass).

    A click that navigates returns before the next page is shown; an
    immediate `is_visible()` would race the page load.
    """
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)


def sign_in(page: Any, served: ServedApp, token: str) -> None:
    page.goto(served.url + "/")
    assert "/login" in page.url  # unauthenticated: sent to sign in, no data shown
    assert page.locator("#queues").count() == 0
    page.fill("#token", token)
    page.click("#sign-in")
    page.wait_for_url(served.url + "/")


def shot(page: Any, request: pytest.FixtureRequest, name: str) -> None:
    page.screenshot(path=str(screenshot_path(request.node.name, name)), full_page=True)


def confirm(page: Any, button: Any) -> None:
    """Clicks an action button, checks the confirmation page asks, and confirms.

    Returns once the page the action led back to shows its outcome (the
    flash), so that the action is done when the caller checks the database.
    """
    page.get_by_role("link", name=button).first.click()
    expect(page.locator("#question")).to_be_visible()
    confirmed(page)


def confirmed(page: Any) -> None:
    """Confirms on a confirmation page; returns once the next page shows the outcome."""
    page.click("#confirm")
    expect(page.locator(".flash")).to_be_visible()


def task_state(engine: sa.Engine, queue: str, name: str) -> str:
    t = dbqueue.Admin(engine).get_task(queue, name)
    assert t is not None
    return t.state.value


def test_every_page_loads_in_chromium_and_an_operator_acts(
    page: Any, served: ServedApp, data: dd.Data, engine: sa.Engine,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    sign_in(page, served, OPERATOR)
    assert page.locator("#queues").get_by_role("link", name="emails").is_visible()
    assert page.locator("svg").count() >= 2  # the charts, inline
    shot(page, request, "overview")

    page.locator("#queues").get_by_role("link", name="emails").click()
    expect(page.get_by_role("link", name=re.compile(r"failed \(1\)"))).to_be_visible()
    shot(page, request, "queue")
    page.get_by_role("link", name=re.compile(r"failed \(1\)")).click()
    page.get_by_role("link", name=data.names["failed"]).click()
    expect(page.locator("#payload")).to_contain_text('"name": "fail-1"')
    shot(page, request, "task")

    confirm(page, "Run now")  # the failed task gets a fresh start
    expect(page.locator(".flash")).to_contain_text("runs now")
    assert task_state(engine, "emails", data.names["failed"]) == "pending"

    page.goto(served.url + "/queues/emails")
    confirm(page, "Pause")
    assert {q.name: q.paused for q in dbqueue.Admin(engine).list_queues()}["emails"]
    expect(page.locator(".badge", has_text="PAUSED").first).to_be_visible()

    for path, name in [("/reminders", "reminders"), ("/parked", "parked"),
                       ("/schedules", "schedules")]:  # fmt: skip
        page.goto(served.url + path)
        assert page.locator("h1").is_visible()
        shot(page, request, name)
    assert page.locator("#schedules").get_by_text("*/5 * * * *").is_visible()

    page.goto(served.url + "/parked")
    page.check(f"input[value='{data.parked_reminders[0]}']")
    page.get_by_role("button", name="Replay selected").click()
    expect(page.locator("#question")).to_be_visible()
    expect(page.locator("ul")).to_contain_text(data.parked_reminders[0])
    confirmed(page)
    expect(page.locator(".flash")).to_contain_text("replayed 1 parked reminders")
    assert data.store.count_reminders() == (3, 1)
    shot(page, request, "parked-after-replay")


def test_a_viewer_sees_pages_without_actions_and_cannot_act(
    page: Any, served: ServedApp, data: dd.Data, engine: sa.Engine,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    sign_in(page, served, VIEWER)
    page.goto(served.url + "/queues/emails")
    assert "viewer" in page.locator("header").inner_text()
    assert page.locator("[data-action]").count() == 0
    shot(page, request, "queue-as-viewer")
    page.goto(served.url + "/confirm/purge?queue=emails")
    assert "read-only" in page.locator(".error").inner_text()
    r = page.request.post(served.url + "/act/purge", form={"queue": "emails", "csrf": "x"})
    assert r.status == 403
    assert dbqueue.Admin(engine).count_tasks(queue="emails", state="pending") == 3


@pytest.mark.slow
def test_every_action_through_the_browser(
    page: Any, served: ServedApp, data: dd.Data, engine: sa.Engine,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    sign_in(page, served, OPERATOR)
    admin = dbqueue.Admin(engine)
    page.goto(served.url + "/queues/emails")
    confirm(page, "Pause")
    confirm(page, "Resume")
    assert not {q.name: q.paused for q in admin.list_queues()}["emails"]
    page.goto(served.url + f"/queues/emails/tasks/{data.names['pending']}")
    confirm(page, "Delete…")
    assert task_state(engine, "emails", data.names["pending"]) == "deleted"
    page.goto(served.url + "/queues/emails")
    confirm(page, "Purge…")
    assert admin.count_tasks(queue="emails", state="pending") == 0
    page.goto(served.url + f"/reminders/sql/{data.parked_reminders[1]}")
    confirm(page, "Drop…")
    assert data.store.count_reminders() == (2, 1)
    page.goto(served.url + "/parked")
    confirm(page, re.compile(r"Replay all"))
    assert data.store.count_reminders() == (3, 0)
    page.goto(served.url + "/queues/emails")
    page.get_by_role("link", name="Cancel").count()  # nothing pending to cancel
    shot(page, request, "after-every-action")


@pytest.mark.slow
def test_a_queue_of_10000_tasks_pages_in_the_browser(
    page: Any, served: ServedApp, engine: sa.Engine, request: pytest.FixtureRequest
) -> None:
    dd.add_waiting(engine, 10_000)
    sign_in(page, served, VIEWER)
    page.goto(served.url + "/queues/emails?state=pending&order=overdue")
    seen: set[str] = set()
    cells = page.locator("#tasks tbody tr td:first-child")
    for _ in range(5):
        names = cells.all_inner_texts()
        assert len(names) == 50
        seen |= set(names)
        page.get_by_role("link", name="next page »").click()
        expect(cells.first).not_to_have_text(names[0])  # the next page is shown
    assert len(seen) == 250
    assert "pending (10003)" in page.locator("nav.tabs").inner_text()
    shot(page, request, "queue-10000")
