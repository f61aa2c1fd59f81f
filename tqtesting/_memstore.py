"""MemoryStore: a reminder store in memory, for tests with no database."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import datetime as dt
import threading
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence

from tq import _outbox
from tq._errors import TransactionError
from tq._reminder import Reminder
from tq.txn import (
    Lease,
    PendingTask,
    ReminderKey,
    ambient,
    current_transaction,
    subtract_ranges,
)

# As much as the Spanner store's Payload column takes, so that a test on
# MemoryStore refuses what production would.
DEFAULT_MAX_PAYLOAD_SIZE = 102_400


class MemoryStore:
    """A `tq.txn.ReminderStore` in memory, with leases and ambient transactions.

    For unit tests that use TRANSACTIONAL tasks, or a sweeper, without a
    database::

        store = tqtesting.MemoryStore()
        with store.transaction():            # ambient: add_task writes here
            disp.add_task(tq.Task(payload=pb.SendEmail(to="a@example.com")))
        # committed: the happy path submitted the task and deleted its reminder

    `transaction()` (and `transaction_async()` for `async with`) buffers the
    reminders `add_task` writes; on a normal exit it commits them and then
    runs the happy path (`tq._outbox.after_commit`, outside the
    transaction); on an exception it discards them and re-raises. Nested
    transactions are refused (TransactionError).

    Sweepers find the store once registered (`tq.txn.register_store(store)`)
    or when given it (`sweeper.InProcSweeper(stores=[store])`). Every method
    is thread-safe.

    Args:
      name: the store's name, unique among registered stores (default "memory").
      max_payload_size: the largest reminder payload taken, in bytes
        (default 102,400, as the Spanner store).
    """

    def __init__(
        self, name: str = "memory", *, max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE
    ) -> None:
        self._name = name
        self._max_payload_size = max_payload_size
        self._lock = threading.Lock()
        self._rows: dict[str, Reminder] = {}
        self._parked: set[str] = set()
        # IDs in order, rebuilt lazily: new IDs mark it dirty; deleted ones
        # stay behind as gaps (skipped) until they are half of it.
        self._order: list[str] = []
        self._dirty = False
        self._gaps = 0
        self._leases: dict[str, list[Lease]] = {}

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_payload_size(self) -> int:
        return self._max_payload_size

    def __repr__(self) -> str:
        return f"MemoryStore({self._name!r}, {len(self._rows)} reminders)"

    # Transactions.

    @contextlib.contextmanager
    def transaction(self, *, deadline: dt.datetime | None = None) -> Iterator[MemoryTransaction]:
        """An ambient transaction: commits on a normal exit, then runs the happy path.

        `deadline` caps the reminders' fresh_until (as a request deadline would).
        """
        with self._committed(deadline) as txn:
            yield txn
        if txn.pending:
            _outbox.after_commit(self, txn.pending)

    @contextlib.asynccontextmanager
    async def transaction_async(
        self, *, deadline: dt.datetime | None = None
    ) -> AsyncIterator[MemoryTransaction]:
        """Like `transaction`, for `async with`; the happy path runs async."""
        with self._committed(deadline) as txn:
            yield txn
        if txn.pending:
            await _outbox.after_commit_async(self, txn.pending)

    @contextlib.contextmanager
    def _committed(self, deadline: dt.datetime | None) -> Iterator[MemoryTransaction]:
        """A transaction ambient in the block, committed after a normal exit (both twins')."""
        txn = self._begin(deadline)
        try:
            with ambient(txn):
                yield txn
        finally:
            txn.closed = True
        self._commit(txn)

    def _begin(self, deadline: dt.datetime | None) -> MemoryTransaction:
        if current_transaction() is not None:
            raise TransactionError("MemoryStore: a transaction is open already; nesting is refused")
        return MemoryTransaction(self, deadline)

    def _commit(self, txn: MemoryTransaction) -> None:
        self.put_reminders(p.reminder for p in txn.pending)

    # Direct access for tests.

    def put_reminders(self, reminders: Iterable[Reminder]) -> None:
        """Writes reminders as a committed transaction would (no happy path)."""
        with self._lock:
            for r in reminders:
                if r.id not in self._rows:
                    self._dirty = True
                self._rows[r.id] = r
                if r.parked:
                    self._parked.add(r.id)
                else:
                    self._parked.discard(r.id)

    def reminders(self) -> list[Reminder]:
        """Every reminder, parked ones included, by ID."""
        with self._lock:
            return [self._rows[k] for k in sorted(self._rows)]

    def leases(self, section: str | None = None) -> list[Lease]:
        """The leases held now (of one section, or all), expired ones included."""
        with self._lock:
            if section is not None:
                return list(self._leases.get(section, ()))
            return [lease for held in self._leases.values() for lease in held]

    # The ReminderStore protocol.

    def delete_reminders(self, ids: Sequence[str]) -> None:
        with self._lock:
            for rid in ids:
                if self._rows.pop(rid, None) is not None:
                    self._parked.discard(rid)
                    self._gaps += 1

    def fetch_reminder_keys(self, low: str, high: str, limit: int) -> list[ReminderKey]:
        with self._lock:
            self._reindex()
            out: list[ReminderKey] = []
            i = bisect.bisect_left(self._order, low)
            while i < len(self._order) and len(out) < limit:
                rid = self._order[i]
                if rid >= high:
                    break
                r = self._rows.get(rid)
                if r is not None and rid not in self._parked:
                    out.append(ReminderKey(rid, r.fresh_until))
                i += 1
            return out

    def _reindex(self) -> None:
        if self._dirty or self._gaps > len(self._order) // 2:
            self._order = sorted(self._rows)
            self._dirty = False
            self._gaps = 0

    def fetch_reminders(self, ids: Sequence[str]) -> list[Reminder]:
        with self._lock:
            return [r for r in map(self._rows.get, ids) if r is not None]

    def park_reminder(self, reminder_id: str, extra: bytes) -> None:
        with self._lock:
            r = self._rows.get(reminder_id)
            if r is not None:
                self._rows[reminder_id] = dataclasses.replace(r, extra=extra)
                self._parked.add(reminder_id)

    def list_parked(self, limit: int, after: str = "") -> list[Reminder]:
        with self._lock:
            ids = sorted(rid for rid in self._parked if rid > after)[:limit]
            return [self._rows[rid] for rid in ids]

    def unpark_reminder(self, reminder_id: str, fresh_until: dt.datetime) -> bool:
        with self._lock:
            r = self._rows.get(reminder_id)
            if r is None:
                return False
            self._rows[reminder_id] = dataclasses.replace(r, extra=b"", fresh_until=fresh_until)
            self._parked.discard(reminder_id)
            return True

    def count_reminders(self) -> tuple[int, int]:
        with self._lock:
            return len(self._rows) - len(self._parked), len(self._parked)

    def take_lease(
        self,
        section: str,
        ranges: Sequence[tuple[int, int]],
        expires_at: dt.datetime,
        now: dt.datetime,
    ) -> Lease:
        with self._lock:
            held = [lease for lease in self._leases.get(section, ()) if lease.expires_at > now]
            free = subtract_ranges(ranges, [r for lease in held for r in lease.ranges])
            lease = Lease(section, uuid.uuid4().hex, tuple(free), expires_at)
            if free:
                held.append(lease)
            if held:
                self._leases[section] = held
            else:
                self._leases.pop(section, None)
            return lease

    def release_lease(self, section: str, lease_id: str) -> None:
        with self._lock:
            held = [x for x in self._leases.get(section, ()) if x.lease_id != lease_id]
            if held:
                self._leases[section] = held
            else:
                self._leases.pop(section, None)


class MemoryTransaction:
    """The ambient transaction of a `MemoryStore` (see `MemoryStore.transaction`)."""

    def __init__(self, store: MemoryStore, deadline: dt.datetime | None) -> None:
        self._store = store
        self._deadline = deadline
        self.pending: list[PendingTask] = []
        """The reminders written so far, with what submits them after commit."""
        self.closed = False

    @property
    def store(self) -> MemoryStore:
        return self._store

    @property
    def deadline(self) -> dt.datetime | None:
        return self._deadline

    def save_reminder(self, pending: PendingTask) -> None:
        if self.closed:
            raise TransactionError("MemoryStore: the transaction is over; open a new one")
        self.pending.append(pending)
