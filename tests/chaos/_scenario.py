"""A fleet of processes on one PostgreSQL, and bursts of transactional tasks through it.

`Fleet` starts app replicas (uvicorn `--workers`), sweepers (`tq sweep
--loop`) and database-queue workers (`tq worker`, pushing over HTTP with
OIDC tokens from a signer on the test's `LocalIssuer` key). `burst(keys)`
sends the keys to the replicas' `/burst` (each key: one transaction, one
TRANSACTIONAL task), calling `during(sent)` after each wave (to inject a
fault); `settle()` waits until every committed key was delivered and
nothing is left to do; `outcome(keys)` reads what happened to those keys.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx
import sqlalchemy as sa

from tests._services.postgres import _free_port
from tests.chaos import _fleet
from tests.chaos import _tables as tables
from tq import dbqueue
from tq.dbqueue import State
from tqtesting.oidc import LocalIssuer

BATCH = 10  # keys per /burst request
CLIENTS = 8  # requests in flight


@dataclasses.dataclass
class Outcome:
    """What became of some keys."""

    sent: int
    committed: set[str]
    deliveries: list[tuple[str, str, int, int]]  # key, task ID, retry count, pid
    task_rows: int  # their rows in the database queue's tasks table

    @property
    def delivered(self) -> collections.Counter[str]:
        return collections.Counter(k for k, *_ in self.deliveries)

    @property
    def lost(self) -> set[str]:
        return self.committed - set(self.delivered)

    @property
    def phantoms(self) -> set[str]:
        """Delivered, never committed (a rolled-back transaction's task)."""
        return set(self.delivered) - self.committed

    @property
    def duplicated(self) -> dict[str, int]:
        return {k: n for k, n in self.delivered.items() if n > 1}

    @property
    def names_per_key(self) -> dict[str, set[str]]:
        names: dict[str, set[str]] = collections.defaultdict(set)
        for key, task, _retry, _pid in self.deliveries:
            names[key].add(task)
        return names

    @property
    def replicas_that_ran_tasks(self) -> int:
        return len({pid for *_, pid in self.deliveries})


class Fleet:
    """App replicas, sweepers and workers on the database at `db_url` (a context manager)."""

    def __init__(
        self,
        db_url: str,
        logs: Path,
        *,
        replicas: int = 4,
        sweepers: int = 2,
        workers: int = 2,
        loops_per_worker: int = 1,
        stuck_rate: float = 0.2,
        dispatch_deadline_s: float = 10.0,
    ) -> None:
        self.db_url = db_url
        self.logs = logs
        self.replicas, self.sweepers, self.workers = replicas, sweepers, workers
        self.loops_per_worker = loops_per_worker
        self.stuck_rate = stuck_rate
        self.dispatch_deadline_s = dispatch_deadline_s
        self.engine = tables.make_engine(db_url)
        self.issuer = LocalIssuer()
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.procs: _fleet.Fleet | None = None

    def __enter__(self) -> Fleet:
        try:
            tables.create_tables(self.engine)
            self.issuer.__enter__()
            self.procs = _fleet.Fleet(self.logs, self._env())
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.procs is not None:
            self.procs.stop_all()
        self.issuer.close()
        self.engine.dispose()

    def _env(self) -> dict[str, str]:
        return {
            "TQ_CHAOS_DB": self.db_url,
            "TQ_CHAOS_CERTS_URL": self.issuer.certs_url,
            "TQ_CHAOS_TARGET": f"127.0.0.1:{self.port}",
            "TQ_CHAOS_STUCK_RATE": str(self.stuck_rate),
            "TQ_CHAOS_FRESH_S": "1",
            "TQ_CHAOS_KEY_PEM": self.issuer.key.private_pem,
            "TQ_CHAOS_KEY_ID": self.issuer.key.kid,
        }

    def _start(self) -> None:
        assert self.procs is not None
        procs, db = self.procs, self.db_url
        procs.start(
            "app", "-m", "uvicorn", "tests.chaos._replica_app:app", "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", str(self.replicas), "--log-level", "warning",
            "--no-access-log",
        )  # fmt: skip
        for i in range(self.sweepers):
            procs.start(
                f"sweeper{i}", "-m", "tq.cli", "sweep", "--loop", "--sweep-interval", "0.5",
                "--db", db, "--backend", "dbqueue", "--lease-duration-s", "10",
            )  # fmt: skip
        for i in range(self.workers):
            procs.start(
                f"worker{i}", "-m", "tq.cli", "worker", "--db", db, "--push-url", "task",
                "--signer", "tests.chaos._signer:sign", "--concurrency", "16",
                "--workers", str(self.loops_per_worker),
                "--poll-interval", "0.05", "--lease-grace-s", "2",
                "--dispatch-deadline-s", str(self.dispatch_deadline_s), "--log-level", "warning",
            )  # fmt: skip
        t0 = time.monotonic()
        _fleet.wait_for(self._serving, "the replicas to serve", 90)
        print(f"fleet up in {time.monotonic() - t0:.1f} s", file=sys.stderr)

    def _serving(self) -> bool:
        assert self.procs is not None
        self.procs.check_alive()
        try:
            with httpx.Client(base_url=self.base, timeout=5) as c:
                return c.post("/burst", json={"keys": []}).status_code == 200
        except httpx.HTTPError:
            return False

    def _post(self, keys: list[str]) -> None:
        try:
            with httpx.Client(base_url=self.base, timeout=60) as c:
                c.post("/burst", json={"keys": keys})
        except httpx.HTTPError:
            pass  # e.g. a replica's transaction hung in an outage: the database decides

    def burst(self, keys: list[str], during: Callable[[int], None] = lambda sent: None) -> None:
        """Sends `keys` in waves of CLIENTS requests; `during(sent)` after each wave."""
        batches = [keys[i : i + BATCH] for i in range(0, len(keys), BATCH)]
        sent = 0
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            for start in range(0, len(batches), CLIENTS):
                wave = batches[start : start + CLIENTS]
                list(pool.map(self._post, wave))
                sent += sum(len(b) for b in wave)
                during(sent)

    def settle(self, timeout_s: float) -> None:
        """Waits until every committed key was delivered and nothing is left to do."""
        assert self.procs is not None
        procs = self.procs
        admin = dbqueue.Admin(self.engine)

        def settled() -> bool:
            procs.check_alive()
            try:
                live = admin.count_tasks(state=State.PENDING) + admin.count_tasks(
                    state=State.LEASED
                )
                committed = self._committed()
                delivered = {k for k, *_ in self._deliveries()}
                return committed <= delivered and live == 0 and self.reminders() == (0, 0)
            except sa.exc.OperationalError:
                return False  # the database is still coming back

        t0 = time.monotonic()
        try:
            _fleet.wait_for(settled, "every committed task to be delivered", timeout_s)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{procs.tails()}") from None
        print(f"settled in {time.monotonic() - t0:.1f} s", file=sys.stderr)

    def outcome(self, keys: list[str]) -> Outcome:
        wanted = set(keys)
        deliveries = [d for d in self._deliveries() if d[0] in wanted]
        committed = self._committed() & wanted
        with self.engine.connect() as conn:
            # The queue's tasks of these keys: one per task name.
            names = {task for _, task, _, _ in deliveries}
            count = sa.text("SELECT count(*) FROM tq_tasks WHERE name IN :names")
            count = count.bindparams(sa.bindparam("names", expanding=True))
            rows = conn.execute(count, {"names": list(names)}).scalar_one() if names else 0
        return Outcome(len(keys), committed, deliveries, int(rows))

    def events(self) -> collections.Counter[str]:
        """Tasks whose happy path failed by injection, by kind (distinct reminders)."""
        query = "SELECT kind, count(DISTINCT reminder) FROM chaos_events GROUP BY kind"
        with self.engine.connect() as conn:
            return collections.Counter({kind: int(n) for kind, n in conn.execute(sa.text(query))})

    def reminders(self) -> tuple[int, int]:
        """(unparked, parked) reminders in the outbox."""
        query = (
            "SELECT coalesce(sum(CASE WHEN parked THEN 0 ELSE 1 END), 0), "
            "coalesce(sum(CASE WHEN parked THEN 1 ELSE 0 END), 0) FROM tq_reminders"
        )
        with self.engine.connect() as conn:
            unparked, parked = conn.execute(sa.text(query)).one()
        return int(unparked), int(parked)

    def check_alive(self) -> None:
        """Fails, with their logs' tails, if processes of the fleet died."""
        assert self.procs is not None
        self.procs.check_alive()

    def stop(self) -> dict[str, int | None]:
        """Stops every process gracefully (SIGTERM); their exit codes."""
        assert self.procs is not None
        return self.procs.stop_all()

    def _committed(self) -> set[str]:
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(sa.select(tables.orders.c.key))}

    def _deliveries(self) -> list[tuple[str, str, int, int]]:
        d = tables.deliveries.c
        with self.engine.connect() as conn:
            query = sa.select(d.key, d.task, d.retry, d.pid)
            return [(r[0], r[1], int(r[2]), int(r[3])) for r in conn.execute(query)]
