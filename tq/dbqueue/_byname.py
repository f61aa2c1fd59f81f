"""Leasing one task by name, with a clear conflict when another holder has it.

The pattern of result stores that hand out work by ID: a consumer claims a
named task for a while; a second claimant learns who holds it and until
when (`LeaseConflict`) instead of getting nothing. A pending task is taken
whatever its ETA; an expired lease is taken over (it counts as an attempt,
as any lease does); the holder itself gets its lease extended.
"""

from __future__ import annotations

import sqlalchemy as sa

from tq._errors import LeaseConflict, TaskNotFound
from tq.dbqueue import _db, _lease, _queuedb
from tq.dbqueue._lease import Leased
from tq.dbqueue._queues import QueueConfig
from tq.dbqueue._schema import State, from_us, tasks

_PENDING = State.PENDING.value
_LEASED = State.LEASED.value


def lease_by_name(
    engine: sa.Engine, queue: str, name: str, *, owner: str, now_us: int, lease_s: float
) -> Leased:
    """Leases the live task `name` of `queue` for `lease_s` seconds; see the module."""
    until_us = now_us + int(lease_s * 1e6)
    key = (tasks.c.queue == queue, tasks.c.name == name)
    look = sa.select(tasks.c.id, tasks.c.state, tasks.c.lease_owner, tasks.c.lease_expires_us)
    look = look.where(*key)
    if not _db.is_sqlite(engine):
        look = look.with_for_update()
    with _db.write_txn(engine) as conn:
        row = conn.execute(look).first()
        if row is None or row.state not in (_PENDING, _LEASED):
            what = "does not exist" if row is None else f"is {row.state}"
            raise TaskNotFound(f"task {name!r} of queue {queue!r} {what}: nothing to lease")
        held = row.state == _LEASED and row.lease_expires_us > now_us
        if held and row.lease_owner != owner:
            until = from_us(row.lease_expires_us)
            raise LeaseConflict(
                f"task {name!r} of queue {queue!r} is leased by {row.lease_owner!r} until "
                f"{until.isoformat()}",
                holder=str(row.lease_owner),
                until=until,
            )
        if held:
            values: dict[str, object] = {"lease_expires_us": until_us}
        else:
            values = {
                "state": _LEASED,
                "lease_owner": owner,
                "lease_expires_us": until_us,
                "attempts": tasks.c.attempts + 1,
                "first_attempt_us": sa.func.coalesce(tasks.c.first_attempt_us, now_us),
                "last_attempt_us": now_us,
            }
        conn.execute(sa.update(tasks).where(tasks.c.id == row.id).values(values))
        got = conn.execute(sa.select(*_lease.LEASED_COLUMNS).where(tasks.c.id == row.id)).one()
        q = _queuedb.get_queue(conn, queue)
    return _lease.leased_of(got, q.config if q is not None else QueueConfig(queue))
