"""The SQL outbox: reminders in PostgreSQL or SQLite through SQLAlchemy 2.

Create one `SQLStore` per database at start-up (it registers itself, so the
helpers and sweepers find it), create the tables once, then add tasks
inside a transaction made ambient by a helper::

    store = tq.txn.sql.SQLStore(engine)
    store.create_schema()

    with tq.txn.sql.transaction(Session) as session:   # a sessionmaker
        session.add(Order(...))
        disp.add_task(tq.Task(payload=pb.SendEmail(to="a@example.com")))

Helpers: `transaction(sessionmaker or Engine)`, `transaction_async(
async_sessionmaker)`, and `bind(session)` for a Session or AsyncSession you
commit yourself. The reminders are written in your transaction; the tasks
are submitted right after it commits (the happy path), and by the sweeper if
the process dies first. A rollback submits nothing.

Requires SQLAlchemy 2 (the `tq[sql]` extra) and, for PostgreSQL, psycopg 3
(`tq[postgres]`). See docs/outbox-sql.md.
"""

from __future__ import annotations

from tq.txn.sql._helpers import bind, store_for, transaction, transaction_async
from tq.txn.sql._schema import SCHEMA_VERSION, create_schema, schema_sql
from tq.txn.sql._store import DEFAULT_MAX_PAYLOAD, SQLStore
from tq.txn.sql._transaction import SQLTransaction, drain

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "SCHEMA_VERSION",
    "SQLStore",
    "SQLTransaction",
    "bind",
    "create_schema",
    "drain",
    "schema_sql",
    "store_for",
    "transaction",
    "transaction_async",
]
