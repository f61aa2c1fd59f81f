"""Several replicas on PostgreSQL, then PostgreSQL restarted under them.

One fleet serves the module: 4 app processes under uvicorn, 2 sweepers
(`tq sweep --loop`) and 2 database-queue worker loops (`tq worker`: one
process in CI, two with TQ_LONG=1), on a
PostgreSQL cluster of the test's own. Each key of a burst is one
transaction on some replica: a business row and a TRANSACTIONAL task,
written as a reminder in the outbox. The happy path submits most tasks to
the database queue right after the commit; a fifth of them it fails to
submit for good (half of those after the task was created: the caller
cannot tell), so the two sweepers, overlapping, submit them again. Workers
push every task over HTTP, with an OIDC token, to whichever replica takes
the connection; the handler records each delivery.

1. A calm burst: every committed key is delivered exactly once, nothing
   else is, the queue holds one task per key (names absorbed every second
   submission), no reminder is left.
2. A burst during which PostgreSQL is restarted (fast shutdown: sessions
   cut, transactions in flight rolled back; down 2 s): every committed key
   is delivered in the end, nothing rolled back is, and a task delivered
   twice (its "done" was lost in the outage) ran under one name.
   No process died in the outage.

The fleet serves both scenarios, in either order; when the module is done,
every process must stop gracefully (SIGTERM, exit 0), or its teardown fails.

Sizes: 200 keys per burst and one restart; with TQ_LONG=1 5,000 calm keys,
then 3,000 keys with a restart every 500 keys of the second half.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests._longmode import pick, record_figure
from tests.chaos._fleet import PgCluster, closing_cluster
from tests.chaos._scenario import Fleet

pytestmark = pytest.mark.postgres

REPLICAS, SWEEPERS = 4, 2
# Database-queue workers: (processes, worker loops each). CI saves a process.
WORKERS, LOOPS = pick((1, 2), (2, 1))


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with closing_cluster() as c:
        yield c


@pytest.fixture(scope="module")
def fleet(cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("fleet")
    with Fleet(
        cluster.url, logs, replicas=REPLICAS, sweepers=SWEEPERS, workers=WORKERS,
        loops_per_worker=LOOPS,
    ) as f:  # fmt: skip
        yield f
        # Whatever the scenarios did to them, the processes stop gracefully.
        exits = f.stop()
        assert set(exits.values()) == {0}, f"processes that did not stop with 0: {exits}"


def test_replicas_sweepers_and_workers_deliver_each_committed_task_exactly_once(
    fleet: Fleet,
) -> None:
    keys = [f"calm{i}" for i in range(pick(200, 5000))]

    fleet.burst(keys)
    fleet.settle(pick(120, 900))

    out = fleet.outcome(keys)
    events = fleet.events()
    assert out.committed == set(keys)  # no fault here: every transaction commits
    assert out.lost == set()
    assert out.phantoms == set()
    assert out.duplicated == {}
    assert out.task_rows == len(keys)  # names absorbed every second submission
    assert all(len(names) == 1 for names in out.names_per_key.values())
    assert fleet.reminders() == (0, 0)
    assert events["failed_before_create"] > 0  # the sweepers had work
    assert events["failed_after_create"] > 0  # and names to absorb
    # Which replica runs a push is the kernel's choice (uvicorn's workers share
    # one socket, and a worker's keep-alive connection may stay with one of
    # them): recorded below, never asserted.
    record_figure(
        "replicas",
        replicas=REPLICAS,
        sweepers=SWEEPERS,
        worker_processes=WORKERS,
        worker_loops=WORKERS * LOOPS,
        transactions=len(keys),
        committed=len(out.committed),
        swept_after_failed_submit=events["failed_before_create"],
        absorbed_by_name=events["failed_after_create"],
        replicas_that_ran_tasks=out.replicas_that_ran_tasks,
        lost=len(out.lost),
        duplicated=len(out.duplicated),
    )


def test_postgres_restart_mid_burst_loses_no_committed_task_and_no_process_dies(
    fleet: Fleet, cluster: PgCluster
) -> None:
    keys = [f"storm{i}" for i in range(pick(200, 3000))]
    restarts_at = list(range(len(keys) // 2, len(keys), pick(10**9, 500)))
    outages: list[threading.Thread] = []
    before = cluster.restarts

    def during(sent: int) -> None:
        # The restart runs while the next waves of the burst are in flight.
        if restarts_at and sent >= restarts_at[0]:
            restarts_at.pop(0)
            outage = threading.Thread(target=cluster.restart, args=(2.0,))
            outage.start()
            outages.append(outage)

    try:
        fleet.burst(keys, during=during)
    finally:
        for outage in outages:
            outage.join()
    fleet.settle(pick(180, 900))

    out = fleet.outcome(keys)
    assert cluster.restarts - before == len(outages) >= 1
    assert out.lost == set()
    assert out.phantoms == set()
    assert fleet.reminders() == (0, 0)
    assert all(len(names) == 1 for names in out.names_per_key.values())
    record_figure(
        "postgres_restart",
        transactions=len(keys),
        restarts=len(outages),
        committed=len(out.committed),
        failed_during_outage=len(keys) - len(out.committed),
        lost=len(out.lost),
        delivered_twice_under_one_name=len(out.duplicated),
    )
    fleet.check_alive()  # the processes rode the outage out: none died
