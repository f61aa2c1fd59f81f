"""The pull API: consumers lease tasks of a pull queue and say what became of them.

Like Cloud Tasks' pull queues (v2beta2 LeaseTasks, RenewLease,
AcknowledgeTask, CancelLease): tasks are added as usual (the dispatcher's
requests, to a queue configured with `pull=True`), nobody pushes them, and
a consumer leases them, does the work, and completes or fails each one. A
lease that runs out returns the task to the queue, counted as a failed
attempt, like a worker's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import socket

import sqlalchemy as sa

from tq import clock
from tq._errors import ConfigError
from tq.dbqueue import _db, _lease, _queuedb
from tq.dbqueue._lease import Leased
from tq.dbqueue._schema import State, from_us, to_us

DEFAULT_LEASE = dt.timedelta(minutes=1)


@dataclasses.dataclass(frozen=True, slots=True)
class PulledTask:
    """A leased task of a pull queue: its request and the attempt's facts.

    `retry_count` counts earlier attempts; `lease_expires` is when the lease
    runs out unless extended.
    """

    queue: str
    name: str
    task_class: str
    url: str
    method: str
    headers: dict[str, str]
    body: bytes
    eta: dt.datetime
    retry_count: int
    lease_expires: dt.datetime
    leased: Leased = dataclasses.field(repr=False)


def _pulled(t: Leased) -> PulledTask:
    return PulledTask(
        queue=t.queue, name=t.name, task_class=t.task_class, url=t.url, method=t.method,
        headers=t.headers, body=t.body, eta=from_us(t.eta_us), retry_count=t.attempts - 1,
        lease_expires=from_us(t.lease_expires_us), leased=t,
    )  # fmt: skip


class PullQueue:
    """A consumer of one pull queue (a queue configured with `pull=True`).

    Args:
      engine: the database queue's database.
      queue: the pull queue's ID; ConfigError on first use if it is not a
        pull queue (workers push those) or does not exist.
      owner: names this consumer's leases; default "<host>:<pid>:<random>".

    Every method is blocking; the `*_async` twins run it in a thread.
    Leasing honours the queue's rate and concurrency limits and pause state.
    """

    def __init__(self, engine: sa.Engine, queue: str, *, owner: str | None = None) -> None:
        _db.check_dialect(engine)
        self.engine = engine
        self.queue = queue
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._checked = False

    def lease(self, max_tasks: int = 1, duration: dt.timedelta = DEFAULT_LEASE) -> list[PulledTask]:
        """Leases up to `max_tasks` due tasks, in ETA order, for `duration`."""
        self._check()
        now_us = to_us(clock.now())
        # No worker may be looking after this queue: return its expired leases first.
        _lease.reclaim_expired(self.engine, now_us=now_us, queue=self.queue)
        got = _lease.lease(
            self.engine, self.queue, want=max_tasks, owner=self.owner,
            now_us=now_us, default_deadline_s=0.0, grace_s=0.0,
            lease_s=duration.total_seconds(),
        )  # fmt: skip
        return [_pulled(t) for t in got]

    def extend(self, task: PulledTask, duration: dt.timedelta) -> PulledTask | None:
        """Makes the lease last `duration` from now; None if the lease was lost."""
        until_us = to_us(clock.now() + duration)
        if not _lease.extend(self.engine, task.leased, until_us):
            return None
        return _pulled(dataclasses.replace(task.leased, lease_expires_us=until_us))

    def complete(self, task: PulledTask) -> bool:
        """The task is done; False if the lease was lost (the task may run again)."""
        return self._record(_lease.decide(task.leased, True, None, None, True))

    def fail(self, task: PulledTask, reason: str = "failed by the consumer") -> bool:
        """The attempt failed: retried after the queue's backoff, or failed for good
        at its retry limits. False if the lease was lost."""
        return self._record(_lease.decide(task.leased, False, None, reason, True))

    def release(self, task: PulledTask) -> bool:
        """Gives the task back, due now, with no backoff (the lease still counts as an
        attempt). False if the lease was lost."""
        r = _lease.Result(task.leased, State.PENDING, None, None, False, to_us(clock.now()))
        return self._record(dataclasses.replace(r, eta_us=r.now_us))

    async def lease_async(
        self, max_tasks: int = 1, duration: dt.timedelta = DEFAULT_LEASE
    ) -> list[PulledTask]:
        return await asyncio.to_thread(self.lease, max_tasks, duration)

    async def extend_async(self, task: PulledTask, duration: dt.timedelta) -> PulledTask | None:
        return await asyncio.to_thread(self.extend, task, duration)

    async def complete_async(self, task: PulledTask) -> bool:
        return await asyncio.to_thread(self.complete, task)

    async def fail_async(self, task: PulledTask, reason: str = "failed by the consumer") -> bool:
        return await asyncio.to_thread(self.fail, task, reason)

    async def release_async(self, task: PulledTask) -> bool:
        return await asyncio.to_thread(self.release, task)

    def _record(self, result: _lease.Result) -> bool:
        return _lease.record(self.engine, [result]) == 1

    def _check(self) -> None:
        if self._checked:
            return
        with self.engine.connect() as conn:
            q = _queuedb.get_queue(conn, self.queue)
        if q is None or not q.config.pull:
            raise ConfigError(
                f"queue {self.queue!r} is not a pull queue: configure it with "
                "QueueConfig(name, pull=True) (or 'mode: pull' in queue.yaml)"
            )
        self._checked = True
