"""Headless Chromium from Debian's packages, driven by Playwright (no browser is downloaded).

`scripts/setup` installs Debian's `chromium` (and `chromium-driver`);
Playwright's Python package drives `/usr/bin/chromium` through
`executable_path`. The flags keep Chromium off the network (this machine's
network is closed: background services would only fail) and let it run as
root in a container. Screenshots go under `.tq-run/screenshots/` (ignored
by git), kept as test artefacts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("TQ_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".tq-run" / "screenshots"


def missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (scripts/setup installs Debian's chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (it is in tq[dev])"
    return None


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A Playwright `Browser` on Debian's Chromium, closed (with Playwright) on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium for a test module (skips, saying why, where there is none).

    Module-scoped: Playwright's sync API runs an event loop of its own in this
    thread, which must be gone before a module of asyncio tests runs.
    """
    why = missing()
    if why:
        pytest.skip(why)
    with chromium() as b:
        yield b


def screenshot_path(test: str, name: str) -> Path:
    """Where a test keeps the screenshot `name` (a git-ignored artefact)."""
    path = SCREENSHOTS / test / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
