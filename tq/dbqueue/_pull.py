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
import time

import sqlalchemy as sa

from tq import clock
from tq._errors import ConfigError, ValidationError
from tq.dbqueue import _byname, _db, _lease, _pick, _queuedb, _reclaim, _wakeup
from tq.dbqueue._lease import MAX_RESULT_BYTES, Leased
from tq.dbqueue._schema import State, from_us, to_us

DEFAULT_LEASE = dt.timedelta(minutes=1)
MAX_PROGRESS_CHARS = 64 * 1024
"""The most a heartbeat's progress may hold."""


@dataclasses.dataclass(frozen=True, slots=True)
class PulledTask:
    """A leased task of a pull queue: its request and the attempt's facts.

    `retry_count` counts earlier attempts; `lease_expires` is when the lease
    runs out unless extended; `duration` is how long the lease was taken for
    (a heartbeat without a duration extends by as much).
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
    priority: int = 0
    tag: str | None = None
    duration: dt.timedelta = DEFAULT_LEASE


def _pulled(t: Leased, duration: dt.timedelta) -> PulledTask:
    return PulledTask(
        queue=t.queue, name=t.name, task_class=t.task_class, url=t.url, method=t.method,
        headers=dict(t.headers), body=t.body, eta=from_us(t.eta_us), retry_count=t.attempts - 1,
        lease_expires=from_us(t.lease_expires_us), leased=t, priority=t.priority, tag=t.tag,
        duration=duration,
    )  # fmt: skip


def _data(what: str, value: bytes | str | None) -> bytes | None:
    """A result or failure as stored: bytes (str as UTF-8), at most MAX_RESULT_BYTES."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise ValidationError(f"a task's {what} must be bytes or str, got {type(value).__name__}")
    if len(value) > MAX_RESULT_BYTES:
        raise ValidationError(
            f"a task's {what} is {len(value)} bytes, over the {MAX_RESULT_BYTES} bytes the "
            "database queue keeps; store it elsewhere and keep a reference"
        )
    return value


class PullQueue:
    """A consumer of one pull queue (a queue configured with `pull=True`).

    Args:
      engine: the database queue's database.
      queue: the pull queue's ID; ConfigError on first use if it is not a
        pull queue (workers push those) or does not exist.
      owner: names this consumer's leases; default "<host>:<pid>:<random>".

    Every method is blocking; the `*_async` twins run it in a thread.
    Leasing honours the queue's rate and concurrency limits and pause state
    (leasing one task by name does not: it is an explicit claim).
    """

    def __init__(self, engine: sa.Engine, queue: str, *, owner: str | None = None) -> None:
        _db.check_dialect(engine)
        self.engine = engine
        self.queue = queue
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._checked = False

    def lease(
        self,
        max_tasks: int = 1,
        duration: dt.timedelta = DEFAULT_LEASE,
        *,
        wait: dt.timedelta | None = None,
        poll_interval: float = 0.1,
    ) -> list[PulledTask]:
        """Leases up to `max_tasks` due tasks for `duration`.

        Highest priority first, then by ETA (see docs/dbqueue.md, priorities).
        With `wait`, blocks up to that long (real time) for a task to become
        due instead of returning empty at once: it looks again every
        `poll_interval` seconds, and at once when this process adds a task.
        """
        return self._lease_waiting(max_tasks, duration, None, wait, poll_interval)

    def lease_by_tag(
        self,
        max_tasks: int = 1,
        duration: dt.timedelta = DEFAULT_LEASE,
        tag: str | None = None,
        *,
        wait: dt.timedelta | None = None,
        poll_interval: float = 0.1,
    ) -> list[PulledTask]:
        """Leases up to `max_tasks` due tasks with tag `tag`, by ETA (App Engine's
        LeaseByTag). With `tag=None`, the tag of the oldest due task (the
        untagged tasks when it has none). `wait` as in `lease`."""
        return self._lease_waiting(
            max_tasks, duration, _pick.OLDEST_TAG if tag is None else tag, wait, poll_interval
        )

    def lease_task(self, name: str, duration: dt.timedelta = DEFAULT_LEASE) -> PulledTask:
        """Leases the pending task `name` for `duration`, due or not.

        Raises `LeaseConflict` (with the holder and the lease's end) when
        another consumer holds it, and `TaskNotFound` when no live task has
        that name. Leasing a task this consumer already holds extends the
        lease. An expired lease is taken over (it counts as an attempt).
        """
        self._check()
        leased = _byname.lease_by_name(
            self.engine, self.queue, name, owner=self.owner,
            now_us=to_us(clock.now()), lease_s=duration.total_seconds(),
        )  # fmt: skip
        return _pulled(leased, duration)

    def extend(self, task: PulledTask, duration: dt.timedelta) -> PulledTask | None:
        """Makes the lease last `duration` from now; None if the lease was lost."""
        until_us = to_us(clock.now() + duration)
        if not _lease.extend(self.engine, task.leased, until_us):
            return None
        return _pulled(dataclasses.replace(task.leased, lease_expires_us=until_us), duration)

    def heartbeat(
        self,
        task: PulledTask,
        progress: str | None = None,
        duration: dt.timedelta | None = None,
    ) -> PulledTask | None:
        """The holder reports in: extends the lease by `duration` from now
        (default: the length it was taken for) and stores `progress` (text,
        at most 64 KiB; e.g. JSON), which `Admin` and `tq tasks` show.
        None if the lease was lost (stop working on the task)."""
        if progress is not None and (
            not isinstance(progress, str) or len(progress) > MAX_PROGRESS_CHARS
        ):
            raise ValidationError(
                f"progress must be a str of at most {MAX_PROGRESS_CHARS} characters"
            )
        duration = task.duration if duration is None else duration
        until_us = to_us(clock.now() + duration)
        if not _lease.extend(self.engine, task.leased, until_us, progress):
            return None
        return _pulled(dataclasses.replace(task.leased, lease_expires_us=until_us), duration)

    def complete(self, task: PulledTask, result: bytes | str | None = None) -> bool:
        """The task is done, with an optional `result` (bytes or text, at most 64 KiB;
        kept with the task until retention drops it). False if the lease was lost
        (the task may run again). ValidationError (nothing written) for a result
        too large."""
        data = _data("result", result)
        r = _lease.decide(task.leased, True, None, None, True)
        return self._record(dataclasses.replace(r, data=data))

    def fail(
        self,
        task: PulledTask,
        reason: str = "failed by the consumer",
        details: bytes | str | None = None,
    ) -> bool:
        """The attempt failed: retried after the queue's backoff, or failed for good
        at its retry limits. `reason` is kept as the last error and `details`
        (e.g. a traceback; at most 64 KiB) as the task's failure. False if the
        lease was lost."""
        data = _data("failure", details)
        r = _lease.decide(task.leased, False, None, reason, True)
        return self._record(dataclasses.replace(r, data=data))

    def release(self, task: PulledTask) -> bool:
        """Gives the task back, due now, with no backoff (the lease still counts as an
        attempt). False if the lease was lost."""
        r = _lease.Result(task.leased, State.PENDING, None, None, False, to_us(clock.now()))
        return self._record(dataclasses.replace(r, eta_us=r.now_us))

    async def lease_async(
        self,
        max_tasks: int = 1,
        duration: dt.timedelta = DEFAULT_LEASE,
        *,
        wait: dt.timedelta | None = None,
        poll_interval: float = 0.1,
    ) -> list[PulledTask]:
        return await asyncio.to_thread(
            self._lease_waiting, max_tasks, duration, None, wait, poll_interval
        )

    async def lease_by_tag_async(
        self,
        max_tasks: int = 1,
        duration: dt.timedelta = DEFAULT_LEASE,
        tag: str | None = None,
        *,
        wait: dt.timedelta | None = None,
        poll_interval: float = 0.1,
    ) -> list[PulledTask]:
        return await asyncio.to_thread(
            self.lease_by_tag, max_tasks, duration, tag, wait=wait, poll_interval=poll_interval
        )

    async def lease_task_async(
        self, name: str, duration: dt.timedelta = DEFAULT_LEASE
    ) -> PulledTask:
        return await asyncio.to_thread(self.lease_task, name, duration)

    async def extend_async(self, task: PulledTask, duration: dt.timedelta) -> PulledTask | None:
        return await asyncio.to_thread(self.extend, task, duration)

    async def heartbeat_async(
        self,
        task: PulledTask,
        progress: str | None = None,
        duration: dt.timedelta | None = None,
    ) -> PulledTask | None:
        return await asyncio.to_thread(self.heartbeat, task, progress, duration)

    async def complete_async(self, task: PulledTask, result: bytes | str | None = None) -> bool:
        return await asyncio.to_thread(self.complete, task, result)

    async def fail_async(
        self,
        task: PulledTask,
        reason: str = "failed by the consumer",
        details: bytes | str | None = None,
    ) -> bool:
        return await asyncio.to_thread(self.fail, task, reason, details)

    async def release_async(self, task: PulledTask) -> bool:
        return await asyncio.to_thread(self.release, task)

    def _lease_once(self, max_tasks: int, duration: dt.timedelta, tag: object) -> list[PulledTask]:
        self._check()
        now_us = to_us(clock.now())
        # No worker may be looking after this queue: return its expired leases first.
        _reclaim.reclaim_expired(self.engine, now_us=now_us, queue=self.queue)
        got = _lease.lease(
            self.engine, self.queue, want=max_tasks, owner=self.owner,
            now_us=now_us, default_deadline_s=0.0, grace_s=0.0,
            lease_s=duration.total_seconds(), tag=tag,
        )  # fmt: skip
        return [_pulled(t, duration) for t in got]

    def _lease_waiting(
        self,
        max_tasks: int,
        duration: dt.timedelta,
        tag: object,
        wait: dt.timedelta | None,
        poll_interval: float,
    ) -> list[PulledTask]:
        got = self._lease_once(max_tasks, duration, tag)
        if got or wait is None or wait <= dt.timedelta(0):
            return got
        deadline = time.monotonic() + wait.total_seconds()
        key = _wakeup.key_of(self.engine)
        waiter = _wakeup.subscribe_thread(key)
        try:
            while not got:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                waiter.event.wait(min(poll_interval, left))
                waiter.event.clear()
                got = self._lease_once(max_tasks, duration, tag)
        finally:
            _wakeup.unsubscribe(key, waiter)
        return got

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
