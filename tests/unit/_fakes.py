"""Small stand-ins for a database and a submitter, for unit tests of tq's core."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Sequence

import grpc

import tq
from tq._reminder import Reminder
from tq.txn import Lease, PendingTask, ReminderKey, ambient


class RecordingSubmitter:
    """Keeps every submission; raises the queued errors first, one per call."""

    def __init__(self, *errors: BaseException | None) -> None:
        self.submitted: list[tq.Submission] = []
        self.calls = 0
        self.async_calls = 0
        self._errors = list(errors)

    def _take(self, sub: tq.Submission) -> None:
        if self._errors:
            err = self._errors.pop(0)
            if err is not None:
                raise err
        self.submitted.append(sub)

    def submit(self, submission: tq.Submission) -> None:
        self.calls += 1
        self._take(submission)

    async def submit_async(self, submission: tq.Submission) -> None:
        self.async_calls += 1
        self._take(submission)


def submit_error(code: grpc.StatusCode) -> tq.SubmitError:
    return tq.SubmitError(code, f"scripted {code.name}")


class FakeStore:
    """A dict standing for a reminders table."""

    def __init__(self, max_payload_size: int = 102400) -> None:
        self.rows: dict[str, Reminder] = {}
        self.deleted: list[str] = []
        self.fail_delete = False
        self.fail_park = False
        self._max = max_payload_size

    @property
    def name(self) -> str:
        return "fake"

    @property
    def max_payload_size(self) -> int:
        return self._max

    def delete_reminders(self, ids: Sequence[str]) -> None:
        if self.fail_delete:
            raise OSError("database went away")
        for i in ids:
            self.rows.pop(i, None)
            self.deleted.append(i)

    def fetch_reminder_keys(self, low: str, high: str, limit: int) -> list[ReminderKey]:
        keys = sorted(k for k in self.rows if low <= k < high and not self.rows[k].parked)
        return [ReminderKey(k, self.rows[k].fresh_until) for k in keys[:limit]]

    def fetch_reminders(self, ids: Sequence[str]) -> list[Reminder]:
        return [self.rows[i] for i in ids if i in self.rows]

    def park_reminder(self, reminder_id: str, extra: bytes) -> None:
        if self.fail_park:
            raise OSError("database went away")
        r = self.rows[reminder_id]
        self.rows[reminder_id] = Reminder(r.id, r.fresh_until, r.payload, extra)

    def list_parked(self, limit: int, after: str = "") -> list[Reminder]:
        return [r for k, r in sorted(self.rows.items()) if r.parked and k > after][:limit]

    def unpark_reminder(self, reminder_id: str, fresh_until: dt.datetime) -> bool:
        r = self.rows.get(reminder_id)
        if r is None:
            return False
        self.rows[reminder_id] = Reminder(r.id, fresh_until, r.payload)
        return True

    def count_reminders(self) -> tuple[int, int]:
        parked = sum(1 for r in self.rows.values() if r.parked)
        return len(self.rows) - parked, parked

    def take_lease(
        self,
        section: str,
        ranges: Sequence[tuple[int, int]],
        expires_at: dt.datetime,
        now: dt.datetime,
    ) -> Lease:
        return Lease(section, "lease", tuple(ranges), expires_at)

    def release_lease(self, section: str, lease_id: str) -> None:
        pass


class FakeTxn:
    """A transaction on a FakeStore: reminders land in `saved` until `commit`."""

    def __init__(self, store: FakeStore, deadline: dt.datetime | None = None) -> None:
        self._store = store
        self._deadline = deadline
        self.saved: list[PendingTask] = []

    @property
    def store(self) -> FakeStore:
        return self._store

    @property
    def deadline(self) -> dt.datetime | None:
        return self._deadline

    def save_reminder(self, pending: PendingTask) -> None:
        self.saved.append(pending)

    def commit(self) -> list[PendingTask]:
        for p in self.saved:
            self._store.rows[p.reminder.id] = p.reminder
        return list(self.saved)


@contextlib.contextmanager
def in_txn(store: FakeStore, deadline: dt.datetime | None = None) -> Iterator[FakeTxn]:
    """An ambient FakeTxn for the block (not committed: call `commit()`)."""
    txn = FakeTxn(store, deadline)
    with ambient(txn):
        yield txn
