"""The Spanner store in the conformance suite (see harness.py), on the emulator."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.api_core.exceptions import AlreadyExists

import tq
from tests._services.spanner import CLIENT_ENV, SpannerEmulator, open_client
from tests.conformance.harness import ChildSpec, RowWriter
from tq.txn.spanner import SpannerStore

ROWS = "ConformanceRows"
ROWS_DDL = f"CREATE TABLE {ROWS} (Key STRING(MAX) NOT NULL) PRIMARY KEY (Key)"
STORE_NAME = "spanner-conformance"
# The emulator suggests no pause before re-running an aborted transaction;
# the client's own default (2**n seconds) would make concurrent scenarios slow.
RETRY_DELAY_S = 0.01


class _Rows:
    """Business rows as insert mutations (a duplicate key fails the commit)."""

    def __init__(self, transaction: Any) -> None:
        self._transaction = transaction

    def insert_row(self, key: str) -> None:
        self._transaction.insert(ROWS, ["Key"], [[key]])


class SpannerHarness:
    """A SpannerStore over one emulator database with a business table."""

    kind = "spanner"
    duplicate_key = AlreadyExists

    def __init__(self, database: Any, env: dict[str, str]) -> None:
        self.database = database
        self.store = SpannerStore(database, name=STORE_NAME, retry=RETRY_DELAY_S)
        self._env = env

    def run_in_transaction(self, body: Callable[[RowWriter], None]) -> None:
        self.store.run_in_transaction(lambda transaction: body(_Rows(transaction)))

    def row_keys(self) -> set[str]:
        with self.database.snapshot() as snap:
            return {r[0] for r in snap.execute_sql(f"SELECT Key FROM {ROWS}")}

    def child_spec(self) -> ChildSpec:
        return ChildSpec(
            factory=f"{__name__}:open_child_harness", arg=self.database.name, env=self._env
        )

    def close(self) -> None:
        tq.txn.unregister_store(STORE_NAME)


@pytest.fixture
def spanner_harness(spanner_emulator: SpannerEmulator) -> Iterator[SpannerHarness]:
    """A harness over a fresh emulator database (skips where the emulator is absent)."""
    db = spanner_emulator.create_database(extra_ddl=[ROWS_DDL])
    h = SpannerHarness(db, dict(spanner_emulator.env))
    try:
        yield h
    finally:
        h.close()
        spanner_emulator.drop_database(db)


def open_child_harness(arg: str) -> SpannerHarness:
    """Opens the harness on database `arg` (its full name) in a child process."""
    os.environ.update(CLIENT_ENV)
    _, project, _, instance_id, _, database_id = arg.split("/")
    client = open_client(os.environ["SPANNER_EMULATOR_HOST"], project)
    db = client.instance(instance_id).database(database_id)
    return SpannerHarness(
        db, {"SPANNER_EMULATOR_HOST": os.environ["SPANNER_EMULATOR_HOST"], **CLIENT_ENV}
    )
