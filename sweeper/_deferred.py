"""A store whose deletes wait for the end of a batch.

`tq._outbox.submit_reminder` deletes each reminder right after its submit:
one store transaction per reminder. The sweeper hands it this view of the
store instead, which only notes the IDs, and deletes a whole batch in one
call afterwards. Everything else goes straight to the real store.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Sequence

from tq._reminder import Reminder
from tq.txn import Lease, ReminderKey, ReminderStore

log = logging.getLogger("tq.sweeper")


class DeferredDeletes:
    """`store`, except that `delete_reminders` collects IDs until `flush()`."""

    def __init__(self, store: ReminderStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._ids: list[str] = []

    def flush(self) -> int:
        """Deletes what was collected (blocking); returns how many. Never raises."""
        with self._lock:
            ids, self._ids = self._ids, []
        if not ids:
            return 0
        try:
            self._store.delete_reminders(ids)
        except Exception:
            # The tasks exist; a later sweep resubmits them and their names absorb it.
            log.exception("tq sweep: could not delete %d submitted reminders", len(ids))
        return len(ids)

    @property
    def name(self) -> str:
        return self._store.name

    @property
    def max_payload_size(self) -> int:
        return self._store.max_payload_size

    def delete_reminders(self, ids: Sequence[str]) -> None:
        with self._lock:
            self._ids.extend(ids)

    def fetch_reminder_keys(self, low: str, high: str, limit: int) -> list[ReminderKey]:
        return self._store.fetch_reminder_keys(low, high, limit)

    def fetch_reminders(self, ids: Sequence[str]) -> list[Reminder]:
        return self._store.fetch_reminders(ids)

    def park_reminder(self, reminder_id: str, extra: bytes) -> None:
        self._store.park_reminder(reminder_id, extra)

    def list_parked(self, limit: int, after: str = "") -> list[Reminder]:
        return self._store.list_parked(limit, after)

    def unpark_reminder(self, reminder_id: str, fresh_until: dt.datetime) -> bool:
        return self._store.unpark_reminder(reminder_id, fresh_until)

    def count_reminders(self) -> tuple[int, int]:
        return self._store.count_reminders()

    def take_lease(
        self,
        section: str,
        ranges: Sequence[tuple[int, int]],
        expires_at: dt.datetime,
        now: dt.datetime,
    ) -> Lease:
        return self._store.take_lease(section, ranges, expires_at, now)

    def release_lease(self, section: str, lease_id: str) -> None:
        self._store.release_lease(section, lease_id)
