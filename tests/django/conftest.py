"""Real Django (6.x) on SQLite ("default") and on the tests' PostgreSQL ("pg").

Django needs Python 3.12 or newer: on an older Python (the project's .venv
today) these tests are not collected, and scripts/test runs them in
.tq-run/djangoenv, a Python 3.12+ environment scripts/setup makes.

One Django project per test process (tests/django/settings.py): the session
fixture starts it on a SQLite file and a PostgreSQL database, and applies
the migrations to both. Each test gets the settings it asks for
(`configure(...)`) and finds every table empty.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

try:
    import django

    HAVE_DJANGO = django.VERSION >= (6, 0)
except ImportError:
    HAVE_DJANGO = False

if not HAVE_DJANGO:
    collect_ignore_glob = ["test_*.py"]

ALIASES = ("default", "pg")
TABLES = (
    "tq_reminders", "tq_leases", "tq_done", "tq_tasks", "tq_recurring",
    "tq_cron", "tq_django_task_results", "shop_order", "shop_confirmation",
)  # fmt: skip
BASE_TQ: dict[str, Any] = {
    "DISPATCHER": "tests.django.shop.tq_app.disp",
    "TARGET_HOST": "shop.test",
    "AUTH": "insecure-no-auth",
    "SWEEPER": "sweeper.InProcSweeper",
}


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def django_project(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import psycopg
    from django.core.management import call_command

    name = f"tq_django_{os.getpid()}"
    with psycopg.connect(_libpq(postgres_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    base = _libpq(postgres_url).rpartition("/")[0]
    os.environ["TQ_TEST_DJANGO_SQLITE"] = str(tmp_path_factory.mktemp("django") / "shop.db")
    os.environ["TQ_TEST_DJANGO_PG"] = f"{base}/{name}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.django.settings"
    django.setup()
    for alias in ALIASES:
        call_command("migrate", database=alias, verbosity=0)
    yield
    from django.db import connections

    from tq.contrib.django import _databases

    connections.close_all()
    _databases.dispose_engines()


def _truncate() -> None:
    from django.db import connections

    for alias in ALIASES:
        with connections[alias].cursor() as cursor:
            for table in TABLES:
                cursor.execute(f"DELETE FROM {table}")
        connections[alias].close()


@pytest.fixture
def configure(django_project: None) -> Iterator[Callable[..., Any]]:
    """`configure(**TQ keys)`: settings.TQ for this test (over BASE_TQ); returns the state."""
    from django.test import override_settings

    from tests.django.shop import tasks, tq_app
    from tq.contrib.django import _state

    overrides: list[Any] = []

    def apply(**tq_keys: Any) -> _state.State:
        o = override_settings(TQ={**BASE_TQ, **tq_keys})
        o.enable()
        overrides.append(o)
        return _state.current()

    _truncate()
    apply()
    try:
        yield apply
    finally:
        for o in reversed(overrides):
            o.disable()
        _state.setup()
        _truncate()
        tq_app.shipped.clear()
        tasks.failures_left.clear()


@pytest.fixture(params=ALIASES)
def alias(request: pytest.FixtureRequest) -> str:
    """Each test runs on SQLite ("default") and on PostgreSQL ("pg")."""
    return str(request.param)
