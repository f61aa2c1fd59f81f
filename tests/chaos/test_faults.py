"""Faults in the services tq stands on: every committed task is delivered in the end.

(PostgreSQL restarted under the fleet of replicas: tests/chaos/test_replicas.py.)

* The Cloud Spanner emulator with `--enable_fault_injection` (it aborts
  commits at random): the application's transactions, the happy path's
  deletes and the sweeper's leases and deletes all meet real ABORTED
  errors.
* The Cloud Tasks emulator frozen (SIGSTOP: calls hang past their
  deadline) and then stopped and started again on its port: the happy path
  leaves its tasks to the sweeper, which submits them once the emulator is
  back.

Checked each time: nothing committed is lost, nothing rolled back runs, no
reminder is left, and a task that runs twice (after a fault, at least once
delivery) always ran under one name, so Cloud Tasks' name deduplication
would have absorbed it. Sizes grow with TQ_LONG=1.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import contextvars
import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

import tq
import tq.asgi
import tq.txn.sql
from sweeper import InProcSweeper
from tests import _sweeping as sw
from tests._longmode import pick, record_figure
from tests._services import spanner as spanner_service
from tests._services.push_app import push_app
from tests._services.uvicorn_server import ServedApp
from tests.chaos._fleet import CloudTasksEmulator, wait_for
from tests.testpb import payloads_pb2 as pb
from tqtesting import FakeClock, Scheduler, max_executions, parallel, stop_when_drained

THREADS = 8


# The Spanner emulator with fault injection.

ORDERS_DDL = "CREATE TABLE ChaosOrders (Key STRING(MAX) NOT NULL) PRIMARY KEY (Key)"


@pytest.fixture(scope="module")
def faulty_spanner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    binary = spanner_service.require_emulator()
    log = tmp_path_factory.mktemp("spanner-faults") / "emulator.log"
    with spanner_service.running_emulator(binary, log, "--enable_fault_injection") as host:
        emulator = spanner_service.start(host, instance_id="tq-chaos")
        db = emulator.create_database([ORDERS_DDL])
        try:
            yield db
        finally:
            db.close()


@pytest.mark.spanner
def test_spanner_fault_injection_loses_no_committed_task(faulty_spanner: Any) -> None:
    from tq.txn.spanner import SpannerStore

    n = pick(60, 1000)
    clock = FakeClock(dt.datetime.now(dt.UTC))
    disp = sw.dispatcher()
    scheduler = Scheduler(disp, clock=clock)
    absorbed = collections.Counter[str]()

    bursting = threading.Event()
    bursting.set()

    class NamedQueue:
        """The scheduler, counting second submissions its names absorbed.

        During the burst a third of the tasks fail every happy-path submit
        (half after creating the task), so that the sweeps (leases, reads,
        deletes) run under the injected aborts too.
        """

        def submit(self, sub: tq.Submission) -> None:
            share = int((sub.reminder_id or "0")[:8], 16) / 2**32
            if bursting.is_set() and share < 1 / 3:
                if share < 1 / 6:
                    raise tq.SubmitError(grpc.StatusCode.UNAVAILABLE, "injected")
                with contextlib.suppress(tq.SubmitError):
                    scheduler.submit(sub)
                raise tq.SubmitError(grpc.StatusCode.DEADLINE_EXCEEDED, "injected")
            try:
                scheduler.submit(sub)
            except tq.SubmitError as e:
                if e.already_exists:
                    absorbed["names"] += 1
                raise

        async def submit_async(self, sub: tq.Submission) -> None:
            self.submit(sub)

    disp.configure(submitter=NamedQueue())
    ran: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def greet(payload: pb.Greet) -> None:
        with lock:
            ran[payload.name] += 1

    disp.attach_handler("greet", greet)  # type: ignore[arg-type]
    store = SpannerStore(faulty_spanner, name="chaos-spanner", retry=0.01)
    disp.configure(sweeper=InProcSweeper(stores=[store], sweep_shards=4, submit_concurrency=8))
    attempts = collections.Counter[str]()

    def transaction(i: int) -> bool:
        key = f"s{i}"
        rollback = i % 10 == 9  # some transactions roll back on purpose

        def body(txn: Any) -> None:
            with lock:
                attempts["calls"] += 1
            txn.insert("ChaosOrders", ["Key"], [[key]])
            disp.add_task(tq.Task(payload=pb.Greet(name=key)))
            if rollback:
                raise RuntimeError("rolled back on purpose")

        try:
            store.run_in_transaction(body)
        except RuntimeError:
            return False
        return True

    try:
        with tq.clock.use_clock(clock):
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                results = list(
                    pool.map(lambda i: contextvars.copy_context().run(transaction, i), range(n))
                )
            bursting.clear()
            left_to_sweep = store.count_reminders()[0]
            sweeps = 0
            while store.count_reminders() != (0, 0) and sweeps < 50:
                clock.advance(dt.timedelta(minutes=2))  # stale reminders, lapsed leases
                disp.sweep()
                sweeps += 1
            scheduler.run(stop_when_drained(), parallel(8), max_executions(10 * n))
        with faulty_spanner.snapshot() as snap:
            committed = {r[0] for r in snap.execute_sql("SELECT Key FROM ChaosOrders")}
    finally:
        tq.txn.unregister_store("chaos-spanner")

    lost = committed - set(ran)
    assert store.count_reminders() == (0, 0)
    assert lost == set()
    assert set(ran) - committed == set()
    assert {k for k, v in ran.items() if v > 1} == set()
    assert len(committed) == results.count(True) == n - n // 10
    assert left_to_sweep > 0
    retried = attempts["calls"] - n
    record_figure(
        "spanner_fault_injection",
        transactions=n,
        committed=len(committed),
        rolled_back=n - len(committed),
        transaction_attempts_aborted=retried,
        reminders_left_to_the_sweeper=left_to_sweep,
        sweeps=sweeps,
        second_submissions_absorbed=absorbed["names"],
        lost=len(lost),
        duplicated=0,
    )


# The Cloud Tasks emulator, frozen, then stopped and started again.


class Acked:
    """A CloudTasksSubmitter recording the task names it got an answer for."""

    def __init__(self, inner: tq.CloudTasksSubmitter) -> None:
        self.inner = inner
        self.names: set[str] = set()
        self.failed: set[str] = set()  # names of tasks a submit failed for
        self._lock = threading.Lock()

    def submit(self, sub: tq.Submission) -> None:
        name = sub.request.task.name.rsplit("/", 1)[-1]
        try:
            self.inner.submit(sub)
        except tq.SubmitError:
            with self._lock:
                self.failed.add(name)
            raise
        with self._lock:
            self.names.add(name)

    async def submit_async(self, sub: tq.Submission) -> None:
        self.submit(sub)


@pytest.mark.cloudtasks
def test_cloud_tasks_emulator_outages_lose_no_committed_task(tmp_path: Path) -> None:
    n = pick(16, 600)  # per phase
    emulator = CloudTasksEmulator(tmp_path, queues=["chaos"])
    emulator.start()
    delivered: list[tuple[str, str]] = []
    lock = threading.Lock()
    engine = sa.create_engine(f"sqlite:///{tmp_path}/outbox.db", connect_args={"timeout": 30})
    metadata = sa.MetaData()
    orders = sa.Table("orders", metadata, sa.Column("key", sa.Text, primary_key=True))
    metadata.create_all(engine)
    store = tq.txn.sql.SQLStore(engine, name="chaos-ct")
    store.create_schema()
    submitter = Acked(tq.CloudTasksSubmitter(endpoint=emulator.endpoint, attempts=1, timeout_s=0.5))
    disp = tq.Dispatcher(
        cloud_project="tq-chaos", cloud_region="us-central1", target_scheme="http",
        submitter=submitter,
        sweeper=InProcSweeper(stores=[store], sweep_shards=4, submit_concurrency=8),
    )  # fmt: skip

    @disp.task_class(id="deliver", prototype=pb.Greet, kind=tq.Kind.TRANSACTIONAL, queue="chaos")
    def deliver(payload: pb.Greet) -> None:
        with lock:
            delivered.append((payload.name, tq.execution_info().task_id))

    def commit(key: str) -> None:
        deadline = tq.clock.now() + dt.timedelta(seconds=1)
        with tq.txn.sql.transaction(engine, store=store, deadline=deadline) as conn:
            conn.execute(orders.insert().values(key=key))
            disp.add_task(tq.Task(payload=pb.Greet(name=key)))

    def burst(prefix: str) -> None:
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(commit, [f"{prefix}{i}" for i in range(n)]))

    def delivered_keys() -> set[str]:
        with lock:
            return {k for k, _ in delivered}

    def delivered_names() -> set[str]:
        with lock:
            return {t for _, t in delivered}

    failed_submits: list[int] = []
    try:
        with ServedApp(push_app(disp, auth=tq.asgi.INSECURE_NO_AUTH)) as served:
            disp.configure(default_target_host=served.netloc)
            burst("up")  # the emulator answers
            emulator.pause()  # frozen: every call runs into its deadline
            burst("frozen")
            emulator.resume()
            failed_submits.append(len(submitter.failed))
            # The emulator keeps tasks in memory only: before stopping it, let it
            # push every task it acknowledged (the ones whose reminders are gone).
            wait_for(lambda: submitter.names <= delivered_names(), "acknowledged tasks", 60)
            emulator.stop()
            burst("down")  # refused at once: every task stays a reminder
            failed_submits.append(len(submitter.failed) - failed_submits[0])
            emulator.start()
            with engine.connect() as conn:
                committed = {r[0] for r in conn.execute(sa.select(orders.c.key))}

            def swept_and_delivered() -> bool:
                disp.sweep()
                return store.count_reminders() == (0, 0) and committed <= delivered_keys()

            wait_for(swept_and_delivered, "every committed task delivered", pick(120, 600))
    finally:
        emulator.stop()
        submitter.inner.close()
        store.close()
        engine.dispose()

    names: dict[str, set[str]] = collections.defaultdict(set)
    for key, task in delivered:
        names[key].add(task)
    twice = {k for k, v in collections.Counter(k for k, _ in delivered).items() if v > 1}
    assert len(committed) == 3 * n
    assert committed - delivered_keys() == set()
    assert delivered_keys() - committed == set()
    assert all(len(v) == 1 for v in names.values())  # one name per key: Cloud Tasks dedups
    assert failed_submits[0] > 0  # the outages did hit the happy path
    assert failed_submits[1] > 0
    record_figure(
        "cloudtasks_emulator_outages",
        transactions=3 * n,
        emulator_starts=emulator.starts,
        tasks_left_to_the_sweeper_while_frozen=failed_submits[0],
        tasks_left_to_the_sweeper_while_stopped=failed_submits[1],
        lost=0,
        delivered_twice_by_the_emulator_under_one_name=len(twice),
    )
