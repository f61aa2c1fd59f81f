"""A sweep's memory stays flat whatever the backlog (tracemalloc peak)."""

from __future__ import annotations

import asyncio
import random
import tracemalloc

import pytest

import tq
from sweeper import InProcSweeper
from tests import _sweeping as sw
from tqtesting import FakeClock, MemoryStore

# A reminder held in memory costs ~550 bytes, its decoded submission ~300
# more: a sweep that held its backlog would need ~8.5 MB for 10,000 and
# ~85 MB for 100,000. A sweep holds at most its scans' keys (shards x
# tasks_per_scan, ~190 bytes each) and its batches (concurrent batches x
# batch size reminders, decoded), whatever the backlog:
# * default tunables: 16 x 2,048 keys (~6 MB) + 8 x 512 reminders (~3.5 MB);
# * SMALL tunables: 4 x 256 keys + 2 x 64 reminders (well under 1 MB).
DEFAULT_BOUND = 16 * 1024 * 1024
SMALL = {
    "sweep_shards": 4,
    "tasks_per_scan": 256,
    "submit_batch_size": 64,
    "submit_concurrent_batches": 2,
    "submit_concurrency": 4,
}
SMALL_BOUND = 4 * 1024 * 1024


class Noop:
    def submit(self, sub: tq.Submission) -> None:
        pass

    async def submit_async(self, sub: tq.Submission) -> None:
        pass


def sweep_peak(n: int, mode: str, **tunables: int) -> int:
    """Sweeps a backlog of `n` stale reminders; returns the tracemalloc peak of the sweep."""
    clock = FakeClock()
    with tq.clock.use_clock(clock):
        store = MemoryStore()
        sweeper = InProcSweeper(stores=[store], **tunables)
        disp = sw.dispatcher(submitter=Noop(), sweeper=sweeper)
        template = sw.reminders_for(disp, store, ["x"], deadline=clock.now())[0]
        rng = random.Random(n)
        keys = {rng.getrandbits(128): None for _ in range(n)}
        store.put_reminders(sw.clones(template, keys, clock.now()))
        assert store.count_reminders() == (n, 0)
        tracemalloc.start()
        try:
            if mode == "sync":
                disp.sweep()
            else:
                asyncio.run(disp.sweep_async())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert store.count_reminders() == (0, 0)
        assert sweeper.last_stats is not None
        assert sweeper.last_stats.submitted == n
    return peak


def test_sweeping_10k_reminders_holds_far_less_than_the_backlog() -> None:
    peak = sweep_peak(10_000, "sync", **SMALL)
    assert peak < SMALL_BOUND


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sweeping_100k_reminders_holds_a_bounded_amount_of_memory(mode: str) -> None:
    peak = sweep_peak(100_000, mode)
    print(f"\n{mode} sweep of 100,000 reminders: tracemalloc peak {peak / 1e6:.1f} MB")
    assert peak < DEFAULT_BOUND
