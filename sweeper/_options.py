"""The sweeper's tunables, shared by both modes, and what a sweep counts."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading

from sweeper._scan import MAX_DEPTH, SECONDARY_SCAN_SHARDS, TASKS_PER_SCAN, ScanParams

SWEEP_SHARDS = 16
SUBMIT_BATCH_SIZE = 512
SUBMIT_CONCURRENT_BATCHES = 8
SUBMIT_CONCURRENCY = 32
LEASE_DURATION = dt.timedelta(minutes=1)


@dataclasses.dataclass(frozen=True, slots=True)
class SweepOptions:
    """Tunables of a sweep (see `InProcSweeper` for what each means)."""

    sweep_shards: int = SWEEP_SHARDS
    tasks_per_scan: int = TASKS_PER_SCAN
    secondary_scan_shards: int = SECONDARY_SCAN_SHARDS
    max_depth: int = MAX_DEPTH
    scan_timeout_s: float | None = None
    submit_batch_size: int = SUBMIT_BATCH_SIZE
    submit_concurrent_batches: int = SUBMIT_CONCURRENT_BATCHES
    submit_concurrency: int = SUBMIT_CONCURRENCY
    lease_duration: dt.timedelta = LEASE_DURATION
    use_leases: bool = True

    def __post_init__(self) -> None:
        for name in (
            "sweep_shards",
            "submit_batch_size",
            "submit_concurrent_batches",
            "submit_concurrency",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lease_duration <= dt.timedelta(0):
            raise ValueError(f"lease_duration must be positive, got {self.lease_duration}")
        self.scan_params()  # validates the scan tunables

    def scan_params(self) -> ScanParams:
        return ScanParams(
            tasks_per_scan=self.tasks_per_scan,
            secondary_scan_shards=self.secondary_scan_shards,
            max_depth=self.max_depth,
            timeout_s=self.scan_timeout_s,
        )


@dataclasses.dataclass(slots=True)
class SweepStats:
    """What one sweep (or one sweep task) did; safe to update from threads.

    Attributes:
      scans: partitions read; scan_errors: reads that failed (not timeouts).
      follow_ups: follow-up scans planned; deepest: the deepest level scanned.
      stale: stale reminders found; not_leased: of those, left to another
        sweeper holding the lease on their range.
      submitted, kept, parked: outcomes of the submits (kept: a transient
        failure left the reminder for the next sweep; parked: a permanent one).
      gone: stale reminders that disappeared before they were read back
        (the happy path or another sweeper got there first).
    """

    scans: int = 0
    scan_errors: int = 0
    follow_ups: int = 0
    deepest: int = 0
    stale: int = 0
    not_leased: int = 0
    submitted: int = 0
    kept: int = 0
    parked: int = 0
    gone: int = 0
    _lock: threading.Lock = dataclasses.field(
        default_factory=threading.Lock, repr=False, compare=False
    )

    def reached(self, level: int) -> None:
        with self._lock:
            self.deepest = max(self.deepest, level)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)
