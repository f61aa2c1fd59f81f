"""`tq dev`, `tq serve` and `tq worker`: running an app, its workers and its sweeps."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import click

import tq
from tq.cli import _databases, _output, _server, _wiring
from tq.cli._errors import CONFIG, fail
from tq.cli._options import Config, settings_options

DEV_DATABASE = "tq-dev.db"

_BANNER = (
    "[bold white on red] AUTHENTICATION OFF [/] [bold red]tq dev serves pushes and "
    "/internal/tasks/c/sweep without authentication: anyone who can reach "
    "{address} can run any task. For local development only.[/]"
)


def happy_path(cfg: Config) -> contextlib.AbstractContextManager[Any]:
    """Background submits for the command's run (`--happy-path background`), drained at its end."""
    if cfg.happy_path == "background":
        return tq.BackgroundSubmits()
    return contextlib.nullcontext()


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if level != "debug":
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per push otherwise


def _dev_database(cfg: Config) -> str:
    """--db, else the database of the app's registered SQLStore, else ./tq-dev.db."""
    if cfg.database_url:
        return str(cfg.database_url)
    import tq.txn
    from tq.txn.sql import SQLStore

    sql_stores = [s for s in tq.txn.stores() if isinstance(s, SQLStore)]
    if sql_stores:
        return sql_stores[0].engine.url.render_as_string(hide_password=False)
    return DEV_DATABASE


def _prepare_schemas(engine: Any) -> None:
    import tq.txn
    from tq.dbqueue import create_schema
    from tq.txn.sql import SQLStore

    create_schema(engine)
    for s in tq.txn.stores():
        if isinstance(s, SQLStore):
            s.create_schema()


@click.command("dev")
@settings_options("dispatcher", "database", "sweeper", "worker", "server")
@click.argument("app_spec", metavar="APP", envvar="TQ_APP")
def dev(app_spec: str, **kwargs: Any) -> None:
    """Run APP ('module:app') locally with everything tq needs, no cloud account.

    uvicorn serves APP; the tasks it adds go to the database queue in the
    app's own database (--db; default: the database of the SQLStore the app
    registers, else ./tq-dev.db), created if missing; workers in this process
    push them into the app; a sweep runs every --sweep-interval seconds.
    Push authentication is OFF (a banner says so). Stops on Ctrl-C (exit 0).
    """
    cfg = Config.take(kwargs)
    _logging(cfg.log_level)
    app, disp = _wiring.load_app(app_spec, cfg)
    url = _dev_database(cfg)
    engine = _databases.sql_engine(url)
    try:
        _prepare_schemas(engine)
        if cfg.queue_yaml:
            _databases.apply_queue_yaml(engine, cfg.queue_yaml)
        sock = _server.listen(cfg.host, cfg.port)
        address = f"{cfg.host}:{sock.getsockname()[1]}"
        _wiring.configure_dispatcher(disp, cfg)
        _wiring.configure_for_dev(disp, address)
        disp.configure(submitter=_wiring.dbqueue_submitter(engine, cfg))
        _wiring.install_sweeper(disp, cfg)
        front = _server.InsecurePushFront(app, disp)
        _output.err().print(_BANNER.format(address=address))
        _output.say(
            f"tq dev: serving {app_spec} on http://{address}; database queue in "
            f"{engine.url.render_as_string(hide_password=True)}; "
            f"{cfg.workers} worker(s), sweeps every {cfg.sweep_interval:g} s"
        )
        jobs = [
            _workers_job(engine, cfg, app=front, dispatcher=disp),
            _sweep_job(disp, cfg.sweep_interval),
        ]
        with _server.graceful_signals(), happy_path(cfg):
            asyncio.run(_server.serve(front, sock, cfg.log_level, jobs))
    finally:
        engine.dispose()
    _output.say("tq dev: stopped")


def _workers_job(engine: Any, cfg: Config, **options: Any) -> _server.Job:
    from tq.dbqueue import run_workers

    opts = {**_wiring.worker_options(cfg), **options}

    async def job(stop: asyncio.Event) -> None:
        await run_workers(engine, count=cfg.workers, stop=stop, **opts)

    return job


def _sweep_job(disp: tq.Dispatcher, interval_s: float) -> _server.Job:
    import sweeper

    async def job(stop: asyncio.Event) -> None:
        await sweeper.run_periodically(disp, interval_s, stop)

    return job


@click.command("serve")
@settings_options("dispatcher", "database", "sweeper", "worker", "server")
@click.argument("app_spec", metavar="APP", envvar="TQ_APP")
@click.option("--sweep-loop", is_flag=True,
              help="Also sweep every --sweep-interval seconds in this process (one replica "
              "only; otherwise let Cloud Scheduler call /internal/tasks/c/sweep).")  # fmt: skip
@click.option(
    "--with-workers",
    is_flag=True,
    help="Database queue only: run workers in this process too, pushing into APP in-process.",
)
def serve(app_spec: str, sweep_loop: bool, with_workers: bool, **kwargs: Any) -> None:
    """Run APP in production: uvicorn, the dispatcher configured from flags and environment.

    Push authentication stays as APP set it up (on by default). Tasks go to
    Cloud Tasks when a project is configured (the app's or --cloud-project),
    else to the database queue in --db (--backend forces either). With
    --with-workers, database-queue workers in this process push into APP
    without a network (those pushes skip authentication unless --signer
    mints tokens). The sweeper (--sweep-mode) is installed unless APP
    installed one. Stops gracefully on SIGTERM (exit 0).
    """
    cfg = Config.take(kwargs)
    _logging(cfg.log_level)
    app, disp = _wiring.load_app(app_spec, cfg)
    _wiring.configure_dispatcher(disp, cfg)
    eff = cfg if cfg.cloud_project else cfg.replace(cloud_project=disp.cloud_project)
    backend = _wiring.backend_of(eff) if (eff.cloud_project or eff.database_url) else None
    if with_workers and backend != "dbqueue":
        raise fail(_no_workers_reason(eff, backend), CONFIG)
    sock = _server.listen(cfg.host, cfg.port)
    address = f"{cfg.host}:{sock.getsockname()[1]}"
    jobs: list[_server.Job] = []
    engine = None
    try:
        if backend == "cloudtasks" and cfg.cloudtasks_endpoint:
            disp.configure(submitter=_wiring.cloudtasks_submitter(cfg))
        elif backend == "dbqueue":
            engine = _databases.sql_engine(_databases.require_db(cfg))
            _databases.require_queue_tables(engine)
            _wiring.configure_for_dbqueue(disp, address if with_workers else None)
            disp.configure(submitter=_wiring.dbqueue_submitter(engine, cfg))
            if cfg.queue_yaml:
                _databases.apply_queue_yaml(engine, cfg.queue_yaml)
            if with_workers:
                # In this process, with no network between them: the workers
                # push past the app's authentication, unless a signer mints
                # the tokens the app checks.
                target = (
                    app if cfg.signer else _server.InsecurePushFront(app, disp, in_process=True)
                )
                jobs.append(_workers_job(engine, cfg, app=target, dispatcher=disp))
        _wiring.check_can_build_tasks(disp)
        _wiring.install_sweeper(disp, cfg)
        if sweep_loop:
            jobs.append(_sweep_job(disp, cfg.sweep_interval))
        where = f"tq serve: {app_spec} on http://{address}"
        if with_workers:
            where += f"; {cfg.workers} worker(s) pushing into it in-process"
        _output.say(where)
        # Background submits drain once uvicorn has stopped: after the last request.
        with _server.graceful_signals(), happy_path(cfg):
            asyncio.run(_server.serve(app, sock, cfg.log_level, jobs))
    finally:
        sock.close()
        if engine is not None:
            engine.dispose()


def _no_workers_reason(cfg: Config, backend: str | None) -> str:
    """Why --with-workers cannot run, and which flag fixes it."""
    if not cfg.database_url:
        return (
            "--with-workers runs database-queue workers: give --db URL (or set "
            "TQ_DATABASE_URL), the database whose queue they deliver"
        )
    return (
        f"--with-workers runs database-queue workers, but tasks go to Cloud Tasks (cloud "
        f"project {cfg.cloud_project!r}, from --cloud-project or the app): add --backend "
        "dbqueue to keep them in the database queue in --db"
    )


@click.command("worker")
@settings_options("dispatcher", "database_url", "queue_yaml", "tombstone_window_s", "worker",
                  "log_level", "happy_path")  # fmt: skip
@click.option(
    "--app",
    "app_spec",
    metavar="MODULE:ATTR",
    envvar="TQ_APP",
    show_envvar=True,
    help="Push into this ASGI app in-process (unless --push-url is set).",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="With --app: serve pushes with authentication off (local use only).",
)
@click.option(
    "--until-idle",
    is_flag=True,
    help="Deliver what is due, then exit (0) instead of running until stopped.",
)
def worker(app_spec: str | None, insecure_no_auth: bool, until_idle: bool, **kwargs: Any) -> None:
    """Deliver the database queue's tasks in --db (self-hosted mode).

    Pushes go into --app in-process, or over HTTP: to --push-url (keeping
    each task's path and Host), or to each task's own URL. The workers also
    fire the cron schedules of the task classes of --app's dispatcher (or
    --dispatcher). Runs until SIGINT or SIGTERM, then finishes the pushes in
    flight and exits 0.
    """
    cfg = Config.take(kwargs)
    _logging(cfg.log_level)
    opts: dict[str, Any] = {}
    if insecure_no_auth and not (app_spec and not cfg.push_url):
        raise fail("--insecure-no-auth needs --app (and no --push-url)", CONFIG)
    if app_spec:
        app, disp = _wiring.load_app(app_spec, cfg)
        _wiring.configure_dispatcher(disp, cfg)
        opts["dispatcher"] = disp  # the workers fire its classes' cron schedules
        if not cfg.push_url:
            opts["app"] = _server.InsecurePushFront(app, disp) if insecure_no_auth else app
        if insecure_no_auth:
            _output.err().print(_BANNER.format(address="this worker's pushes"))
    elif cfg.dispatcher:
        opts["dispatcher"] = _wiring.find_dispatcher(cfg)
    engine = _databases.sql_engine(_databases.require_db(cfg))
    try:
        _databases.require_queue_tables(engine)
        if cfg.queue_yaml:
            _databases.apply_queue_yaml(engine, cfg.queue_yaml)
        with happy_path(cfg):
            asyncio.run(_work(engine, cfg, opts, until_idle))
    finally:
        engine.dispose()


async def _work(engine: Any, cfg: Config, opts: dict[str, Any], until_idle: bool) -> None:
    import httpx

    from tq.dbqueue import Worker, run_workers

    client = None
    if cfg.push_url and cfg.push_url != "task":
        client = httpx.AsyncClient(
            transport=_server.RedirectTransport(cfg.push_url), follow_redirects=False
        )
        opts["client"] = client
    options = {**_wiring.worker_options(cfg), **opts}
    try:
        if until_idle:
            async with Worker(engine, **options) as w:
                pushed = await w.run_until_idle()
            _output.say(f"tq worker: {pushed} pushes, nothing due")
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(s, stop.set)
        _output.say(f"tq worker: {cfg.workers} worker(s) running (Ctrl-C stops)")
        await run_workers(engine, count=cfg.workers, stop=stop, **options)
        _output.say("tq worker: stopped")
    finally:
        if client is not None:
            await client.aclose()
