"""Settings of the example shop: SQLite, tasks on tq's database queue (the embedded default).

In production you would point tq at Cloud Tasks instead (TQ's CLOUD_PROJECT,
CLOUD_REGION, TARGET_HOST and PUSH_AS; see docs/django.md) and turn push
authentication on (drop the "AUTH" line).
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "not-a-secret-only-for-the-example")
DEBUG = True
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "shop_site.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "tq.contrib.django",  # tq's tables, results, views and `manage.py tq`
    "shop",
]
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

_db = os.environ.get("SHOP_DATABASE", str(BASE_DIR / "shop.db"))
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _db,
        # tq's workers and sweeper share the file: give writers time to take turns,
        # and tests a file too (tq cannot share an in-memory database).
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        "TEST": {"NAME": str(Path(_db).with_name("test-" + Path(_db).name))},
    }
}

# django.tasks goes to tq; tasks enqueued in transaction.atomic() are written
# in that transaction.
TASKS = {"default": {"BACKEND": "tq.contrib.django.backend.TqBackend"}}

TQ = {
    # No cloud project: tasks go to the database queue in DATABASES["default"].
    "TARGET_HOST": os.environ.get("SHOP_HOST", "127.0.0.1:8000"),
    "TARGET_SCHEME": "http",
    "AUTH": "insecure-no-auth",  # local only: the pushes carry no tokens here
    "SWEEPER": "sweeper.InProcSweeper",
}

# The confirmation "email" is printed (the test collects it instead).
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = "shop@example.com"
