"""Django settings of the test project: SQLite ("default") and PostgreSQL ("pg").

The databases come from the environment (set by tests/django/conftest.py,
inherited by child processes): TQ_TEST_DJANGO_SQLITE (a file path) and
TQ_TEST_DJANGO_PG (a libpq URL); without the latter there is no "pg" alias.
"""

from __future__ import annotations

import os
import urllib.parse

SECRET_KEY = "tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.django.urls"
INSTALLED_APPS = ["tq.contrib.django", "tests.django.shop"]
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_sqlite = os.environ.get("TQ_TEST_DJANGO_SQLITE", "/tmp/tq-django-tests.db")
DATABASES: dict[str, dict[str, object]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _sqlite,
        "TEST": {"NAME": _sqlite},
        "OPTIONS": {"timeout": 30},
    }
}
_pg = os.environ.get("TQ_TEST_DJANGO_PG")
if _pg:
    u = urllib.parse.urlsplit(_pg)
    DATABASES["pg"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": u.path.lstrip("/"),
        "USER": u.username or "",
        "PASSWORD": u.password or "",
        "HOST": u.hostname or "",
        "PORT": str(u.port or ""),
        "TEST": {"NAME": u.path.lstrip("/")},
    }

TASKS = {
    "default": {
        "BACKEND": "tq.contrib.django.backend.TqBackend",
        "QUEUES": ["default", "emails", "slow_lane"],
        "OPTIONS": {"QUEUE_MAP": {"slow_lane": "slow-lane"}},
    }
}
TQ = {
    "DISPATCHER": "tests.django.shop.tq_app.disp",
    "TARGET_HOST": "shop.test",
    "AUTH": "insecure-no-auth",
    "SWEEPER": "sweeper.InProcSweeper",
}
