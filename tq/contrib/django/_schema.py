"""tq's own tables in a Django database, created by the app's migrations.

`apply(connection)` runs tq's DDL (the outbox's `tq_reminders`,
`tq_leases` and `tq_schema_version`; the database queue's `tq_tasks`,
`tq_queues`, `tq_recurring`, `tq_cron` and `tq_dbqueue_meta`) through a
Django connection, inside the migration's transaction, and brings recorded
versions up to this tq's. Every statement is idempotent, so a release of
tq that changes a schema ships a migration that calls `apply` again. The
tables are the ones `tq.txn.sql.create_schema` and
`tq.dbqueue.create_schema` make, so tq's sweeper, workers and `tq`
command use them as they are.
"""

from __future__ import annotations

import logging
from typing import Any

from tq import dbqueue
from tq.txn.sql import _schema as outbox

log = logging.getLogger("tq.contrib.django")

_DIALECTS = {"postgresql": "postgresql", "sqlite": "sqlite"}


def apply(connection: Any) -> bool:
    """Creates or upgrades tq's tables on a Django connection; False if its vendor has none.

    Raises RuntimeError when the database records a newer schema than
    this tq knows.
    """
    dialect = _DIALECTS.get(connection.vendor)
    if dialect is None:
        log.warning(
            "tq: database %r is %s: tq's tables live on PostgreSQL or SQLite; none created",
            connection.alias,
            connection.vendor,
        )
        return False
    with connection.cursor() as cursor:
        for stmt in outbox.statements(outbox.schema_sql(dialect)):
            cursor.execute(stmt)
        cursor.execute(
            "SELECT version FROM tq_schema_version WHERE component = %s", [outbox.COMPONENT]
        )
        version = int(cursor.fetchone()[0])
        if version > outbox.SCHEMA_VERSION:
            raise RuntimeError(
                f"tq's outbox tables in {connection.alias!r} are version {version}, newer than "
                f"this tq knows ({outbox.SCHEMA_VERSION}); upgrade tq"
            )
        for target in range(version + 1, outbox.SCHEMA_VERSION + 1):
            for stmt in outbox._MIGRATIONS[target][dialect]:
                cursor.execute(stmt)
        cursor.execute(
            "UPDATE tq_schema_version SET version = %s WHERE component = %s",
            [max(version, outbox.SCHEMA_VERSION), outbox.COMPONENT],
        )
        for stmt in outbox.statements(dbqueue.schema_sql(dialect)):
            cursor.execute(stmt)
        cursor.execute('SELECT value FROM tq_dbqueue_meta WHERE "key" = %s', ["schema_version"])
        found = int(cursor.fetchone()[0])
        if found > dbqueue.SCHEMA_VERSION:
            raise RuntimeError(
                f"tq's database queue tables in {connection.alias!r} are version {found}, newer "
                f"than this tq knows ({dbqueue.SCHEMA_VERSION}); upgrade tq"
            )
        # Every database queue migration so far only added tables, created above.
        cursor.execute(
            'UPDATE tq_dbqueue_meta SET value = %s WHERE "key" = %s',
            [str(dbqueue.SCHEMA_VERSION), "schema_version"],
        )
    return True


def create_tables(apps: Any, schema_editor: Any) -> None:
    """The migrations' RunPython step."""
    apply(schema_editor.connection)
