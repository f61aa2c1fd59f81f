"""Shared pytest configuration. Service fixtures are plugins in tests/_services/."""

from __future__ import annotations

pytest_plugins: list[str] = [
    "tests._services.cloudtasks",
    "tests._services.pubsub",
    "tests._services.uvicorn_server",
    "tests._services.spanner",
    "tests._services.postgres",
    "tests._services.mariadb",
    "tests._services.chromium",
    "tests._longmode",
    "pytester",
]
