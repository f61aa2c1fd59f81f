"""The store conformance harness: how a store plugs into tests/conformance.

Every store (SQLite, PostgreSQL, Spanner) runs the same scenarios, the
tests in `tests/conformance/test_*.py`. A store of kind `<kind>` takes part
with a module `tests/conformance/harness_<kind>.py` (SQLite and PostgreSQL
share `harness_sql.py`) that provides:

1. A function-scoped pytest fixture named `<kind>_harness` yielding a
   `StoreHarness` over a fresh, empty database: schema created, no
   reminders, no leases, no business rows. It cleans up after the test and
   calls `pytest.skip(...)` with a clear message when its service (binary,
   emulator) is absent.
2. A plain function `open_child_harness(arg: str) -> StoreHarness`, named by
   `StoreHarness.child_spec()`, that a child process (no pytest there) calls
   to open a harness over the same database as the parent's.

`tests/conformance/conftest.py` imports the `<kind>_harness` fixtures of the
modules that exist and parametrizes the fixture `harness` over `KINDS`; a
kind whose module is absent is skipped, not failed.

The scenarios use only `StoreHarness`, the `ReminderStore` protocol
(`harness.store`), `tq.Dispatcher` with a recording submitter, and
`tq.txn.current_transaction()`. They never touch a store's tables directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Protocol

from tq.txn import ReminderStore

KINDS = ("sqlite", "postgres", "mariadb", "spanner")


class RowWriter(Protocol):
    """Writes business rows in the harness's current transaction."""

    def insert_row(self, key: str) -> None:
        """Inserts a row keyed `key` (a primary key) into a business table.

        Inserting a key that exists (committed, or inserted earlier in the same
        transaction) must make the transaction fail: at once (SQL) or at commit
        (Spanner mutations), with the harness's `duplicate_key` exception, and
        nothing of the transaction may be committed.
        """
        ...


@dataclasses.dataclass(frozen=True)
class ChildSpec:
    """How a child process opens a harness over the parent's database.

    The child runs `module.function(arg)` for `factory = "module:function"`,
    with `env` added to its environment (e.g. an emulator's address).
    """

    factory: str
    arg: str
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)


class StoreHarness(Protocol):
    """One store over one fresh database, as the conformance scenarios see it."""

    kind: str
    """One of KINDS."""

    store: ReminderStore
    """The store under test (registered with tq.txn.register_store or not)."""

    duplicate_key: type[Exception]
    """What `run_in_transaction` raises when a row's key is taken (`insert_row`)."""

    def run_in_transaction(self, body: Callable[[RowWriter], None]) -> None:
        """Runs `body` in a new read-write transaction of the store's database.

        While `body` runs, the transaction is ambient
        (`tq.txn.current_transaction()` is not None), so `add_task` writes
        reminders into it. When `body` returns, the transaction commits and the
        happy path (`tq._outbox.after_commit`) runs before this returns. When
        `body` raises, the transaction rolls back and the exception propagates
        unchanged. When the commit fails (e.g. a constraint violation), the
        database's exception propagates and nothing is submitted.

        May call `body` more than once (a retry after an aborted commit); only
        the last attempt's effects may remain. Safe to call from several
        threads at once (each call is its own transaction).
        """
        ...

    def row_keys(self) -> set[str]:
        """The keys of the committed business rows."""
        ...

    def child_spec(self) -> ChildSpec:
        """How a child process opens a harness on this same database."""
        ...
