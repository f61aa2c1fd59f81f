"""Chaos: the outbox and the sweeper under injected faults and killed processes.

N transactions each write a business row and a TRANSACTIONAL task named
after it, while 30 % of database operations and 30 % of submits fail by
injection. Child processes die too: some end themselves between commit
and submit (`tests/chaos/child.py`), others commit in a loop and are
SIGKILLed by this process at a random one of their commits, while their
other threads are anywhere in a transaction, a submit or a delete
(`tests/chaos/committer.py`; what they submitted before dying reaches the
Scheduler, as Cloud Tasks would have it). Then sweeps run (faults still on)
until no reminder is left, and every created task runs through
tqtesting.Scheduler. Whatever committed must run exactly once, by name;
whatever rolled back must never run; and faults of both kinds must have
been injected.

Faults:
* SQL (SQLite, PostgreSQL): SQLAlchemy event hooks on the store's engine
  make 30 % of its transactions fail with OperationalError at a random
  point (one of their first statements, or the commit): the application's
  transactions, the happy path's deletes, the sweeper's scans, reads,
  leases and deletes alike.
* Spanner: 30 % of the transactions raise inside their function (before or
  after `add_task`), and 30 % of the sweeper's store calls fail.
* Submits (all stores): 30 % fail: half before the task is created
  (UNAVAILABLE), half after it was created (DEADLINE_EXCEEDED: the caller
  cannot tell, and submits again later).

Sizes: 500 transactions (Spanner 100); with TQ_LONG=1, 10,000 (Spanner 1,000).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import contextvars
import datetime as dt
import importlib
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

import tq
from sweeper import InProcSweeper
from tests import _sweeping as sw
from tests._longmode import pick, record_figure
from tests.chaos.child import KILLED
from tests.chaos.committer import read_submissions
from tests.conformance.harness import RowWriter, StoreHarness
from tests.testpb import payloads_pb2 as pb
from tq._reminder import Reminder
from tq.txn import Lease, ReminderKey, ReminderStore
from tqtesting import FakeClock, Scheduler, max_executions, parallel, stop_when_drained

FAULT_RATE = 0.3
THREADS = 4
MAX_SWEEPS = 80

# The conformance harnesses bring a fresh database per test; pytest finds
# their fixtures in this module's namespace.
_HARNESSES = {
    "sqlite": "tests.conformance.harness_sql",
    "postgres": "tests.conformance.harness_sql",
    "spanner": "tests.conformance.harness_spanner",
}
for _kind, _module in _HARNESSES.items():
    try:
        globals()[f"{_kind}_harness"] = getattr(
            importlib.import_module(_module), f"{_kind}_harness"
        )
    except (ModuleNotFoundError, AttributeError):  # that store's harness is not there
        pass


class Faults:
    """A coin that comes up `rate` of the time while on, counting by kind (thread-safe)."""

    def __init__(self, rate: float, seed: int) -> None:
        self._rate = rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.on = False
        self.injected: collections.Counter[str] = collections.Counter()

    def roll(self, kind: str) -> bool:
        with self._lock:
            if not self.on or self._rng.random() >= self._rate:
                return False
            self.injected[kind] += 1
            return True

    def choice(self) -> bool:
        with self._lock:
            return self._rng.random() < 0.5

    def randint(self, low: int, high: int) -> int:
        with self._lock:
            return self._rng.randint(low, high)


class InjectedError(Exception):
    """A database operation failed by injection."""


class ChaosCloud:
    """Submits to the Scheduler, except when a fault fails the call before or after."""

    def __init__(self, scheduler: Scheduler, faults: Faults) -> None:
        self._scheduler = scheduler
        self._faults = faults

    def submit(self, sub: tq.Submission) -> None:
        if self._faults.roll("submit"):
            if self._faults.choice():
                raise tq.SubmitError(grpc.StatusCode.UNAVAILABLE, "injected before create")
            try:
                self._scheduler.submit(sub)
            except tq.SubmitError:
                pass
            raise tq.SubmitError(grpc.StatusCode.DEADLINE_EXCEEDED, "injected after create")
        self._scheduler.submit(sub)

    async def submit_async(self, sub: tq.Submission) -> None:
        self.submit(sub)


class FaultyStore:
    """A store whose calls fail `faults`' share of the time (for Spanner)."""

    def __init__(self, store: ReminderStore, faults: Faults) -> None:
        self._store = store
        self._faults = faults

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._faults.roll("store"):
            raise InjectedError(f"{fn.__name__} failed by injection")
        return fn(*args)

    @property
    def name(self) -> str:
        return self._store.name

    @property
    def max_payload_size(self) -> int:
        return self._store.max_payload_size

    def delete_reminders(self, ids: Sequence[str]) -> None:
        self._call(self._store.delete_reminders, ids)

    def fetch_reminder_keys(self, low: str, high: str, limit: int) -> list[ReminderKey]:
        return list(self._call(self._store.fetch_reminder_keys, low, high, limit))

    def fetch_reminders(self, ids: Sequence[str]) -> list[Reminder]:
        return list(self._call(self._store.fetch_reminders, ids))

    def park_reminder(self, reminder_id: str, extra: bytes) -> None:
        self._call(self._store.park_reminder, reminder_id, extra)

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
        result: Lease = self._call(self._store.take_lease, section, ranges, expires_at, now)
        return result

    def release_lease(self, section: str, lease_id: str) -> None:
        self._call(self._store.release_lease, section, lease_id)


def inject_sql_faults(harness: Any, faults: Faults) -> None:
    """Fails `faults`' share of the engine's transactions, each at a random point."""
    engine = harness.engine
    mark = "tq_chaos_fail_after"

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        if faults.roll("db"):
            conn.info[mark] = faults.randint(0, 2)  # statements let through first

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(conn: Any, *args: Any) -> None:
        left = conn.info.get(mark)
        if left is None:
            return
        if left == 0:
            del conn.info[mark]
            raise OperationalError("(injected)", None, InjectedError("statement failed"))
        conn.info[mark] = left - 1

    @event.listens_for(engine, "commit")
    def _commit(conn: Any) -> None:
        if conn.info.pop(mark, None) is not None:
            raise OperationalError("COMMIT", None, InjectedError("commit failed"))

    @event.listens_for(engine, "rollback")
    def _rollback(conn: Any) -> None:
        conn.info.pop(mark, None)


@pytest.fixture(params=list(_HARNESSES))
def harness(request: pytest.FixtureRequest) -> StoreHarness:
    kind: str = request.param
    if f"{kind}_harness" not in globals():
        pytest.skip(f"no conformance harness for {kind}")
    found: StoreHarness = request.getfixturevalue(f"{kind}_harness")
    return found


def kill_children(harness: StoreHarness, count: int, threads: int) -> int:
    """Runs `count` child processes that commit and die before submitting; returns kills."""
    spec = harness.child_spec()
    env = {**os.environ, **spec.env}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.chaos.child",
                spec.factory,
                spec.arg,
                f"child{c}",
                str(threads),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for c in range(count)
    ]
    killed = 0
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == KILLED, out.decode(errors="replace")[-2000:]
        killed += 1
    return killed


def sigkill_children(
    harness: StoreHarness, count: int, scheduler: Scheduler, faults: Faults, tmp: Path
) -> tuple[int, int]:
    """Runs `count` committers, each SIGKILLed at a random one of its commits.

    What each handed to its file "Cloud Tasks" before dying is then created
    in the Scheduler (Cloud Tasks had it; its names absorb what the sweeper
    submits again). Returns (processes killed, commits they reported).
    """
    spec = harness.child_spec()
    env = {**os.environ, **spec.env}
    killed = reported = 0
    for c in range(count):
        submissions = tmp / f"submissions-{c}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.committer", spec.factory, spec.arg,
             f"killed{c}", "3", str(submissions)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        kill_at = faults.randint(1, 12)
        try:
            for line in proc.stdout:
                if line.startswith("committed "):
                    reported += 1
                    kill_at -= 1
                    if kill_at == 0:
                        proc.send_signal(signal.SIGKILL)
                        break
            assert proc.wait(180) == -signal.SIGKILL, "the committer ended before its kill"
            killed += 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        for task_class, request in read_submissions(str(submissions)):
            sub = tq.Submission(request=request, task_class=task_class, created=tq.clock.now())
            with contextlib.suppress(tq.SubmitError):  # a name it has already
                scheduler.submit(sub)
    return killed, reported


def test_every_committed_task_runs_once_and_no_rolled_back_one_does(
    harness: StoreHarness, tmp_path: Path
) -> None:
    kind = harness.kind
    n = pick(100, 1000) if kind == "spanner" else pick(500, 10_000)
    children = pick(3, 20)
    faults = Faults(FAULT_RATE, seed=20261123)
    clock = FakeClock(dt.datetime.now(dt.UTC))
    disp = sw.dispatcher()
    scheduler = Scheduler(disp, clock=clock)
    disp.configure(submitter=ChaosCloud(scheduler, faults))
    ran: collections.Counter[str] = collections.Counter()
    ran_lock = threading.Lock()

    def greet(payload: pb.Greet) -> None:
        with ran_lock:
            ran[payload.name] += 1

    disp.attach_handler("greet", greet)  # type: ignore[arg-type]
    if kind == "spanner":
        sweep_store: ReminderStore = FaultyStore(harness.store, faults)
    else:
        inject_sql_faults(harness, faults)
        sweep_store = harness.store
    sweeper = InProcSweeper(
        stores=[sweep_store], sweep_shards=4, tasks_per_scan=64, max_depth=4,
        submit_batch_size=32, submit_concurrency=8,
    )  # fmt: skip
    disp.configure(sweeper=sweeper)

    killed = kill_children(harness, children, 3)
    sigkilled, sigkilled_commits = sigkill_children(harness, children, scheduler, faults, tmp_path)

    def transaction(i: int) -> bool:
        name = f"order-{i}"

        # Spanner: 30 % of the transactions fail, before or after add_task.
        fail = kind == "spanner" and faults.roll("db")
        early = fail and faults.choice()

        def body(rows: RowWriter) -> None:
            if early:
                raise InjectedError("before add_task")
            rows.insert_row(name)
            disp.add_task(tq.Task(payload=pb.Greet(name=name)))
            if fail:
                raise InjectedError("after add_task")

        try:
            harness.run_in_transaction(body)
            return True
        except (InjectedError, OperationalError):
            return False

    with tq.clock.use_clock(clock):
        faults.on = True
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            results = list(
                pool.map(lambda i: contextvars.copy_context().run(transaction, i), range(n))
            )
        sweeps = 0
        while sweeps < MAX_SWEEPS:
            clock.advance(dt.timedelta(minutes=2))  # every reminder stale, every lease lapsed
            disp.sweep()
            sweeps += 1
            faults.on = False
            left = harness.store.count_reminders()
            faults.on = True
            if left[0] == 0:
                break
        faults.on = False
        scheduler.run(stop_when_drained(), parallel(8), max_executions(10 * (n + 100)))

    committed = harness.row_keys()
    by_sigkilled = {k for k in committed if k.startswith("killed")}
    lost = committed - set(ran)
    duplicated = {k for k, v in ran.items() if v > 1}
    phantom = set(ran) - committed
    figures = {
        "store": kind,
        "transactions": n + children * 3,
        "committed": len(committed) - len(by_sigkilled),
        "rolled_back": n + children * 3 - (len(committed) - len(by_sigkilled)),
        "reported_failed": results.count(False),
        "processes_killed": killed,
        "processes_sigkilled": sigkilled,
        "commits_reported_by_sigkilled": sigkilled_commits,
        "committed_by_sigkilled": len(by_sigkilled),
        "db_faults": faults.injected["db"] + faults.injected["store"],
        "submit_faults": faults.injected["submit"],
        "sweeps": sweeps,
        "reminders_left": list(harness.store.count_reminders()),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "phantom": len(phantom),
    }
    record_figure("chaos", **figures)
    print(f"\nchaos {figures}")
    assert harness.store.count_reminders() == (0, 0)
    assert not lost, f"committed but never ran: {sorted(lost)[:10]}"
    assert not duplicated, f"ran more than once: {sorted(duplicated)[:10]}"
    assert not phantom, f"ran without a committed transaction: {sorted(phantom)[:10]}"
    assert {f"child{c}-{i}" for c in range(children) for i in range(3)} <= committed
    assert sigkilled == children
    assert len(by_sigkilled) >= sigkilled_commits >= children  # killed after commits
    # Both kinds of fault happened: the test tried what it says.
    assert faults.injected["submit"] > 0
    assert faults.injected["db"] + faults.injected["store"] > 0
