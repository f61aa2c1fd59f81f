"""Several replicas on MariaDB: the calm burst of test_replicas.py, on MySQL.

The same fleet (4 app processes under uvicorn, 2 sweepers, the database
queue's worker loops) on the tests' MariaDB server: each key is one
transaction with a business row and a TRANSACTIONAL task in the outbox; a
fifth of the happy path's submits fail (half after the task was created),
so the sweepers submit them again; workers lease with FOR UPDATE SKIP
LOCKED and push over HTTP. Every committed key is delivered exactly once,
the queue holds one task per key, no reminder is left, and every process
stops gracefully. (The restart scenario stays PostgreSQL's.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._longmode import pick
from tests.chaos._scenario import Fleet

pytestmark = pytest.mark.mariadb

REPLICAS, SWEEPERS = 4, 2
WORKERS, LOOPS = pick((1, 2), (2, 1))


@pytest.fixture
def fleet(mariadb_db_url: str, tmp_path: Path) -> Iterator[Fleet]:
    with Fleet(
        mariadb_db_url, tmp_path, replicas=REPLICAS, sweepers=SWEEPERS, workers=WORKERS,
        loops_per_worker=LOOPS,
    ) as f:  # fmt: skip
        yield f


def test_replicas_on_mariadb_deliver_each_committed_task_exactly_once(fleet: Fleet) -> None:
    keys = [f"calm{i}" for i in range(pick(200, 3000))]

    fleet.burst(keys)
    fleet.settle(pick(120, 900))

    out = fleet.outcome(keys)
    events = fleet.events()
    assert out.committed == set(keys)
    assert out.lost == set()
    assert out.phantoms == set()
    assert out.duplicated == {}
    assert out.task_rows == len(keys)  # names absorbed every second submission
    assert all(len(names) == 1 for names in out.names_per_key.values())
    assert fleet.reminders() == (0, 0)
    assert events["failed_before_create"] > 0  # the sweepers had work
    # Which replica runs a push is the kernel's choice (test_replicas.py).
    assert all(code == 0 for code in fleet.stop().values())
