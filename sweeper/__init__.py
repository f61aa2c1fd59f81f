"""sweeper: finding reminders the happy path left behind, and submitting them.

A reminder outlives its transaction's happy path when the process dies
between commit and submit, or the submit fails for a while. Once past its
`fresh_until` it belongs to the sweeper, which submits it under its own ID
as task name (so a double submission is absorbed by Cloud Tasks).

Two modes implement `tq.Sweeper` (what `Dispatcher.sweep()` runs):

* `InProcSweeper`: the whole sweep in the calling process, with bounded
  concurrency and batches.
* `DistributedSweeper`: one sweep task per shard through the `tq-sweep`
  queue, run by whichever replica Cloud Tasks pushes it to.

Both take leases on key ranges so that overlapping sweeps split the work.
`run_periodically` (async) and `run_periodically_blocking` sweep on a timer
in one process. See docs/sweeping.md for running sweeps in production.
"""

from __future__ import annotations

from sweeper._distributed import DEFAULT_QUEUE, SWEEP_CLASS_ID, DistributedSweeper
from sweeper._inproc import InProcSweeper
from sweeper._loop import DEFAULT_INTERVAL_S, run_periodically, run_periodically_blocking
from sweeper._options import SweepOptions, SweepStats
from sweeper._partition import Partition

__all__ = [
    "DEFAULT_INTERVAL_S",
    "DEFAULT_QUEUE",
    "SWEEP_CLASS_ID",
    "DistributedSweeper",
    "InProcSweeper",
    "Partition",
    "SweepOptions",
    "SweepStats",
    "run_periodically",
    "run_periodically_blocking",
]
