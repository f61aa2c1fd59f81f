"""The migrations make tq's tables exactly as tq's own schema code does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def test_the_models_and_the_migrations_agree(configure: Callable[..., Any]) -> None:
    from django.core.management import call_command

    configure()
    call_command("makemigrations", "tq", "--check", "--dry-run", verbosity=0)


@pytest.mark.parametrize("alias", ["default", "pg"])
def test_tqs_own_schema_code_finds_the_tables_current(
    configure: Callable[..., Any], alias: str
) -> None:
    from tq import dbqueue
    from tq.contrib.django import _databases, _schema
    from tq.txn import sql

    configure()
    engine = _databases.engine_for(alias)
    assert sql.create_schema(engine) == sql.SCHEMA_VERSION  # nothing left to migrate
    dbqueue.create_schema(engine)
    assert dbqueue.schema_version(engine) == dbqueue.SCHEMA_VERSION
    from django.db import connections

    assert _schema.apply(connections[alias])  # and running the migration step again is harmless
