"""A worker's lease rounds: which queues to look at, how many of their tasks to lease.

A round reads every queue (their states, their next ETAs) unless it can
tell where the due tasks are: the queues the last rounds left with more due
tasks (for at most the poll interval after the last read), and those whose
new tasks other processes notified (of queues already known). A wakeup from
this process, or for a queue not known, reads. Queues are taken in turn
from another one each round, so that a busy queue cannot starve the rest.

On PostgreSQL with psycopg 3 a round runs on the worker's own connection
from the event loop (`_lease_pg.Session`); elsewhere, or when that cannot
connect, through the engine in a worker thread (`_lease`). One plan
(`Rounds._plan`, a generator) serves both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Generator, Sequence

import sqlalchemy as sa

from tq import clock
from tq.dbqueue import _lease, _lease_pg
from tq.dbqueue._lease import Leased, Result
from tq.dbqueue._queuedb import QueueState
from tq.dbqueue._schema import to_us

# What a plan is sent after each lease: the tasks leased, whether the lease
# told the ETA of the queue's next pending task, and that ETA (None: none).
_Got = tuple[list[Leased], bool, int | None]


@dataclasses.dataclass(frozen=True, slots=True)
class Round:
    leased: list[Leased]
    full: bool  # some queue had more due tasks than this round took
    next_eta_us: int | None
    carried: bool = False  # the outcomes given to the round were recorded


class Rounds:
    """Leases a worker's rounds and remembers what saves the next ones a look.

    `notified` collects the queues the listener names ("": any); `woke`
    says a wakeup came that no round has acted on yet. `upkeep(now_us)`
    runs first in a round asked to reclaim (in a thread).
    """

    def __init__(
        self,
        engine: sa.Engine,
        queues: Sequence[str] | None,
        *,
        owner: str,
        poll_interval: float,
        batch_size: int,
        default_deadline_s: float,
        grace_s: float,
        upkeep: Callable[[int], object],
    ) -> None:
        self.engine = engine
        self.queues = queues
        self.owner = owner
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.default_deadline_s = default_deadline_s
        self.grace_s = grace_s
        self.upkeep = upkeep
        self.session = _lease_pg.Session(engine) if _lease_pg.usable(engine) else None
        self.notified: set[str] = set()
        self.woke = False
        self.carried = False  # whether the last round's outcomes were recorded (even if it failed)
        self._known: dict[str, QueueState] = {}  # the queues as last read
        self._busy: list[QueueState] = []  # those a full lease left with more due tasks
        self._busy_until = 0.0  # the monotonic time after which they are read again
        self._next_eta: int | None = None
        self._must_read = False
        self._rotation = 0

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.aclose()

    @property
    def carries_outcomes(self) -> bool:
        """Whether `lease_round` can record outcomes (PostgreSQL's own connection)."""
        return self.session is not None and self.session.usable

    async def lease_round(self, free: int, reclaim: bool, outcomes: Sequence[Result] = ()) -> Round:
        """Leases up to `free` tasks; `reclaim` runs the upkeep first and reads every queue.

        `outcomes` (usual ones, `_lease_pg.usual`; only where `carries_outcomes`)
        are recorded with the round's first lease; `Round.carried` says whether
        they were (a round that leases nothing leaves them to the caller).
        """
        woke, self.woke = self.woke, False
        targets = None if reclaim else self._targets(woke)
        session = self.session
        if session is not None and session.usable:
            try:
                return await self._round_pg(session, free, reclaim, targets, outcomes)
            except Exception:
                if session.usable:
                    raise
            # It cannot connect at all (nothing was leased): through the engine.
        return await asyncio.to_thread(self._round, free, reclaim, targets)

    def _targets(self, woke: bool) -> list[QueueState] | None:
        """The queues to lease from without reading them all first; None: read."""
        notified, self.notified = self.notified, set()
        if self._must_read:
            self._must_read = False
            return None
        if (woke and not notified) or not notified.issubset(self._known):
            return None
        busy = self._busy if time.monotonic() < self._busy_until else []
        if not notified:
            return busy or None
        targets = list(busy)
        targets += [self._known[n] for n in sorted(notified.difference(q.name for q in busy))]
        return targets

    def _round(self, free: int, reclaim: bool, targets: list[QueueState] | None) -> Round:
        """A round through the engine (in a worker thread)."""
        now_us = to_us(clock.now())
        if reclaim:
            self.upkeep(now_us)
        found = None if targets is not None else _lease.read_queues(self.engine, self.queues)
        plan = self._plan(free, now_us, targets, found)
        try:
            q, want = next(plan)
            while True:
                got = _lease.lease(
                    self.engine, q.name, want=want, owner=self.owner, now_us=now_us,
                    default_deadline_s=self.default_deadline_s, grace_s=self.grace_s,
                )  # fmt: skip
                q, want = plan.send((got, False, None))
        except StopIteration as stop:
            rnd: Round = stop.value
            return rnd

    async def _round_pg(
        self,
        session: _lease_pg.Session,
        free: int,
        reclaim: bool,
        targets: list[QueueState] | None,
        outcomes: Sequence[Result],
    ) -> Round:
        """A round on the worker's own connection (PostgreSQL: no thread hop)."""
        now_us = to_us(clock.now())
        if reclaim:
            await asyncio.to_thread(self.upkeep, now_us)
        found = None if targets is not None else await session.read_queues(self.queues)
        plan = self._plan(free, now_us, targets, found)
        carried = self.carried = not outcomes
        try:
            q, want = next(plan)
            while True:
                got, after = await session.lease(
                    q.config, want=want, owner=self.owner, now_us=now_us,
                    default_deadline_s=self.default_deadline_s, grace_s=self.grace_s,
                    outcomes=() if carried else outcomes,
                )  # fmt: skip
                carried = self.carried = True
                q, want = plan.send((got, True, after))
        except StopIteration as stop:
            rnd: Round = stop.value
            return dataclasses.replace(rnd, carried=carried) if outcomes else rnd

    def _plan(
        self,
        free: int,
        now_us: int,
        targets: list[QueueState] | None,
        found: list[tuple[QueueState, int | None]] | None,
    ) -> Generator[tuple[QueueState, int], _Got, Round]:
        """Which queues a round leases from and how many tasks of each: yields (queue,
        how many), is sent what that lease got, whether it tells the ETA of the
        queue's next pending task, and that ETA (None: no task); returns the round.

        `found`: every queue as just read (with its next ETA), or None when the
        round leases from `targets` without reading (see `_targets`).
        """
        leased: list[Leased] = []
        full = False
        next_eta: int | None = None
        if found is not None:
            self._known = {q.name: q for q, _ in found}
            self._busy_until = time.monotonic() + self.poll_interval
        else:
            found = [(q, now_us) for q in targets or ()]
            if self._next_eta is not None and self._next_eta > now_us:
                next_eta = self._next_eta  # as last read: a queue waiting for its ETA
        busy: list[QueueState] = []
        # Start at another queue each round, so that a busy queue cannot starve the rest.
        self._rotation = (self._rotation + 1) % max(1, len(found))
        for q, eta in found[self._rotation :] + found[: self._rotation]:
            if eta is None or q.paused or q.config.pull:
                continue
            if eta > now_us:
                next_eta = eta if next_eta is None else min(next_eta, eta)
                continue
            want = min(free - len(leased), self.batch_size)
            if want <= 0:
                full = True
                busy.append(q)
                continue
            got, known, after = yield q, want
            leased.extend(got)
            if len(got) == want:
                full = True
                busy.append(q)
            elif targets is not None and not known:
                self._must_read = full = True  # read at once, for the next ETAs
            elif targets is not None and after is not None and after > now_us:
                next_eta = after if next_eta is None else min(next_eta, after)
                self._next_eta = next_eta
        self._busy = busy
        if targets is None:
            self._next_eta = next_eta
        return Round(leased, full, next_eta)
