"""The demo: the orders service on the embedded default, under a burst of orders.

    python -m examples.orders.demo [--orders N] [--chain N] [--http] [--timeout S]
                                   [--dashboard | --no-dashboard] [--port P]

Runs the example on a SQLite file in a temporary directory, with the
database queue's workers in this process delivering through tq's push
endpoint (in-process ASGI by default; `--http` serves the app with uvicorn
on loopback and pushes over HTTP). It places a burst of orders, each
committing its row and a transactional e-mail task together, plus a
count-down chain; shows progress; then prints what happened, counted, not
computed: the tasks in the queue, how many pushes each one's handler
answered with success (once is right; twice is a duplicate; none is a
loss), the e-mails sent per order, retries, parked tasks, and the
commit-to-handler latency. Some e-mails fail on their first try on
purpose, to show retries.

At its end it serves the operator's dashboard (`tq.dashboard`, mounted at
`/tq` beside the push endpoint) over the demo's database and prints its
address, with a token made for the run, until Ctrl-C: by default when
standard output is a terminal (`--dashboard` / `--no-dashboard` choose).

Exit status: 0 when every committed task ran exactly once; 1 when any was
lost (never added, or not run by the deadline), ran twice, or was parked.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import secrets
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import tq
import tq.asgi
import tq.dashboard
from examples.orders.db import Order, make_engine
from examples.orders.service import OrdersService
from examples.orders.web import create_app
from tq import dbqueue

FAIL_EVERY = 10  # every 10th order's first e-mail attempt fails (retried)


class DemoMailer:
    """Counts the e-mails sent per order and when the first went out; fails some first tries."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: Counter[int] = Counter()  # order ID -> e-mails sent
        self.sent_at: dict[int, float] = {}  # order ID -> time.perf_counter() of the first
        self.failed_once: set[int] = set()

    def send(self, to: str, subject: str, body: str) -> None:
        order_id = int(subject.split()[1])
        with self.lock:
            if order_id % FAIL_EVERY == 0 and order_id not in self.failed_once:
                self.failed_once.add(order_id)
                raise ConnectionError("the mail server hung up (on purpose, to show a retry)")
            self.sent[order_id] += 1
            self.sent_at.setdefault(order_id, time.perf_counter())


class Deliveries:
    """ASGI middleware counting, per task name, the pushes its handler answered with 2xx."""

    PREFIX = "/internal/tasks/t/"

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.ok: Counter[str] = Counter()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.PREFIX):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        name = headers.get("x-cloudtasks-taskname", "?")
        status = 0

        async def recording(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        await self.app(scope, receive, recording)
        if 200 <= status < 300:
            with self.lock:
                self.ok[name] += 1

    def delivered(self) -> int:
        with self.lock:
            return len(self.ok)


@dataclasses.dataclass
class Tally:
    """What the run did, counted: tasks in the queue against their deliveries."""

    expected: int  # orders + chain steps: what the run committed
    added: int  # tasks found in the queue
    once: int  # tasks delivered exactly once
    twice: int  # tasks delivered more than once
    never: int  # tasks in the queue never delivered
    orders: int
    emails: int  # e-mails sent
    orders_mailed_twice: int
    orders_not_mailed: int

    @property
    def lost(self) -> int:
        """Committed tasks that never ran: not in the queue, or never delivered."""
        return max(0, self.expected - self.added) + self.never

    @classmethod
    def count(
        cls, names: list[str], deliveries: Counter[str], mailer: DemoMailer, orders: int,
        expected: int,
    ) -> Tally:  # fmt: skip
        per_task = [deliveries.get(n, 0) for n in names]
        with mailer.lock:
            sent = dict(mailer.sent)
        return cls(
            expected=expected, added=len(names),
            once=sum(1 for n in per_task if n == 1), twice=sum(1 for n in per_task if n > 1),
            never=sum(1 for n in per_task if n == 0), orders=orders, emails=sum(sent.values()),
            orders_mailed_twice=sum(1 for n in sent.values() if n > 1),
            orders_not_mailed=orders - len(sent),
        )  # fmt: skip

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"{self.lost} lost")
        if self.twice:
            out.append(f"{self.twice} delivered twice")
        if self.orders_mailed_twice:
            out.append(f"{self.orders_mailed_twice} orders e-mailed twice")
        if self.orders_not_mailed:
            out.append(f"{self.orders_not_mailed} orders never e-mailed")
        return out


class CommitTimes:
    """When each order's transaction committed (a session after_commit hook)."""

    def __init__(self, session_factory: Any) -> None:
        self.lock = threading.Lock()
        self.at: dict[int, float] = {}
        sa.event.listen(session_factory, "after_commit", self._after_commit)

    def _after_commit(self, session: Any) -> None:
        now = time.perf_counter()
        ids = [key[1][0] for key in session.identity_map if key[0] is Order]
        with self.lock:
            for i in ids:
                self.at.setdefault(i, now)


def _free_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def _uvicorn(app: Any, sock: socket.socket) -> AsyncIterator[None]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if serving.done():
            await serving
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        await serving


async def run(
    orders: int,
    chain: int,
    http: bool,
    timeout_s: float,
    console: Console,
    dashboard_port: int | None = None,
) -> int:
    """The demo; with `dashboard_port`, then the dashboard on that port until Ctrl-C."""
    with tempfile.TemporaryDirectory(prefix="tq-demo-") as tmp:
        db = Path(tmp) / "orders.db"
        mailer = DemoMailer()
        service = OrdersService(make_engine(f"sqlite:///{db}"), mailer=mailer)
        queue_engine = dbqueue.sqlite_engine(db)
        token = secrets.token_urlsafe(16)
        app = create_app(service, push_auth=tq.asgi.INSECURE_NO_AUTH,
                         dashboard=tq.dashboard.Access(operator_tokens=[token]))  # fmt: skip
        try:
            code = await _run(service, mailer, queue_engine, app, orders, chain, http,
                              timeout_s, console)  # fmt: skip
            if dashboard_port is not None:
                await _serve_dashboard(app, dashboard_port, token, console)
            else:
                console.print("Dashboard: run [bold]scripts/demo --dashboard[/] to browse the "
                              "queues, tasks and reminders of a run")  # fmt: skip
            return code
        finally:
            service.close()
            queue_engine.dispose()


async def _serve_dashboard(app: Any, port: int, token: str, console: Console) -> None:
    """Serves the app (the dashboard at /tq) until SIGINT or SIGTERM, after printing where."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as e:
        sock.close()
        console.print(f"[bold red]Dashboard not served[/]: port {port}: {e.strerror or e}; "
                      "choose another with --port (0: any free one)")  # fmt: skip
        return
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with _uvicorn(app, sock):
        address = f"http://127.0.0.1:{sock.getsockname()[1]}/tq/login?token={token}"
        # Plain print: an address must not be wrapped.
        print(f"Dashboard: {address}  (Ctrl-C to stop)", flush=True)
        await stop.wait()
    console.print("dashboard stopped")


async def _run(
    service: OrdersService,
    mailer: DemoMailer,
    queue_engine: sa.Engine,
    app: Any,
    orders: int,
    chain: int,
    http: bool,
    timeout_s: float,
    console: Console,
) -> int:
    service.create_schema()
    dbqueue.create_schema(queue_engine)
    # The embedded default: tasks become rows of the database queue in the
    # app's own SQLite file, inserted in the order's own transaction.
    sock = _free_port()
    service.dispatcher.configure(
        cloud_project="tq-demo", cloud_region="local", target_scheme="http",
        default_target_host=f"127.0.0.1:{sock.getsockname()[1]}",
        submitter=dbqueue.DbQueueSubmitter(queue_engine),
    )  # fmt: skip
    commits = CommitTimes(service.Session)
    deliveries = Deliveries(app)
    worker = dbqueue.Worker(
        queue_engine, app=None if http else deliveries, concurrency=32,
        dispatcher=service.dispatcher,
    )  # fmt: skip
    mode = "uvicorn on loopback" if http else "in-process ASGI"
    console.print(f"[bold]tq demo[/]: orders service on SQLite + database-queue workers ({mode})")
    started = time.perf_counter()
    async with contextlib.AsyncExitStack() as stack:
        if http:
            await stack.enter_async_context(_uvicorn(deliveries, sock))
        else:
            sock.close()
        await worker.start()
        stack.push_async_callback(worker.aclose)
        expected = await _burst(service, orders, chain, console)
        await _wait(deliveries, expected, timeout_s, console)
    elapsed = time.perf_counter() - started
    names = [t.name for t in dbqueue.Admin(queue_engine).list_tasks(limit=10 * expected + 100)]
    tally = Tally.count(names, deliveries.ok, mailer, orders, expected)
    return _summary(service, mailer, commits, queue_engine, tally, elapsed, console)


async def _burst(service: OrdersService, orders: int, chain: int, console: Console) -> int:
    service.start_countdown(chain, "demo")
    loop = asyncio.get_running_loop()
    with _progress(console) as progress:
        task = progress.add_task("placing orders", total=orders)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = [
                loop.run_in_executor(
                    pool, service.place_order, f"customer{i}@example.com", "tea", 1 + i % 3
                )
                for i in range(orders)
            ]
            for f in asyncio.as_completed(futures):
                await f
                progress.advance(task)
    return orders + chain + 1


async def _wait(deliveries: Deliveries, expected: int, timeout_s: float, console: Console) -> None:
    """Waits until `expected` tasks were delivered, or the deadline."""
    deadline = time.monotonic() + timeout_s
    with _progress(console) as progress:
        task = progress.add_task("delivering", total=expected)
        while True:
            done = deliveries.delivered()
            progress.update(task, completed=done)
            if done >= expected or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.05)  # a progress display refresh, not a test


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:>16}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console, transient=False,
    )  # fmt: skip


def _summary(
    service: OrdersService,
    mailer: DemoMailer,
    commits: CommitTimes,
    queue_engine: sa.Engine,
    tally: Tally,
    elapsed: float,
    console: Console,
) -> int:
    admin = dbqueue.Admin(queue_engine)
    tasks = admin.list_tasks(limit=tally.added + 100)
    retried = sum(1 for t in tasks if t.attempts > 1)
    failed = sum(1 for t in tasks if t.state is dbqueue.State.FAILED)
    _, parked_reminders = service.store.count_reminders()
    latencies = sorted(
        (mailer.sent_at[i] - commits.at[i]) * 1000 for i in mailer.sent_at if i in commits.at
    )
    t = Table(title="tq demo summary", show_header=False)
    t.add_row("tasks added", f"{tally.added} (in the queue; {tally.expected} committed)")
    t.add_row("delivered once", str(tally.once))
    t.add_row("delivered twice", str(tally.twice))
    t.add_row("lost", str(tally.lost))
    t.add_row("e-mails sent", f"{tally.emails} for {tally.orders} orders")
    t.add_row("retried", f"{retried} (e-mails that failed on purpose: {len(mailer.failed_once)})")
    t.add_row("parked", str(failed + parked_reminders))
    if latencies:
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        # Latencies include the retried e-mails' backoff.
        t.add_row("commit -> handler", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    t.add_row("elapsed", f"{elapsed:.2f} s")
    console.print(t)
    problems = tally.problems()
    if failed or parked_reminders:
        problems.append(f"{failed + parked_reminders} parked")
    if problems:
        console.print(f"[bold red]FAILED[/]: {', '.join(problems)}")
        return 1
    console.print(
        f"[bold green]OK[/]: each of the {tally.added} tasks committed ran exactly once "
        "(deliveries counted per task)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m examples.orders.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--orders", type=int, default=300, help="orders in the burst (300)")
    p.add_argument("--chain", type=int, default=20, help="length of the count-down chain (20)")
    p.add_argument("--http", action="store_true", help="push over HTTP to uvicorn on loopback")
    p.add_argument("--timeout", type=float, default=45.0, help="seconds to wait (45)")
    p.add_argument(
        "--dashboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="then serve the dashboard until Ctrl-C (default: on a terminal)",
    )
    p.add_argument(
        "--port", type=int, default=8080, help="the dashboard's port (8080; 0 picks a free one)"
    )
    args = p.parse_args(argv)
    show = sys.stdout.isatty() if args.dashboard is None else args.dashboard
    # The retries shown are on purpose: keep their log lines out of the way.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    console = Console(stderr=False, highlight=False)
    return asyncio.run(
        run(args.orders, args.chain, args.http, args.timeout, console, args.port if show else None)
    )


if __name__ == "__main__":
    sys.exit(main())
