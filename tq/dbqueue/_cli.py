"""`python -m tq.dbqueue`: create the schema, run workers, inspect and operate queues.

The database comes from `--db URL` or the TQ_DBQUEUE_URL environment
variable: a SQLAlchemy URL (`postgresql+psycopg://...`) or a SQLite file
path (`tasks.db`, `sqlite:///tasks.db`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from tq.dbqueue._admin import Admin
from tq.dbqueue._db import mysql_engine, sqlite_engine
from tq.dbqueue._queueyaml import load_queue_yaml, parse_age
from tq.dbqueue._schema import State, create_schema, schema_sql
from tq.dbqueue._worker import Worker

log = logging.getLogger("tq.dbqueue")


def engine_for(url: str) -> sa.Engine:
    """An engine for a SQLAlchemy URL or a SQLite file path."""
    if "://" not in url:
        return sqlite_engine(url)
    if url.startswith("sqlite:///"):
        return sqlite_engine(url[len("sqlite:///") :])
    if url.startswith(("mysql", "mariadb")):
        return mysql_engine(url)
    return sa.create_engine(url, pool_pre_ping=True)


def load_app(spec: str) -> Any:
    """The object named by "module:attribute" (e.g. "myapp.main:app")."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise SystemExit(f"--app must look like 'package.module:app', not {spec!r}")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tq.dbqueue", description=__doc__)
    p.add_argument("--db", default=os.environ.get("TQ_DBQUEUE_URL"), help="database URL or file")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create the tables (idempotent)")
    ddl = sub.add_parser("ddl", help="print the schema as SQL (no database needed)")
    ddl.add_argument("dialect", choices=["postgresql", "sqlite", "mysql"])
    q = sub.add_parser("apply-queues", help="create or update queues from a queue.yaml")
    q.add_argument("queue_yaml")
    w = sub.add_parser("worker", help="deliver tasks until SIGINT/SIGTERM")
    w.add_argument("--app", help="ASGI app to push into in-process, 'module:attr'")
    w.add_argument("--base-url", default="http://localhost")
    w.add_argument("--concurrency", type=int, default=16)
    w.add_argument("--queue", action="append", dest="queues", help="serve only these queues")
    w.add_argument("--poll-interval", type=float, default=0.1)
    w.add_argument("--signer", help="OIDC signer callable(email, audience), 'module:attr'")
    w.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub.add_parser("stats", help="per-queue stats")
    ls = sub.add_parser("list", help="list tasks")
    ls.add_argument("--queue")
    ls.add_argument("--state", choices=[s.value for s in State])
    ls.add_argument("--task-class")
    ls.add_argument("--limit", type=int, default=50)
    for name, what in (("delete", "delete a live task"), ("run", "run a task now / replay")):
        c = sub.add_parser(name, help=what)
        c.add_argument("queue")
        c.add_argument("task")
    for name in ("purge", "pause", "resume"):
        sub.add_parser(name, help=f"{name} a queue").add_argument("queue")
    r = sub.add_parser("retention", help="drop finished tasks older than an age")
    r.add_argument("older_than", help="e.g. 7d, 12h, 30m")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "ddl":
        print(schema_sql(args.dialect), end="")
        return 0
    if not args.db:
        raise SystemExit("give --db URL (or set TQ_DBQUEUE_URL)")
    engine = engine_for(args.db)
    try:
        return _run(args, engine)
    finally:
        engine.dispose()


def _run(args: argparse.Namespace, engine: sa.Engine) -> int:
    admin = Admin(engine)
    cmd = args.command
    if cmd == "init":
        create_schema(engine)
        print("schema ready")
    elif cmd == "apply-queues":
        configs = load_queue_yaml(args.queue_yaml)
        admin.apply_queues(configs)
        print(f"applied {len(configs)} queues")
    elif cmd == "worker":
        asyncio.run(_serve(engine, args))
    elif cmd == "stats":
        for s in admin.queue_stats():
            oldest = s.oldest_eta.isoformat() if s.oldest_eta else "-"
            print(
                f"{s.name}: tasks={s.tasks} in_flight={s.in_flight} oldest_eta={oldest} "
                f"executed_last_minute={s.executed_last_minute} rate={s.effective_rate:g}/s "
                f"done={s.done} failed={s.failed}{' PAUSED' if s.paused else ''}"
            )
    elif cmd == "list":
        for t in admin.list_tasks(
            queue=args.queue, state=args.state, task_class=args.task_class, limit=args.limit
        ):
            print(
                f"{t.queue}/{t.name} {t.state.value} class={t.task_class} "
                f"eta={t.eta.isoformat()} attempts={t.attempts} last_status={t.last_status}"
            )
    elif cmd in ("delete", "run"):
        fn = admin.delete_task if cmd == "delete" else admin.run_task
        if not fn(args.queue, args.task):
            print(f"no matching task {args.queue}/{args.task}", file=sys.stderr)
            return 1
    elif cmd == "purge":
        print(f"purged {admin.purge_queue(args.queue)} tasks")
    elif cmd in ("pause", "resume"):
        changed = (admin.pause_queue if cmd == "pause" else admin.resume_queue)(args.queue)
        if not changed:
            print(f"no queue {args.queue!r}", file=sys.stderr)
            return 1
    elif cmd == "retention":
        age = dt.timedelta(seconds=parse_age(args.older_than))
        print(f"deleted {admin.delete_finished(age)} finished tasks")
    return 0


async def _serve(engine: sa.Engine, args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per push otherwise
    worker = Worker(
        engine,
        app=load_app(args.app) if args.app else None,
        base_url=args.base_url,
        concurrency=args.concurrency,
        queues=args.queues,
        poll_interval=args.poll_interval,
        signer=load_app(args.signer) if args.signer else None,
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.request_stop)
    async with worker:
        log.info("tq.dbqueue: worker %s serving %s", worker.worker_id, engine.url)
        await worker.run()  # returns after the pushes in flight end
        log.info("tq.dbqueue: worker %s stopped", worker.worker_id)
