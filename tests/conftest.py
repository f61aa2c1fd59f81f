"""Shared pytest configuration. Service fixtures are plugins in tests/_services/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import tq.txn

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


@pytest.fixture(autouse=True)
def _stores_registered_by_a_test_end_with_it() -> Iterator[None]:
    """tq.txn's registry of outbox stores is the process's: a store a test left
    registered (on a database gone since) would reach the next tests' sweeps and
    delete_task. Stores of wider-scoped fixtures, set up first, stay."""
    before = {s.name for s in tq.txn.stores()}
    yield
    for store in tq.txn.stores():
        if store.name not in before:
            tq.txn.unregister_store(store.name)
