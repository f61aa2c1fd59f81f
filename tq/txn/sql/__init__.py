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

Or, once at start-up, `instrument(Session)` (a sessionmaker, an
async_sessionmaker, a scoped session, an Engine or an AsyncEngine): then
every ordinary transaction begun from it (`with Session.begin():`,
`engine.begin()`, autobegin then `commit()`) is one `add_task` writes into.
Where tq sees a Session in a transaction it was not told about, `add_task`
refuses (`tq.TransactionError`) rather than submit a task that would run
even if that transaction rolled back; `tq.txn.outside_transaction()`
submits regardless.

Effectively-once handlers: `once(Session)` (and `once_async`) runs a
handler's transaction with the task's done marker in it, so a redelivery of
a task whose effects committed runs nothing; `mark_done` writes the marker
in a transaction of your own. `expire_markers` deletes expired markers.

Requires SQLAlchemy 2 (the `tq[sql]` extra) and, for PostgreSQL, psycopg 3
(`tq[postgres]`). See docs/outbox-sql.md.
"""

from __future__ import annotations

from tq.txn.sql import _finder  # noqa: F401  (registers the finder of Session transactions)
from tq.txn.sql._helpers import bind, store_for, transaction, transaction_async
from tq.txn.sql._instrument import instrument, is_instrumented, uninstrument
from tq.txn.sql._markers import count_markers, expire_markers, mark_done, mark_done_async
from tq.txn.sql._once import once, once_async
from tq.txn.sql._schema import SCHEMA_VERSION, create_schema, schema_sql
from tq.txn.sql._store import DEFAULT_MAX_PAYLOAD, SQLStore
from tq.txn.sql._transaction import SQLTransaction, drain

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "SCHEMA_VERSION",
    "SQLStore",
    "SQLTransaction",
    "bind",
    "count_markers",
    "create_schema",
    "drain",
    "expire_markers",
    "instrument",
    "is_instrumented",
    "mark_done",
    "mark_done_async",
    "once",
    "once_async",
    "schema_sql",
    "store_for",
    "transaction",
    "transaction_async",
    "uninstrument",
]
