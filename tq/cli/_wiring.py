"""Wiring parts from settings: the app, its dispatcher, submitters, sweepers, workers.

This is the composition root: the one place in `tq` that imports `sweeper`
and `tq.dbqueue` (lazily, when a command needs them); its databases and
stores are reached through `tq.cli._databases`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import types
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import tq
from tq.cli import _databases
from tq.cli._databases import normalize_url
from tq.cli._errors import CONFIG, UNAVAILABLE, code_of, fail
from tq.cli._options import Config

if TYPE_CHECKING:
    import sqlalchemy as sa

    from tq.txn import ReminderStore

DEV_PROJECT = "tq-dev"
DEV_REGION = "local"


def import_object(spec: str, what: str = "app") -> Any:
    """The object named by "module:attribute" (the current directory is importable)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise fail(f"{what} must look like 'package.module:attribute', not {spec!r}", CONFIG)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:
        # Whatever stops the module from loading is configuration (a missing
        # module, a bad setting it reads), unless a backend it reaches is down.
        known = None if isinstance(e, ImportError) else code_of(e)
        code = UNAVAILABLE if known is not None and known[0] == UNAVAILABLE else CONFIG
        detail = known[1] if known is not None else f"{type(e).__name__}: {e}"
        if isinstance(e, ImportError):
            detail = str(e)
        raise fail(f"cannot import {what} module {module_name!r}: {detail}", code) from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise fail(
                f"{what} {spec!r}: {module_name} has no attribute {attr!r}", CONFIG
            ) from None
    return obj


def load_app(spec: str, cfg: Config) -> tuple[Any, tq.Dispatcher]:
    """Imports the ASGI app at `spec` and finds its dispatcher.

    `TQ_DATABASE_URL` is exported first when `--db` was given, so the app
    (which may read it) and the command use one database.
    """
    if cfg.database_url:
        os.environ["TQ_DATABASE_URL"] = normalize_url(cfg.database_url)
    app = import_object(spec)
    module = sys.modules[spec.partition(":")[0]]
    return app, find_dispatcher(cfg, module)


def find_dispatcher(cfg: Config, module: types.ModuleType | None = None) -> tq.Dispatcher:
    """`--dispatcher`, else the app module's `dispatcher` attribute, else `tq.default`."""
    if cfg.dispatcher:
        disp = import_object(cfg.dispatcher, "dispatcher")
    elif module is not None and isinstance(getattr(module, "dispatcher", None), tq.Dispatcher):
        disp = module.dispatcher
    else:
        disp = tq.default
    if not isinstance(disp, tq.Dispatcher):
        raise fail(f"--dispatcher {cfg.dispatcher!r} is not a tq.Dispatcher", CONFIG)
    return disp


@contextlib.contextmanager
def app_outbox_stores(cfg: Config, app_spec: str | None) -> Iterator[list[ReminderStore]]:
    """The outbox stores a command acts on: the app's (`app_spec`, imported first) if it
    registered any, else stores on `--db` / `--spanner`, closed after the block."""
    if app_spec:
        load_app(app_spec, cfg)
    stores, owned = _databases.outbox_stores(cfg, registered=bool(app_spec))
    try:
        yield stores
    finally:
        if owned:
            _databases.close_stores(stores)


_DISPATCHER_KEYS = {
    "cloud_project": "cloud_project",
    "cloud_region": "cloud_region",
    "target_host": "default_target_host",
    "target_scheme": "target_scheme",
    "push_as": "push_as",
    "push_audience": "push_audience",
    "authorized_pushers": "authorized_pushers",
    "namespace": "namespace",
    "app_engine": "app_engine",
}


def configure_dispatcher(disp: tq.Dispatcher, cfg: Config) -> None:
    """Applies the dispatcher settings that were given; the rest stay as the app set them."""
    options = {
        opt: getattr(cfg, key)
        for key, opt in _DISPATCHER_KEYS.items()
        if getattr(cfg, key) not in (None, ())
    }
    if options:
        disp.configure(**options)


def configure_for_dev(disp: tq.Dispatcher, address: str) -> None:
    """Fills what a local run needs and the app left unset (project, region, host, http)."""
    options: dict[str, Any] = {}
    if not disp.cloud_project:
        options["cloud_project"] = DEV_PROJECT
    if not disp.cloud_region:
        options["cloud_region"] = DEV_REGION
    if not disp.default_target_host:
        options["default_target_host"] = address
    options["target_scheme"] = "http"
    disp.configure(**options)


def configure_for_dbqueue(disp: tq.Dispatcher, address: str | None) -> None:
    """Fills what the database queue needs and the app left unset.

    The project and region only name queues there (`tq dev`'s `tq-dev` and
    `local`); `address` (host:port of this server, when its own workers push
    into it) becomes the target host.
    """
    options: dict[str, Any] = {}
    if not disp.cloud_project:
        options["cloud_project"] = DEV_PROJECT
    if not disp.cloud_region:
        options["cloud_region"] = DEV_REGION
    if not disp.default_target_host and address is not None:
        options["default_target_host"] = address
    if options:
        disp.configure(**options)


def check_can_build_tasks(disp: tq.Dispatcher) -> None:
    """Refuses, naming the flag to set, a dispatcher that could not build its classes' tasks.

    Better at start-up than at the first `add_task` of a request.
    """
    for c in disp.task_classes():
        if not c.queue.startswith("projects/") and not (disp.cloud_project and disp.cloud_region):
            raise fail(
                f"task class {c.id!r} has the short queue name {c.queue!r}, which needs a "
                "project and a region: give --cloud-project and --cloud-region (Cloud Tasks), "
                "or --db URL (the database queue, which needs neither)",
                CONFIG,
            )
        if not (c.target_host or disp.default_target_host or disp.app_engine):
            raise fail(
                f"task class {c.id!r} has no target host for its pushes: give --target-host "
                "HOST (or TQ_TARGET_HOST), the host Cloud Tasks or the workers push to",
                CONFIG,
            )


# Submitters and sweepers.


def backend_of(cfg: Config) -> str:
    """'dbqueue' or 'cloudtasks', as `--backend` says (auto: Cloud Tasks when a project is set)."""
    if cfg.backend != "auto":
        return str(cfg.backend)
    if cfg.cloud_project:
        return "cloudtasks"
    if cfg.database_url:
        return "dbqueue"
    raise fail(
        "no backend: give --db URL (the database queue) or --cloud-project and "
        "--cloud-region (Cloud Tasks)",
        CONFIG,
    )


def cloudtasks_submitter(cfg: Config) -> tq.Submitter:
    """Cloud Tasks for queue classes and, with google-cloud-pubsub installed, Pub/Sub for
    topic classes (the client is made on the first message; `$PUBSUB_EMULATOR_HOST`
    points it at an emulator), so the sweep and `tq parked replay` serve both."""
    tasks = tq.CloudTasksSubmitter(endpoint=cfg.cloudtasks_endpoint)
    try:
        import google.cloud.pubsub_v1  # noqa: F401  (only whether it is installed)
    except ImportError:
        return tasks
    from tq.pubsub import Publisher

    return tq.Router(queues=tasks, topics=Publisher())


def dbqueue_submitter(engine: sa.Engine, cfg: Config) -> Any:
    import datetime as dt

    from tq.dbqueue import DbQueueSubmitter

    return DbQueueSubmitter(engine, tombstone_window=dt.timedelta(seconds=cfg.tombstone_window_s))


def sweeper_options(cfg: Config) -> dict[str, Any]:
    import datetime as dt

    return {
        "sweep_shards": cfg.sweep_shards,
        "tasks_per_scan": cfg.tasks_per_scan,
        "secondary_scan_shards": cfg.secondary_scan_shards,
        "max_depth": cfg.max_depth,
        "scan_timeout_s": cfg.scan_timeout_s,
        "submit_batch_size": cfg.submit_batch_size,
        "submit_concurrent_batches": cfg.submit_concurrent_batches,
        "submit_concurrency": cfg.submit_concurrency,
        "lease_duration": dt.timedelta(seconds=cfg.lease_duration_s),
        "use_leases": cfg.use_leases,
    }


def install_sweeper(
    disp: tq.Dispatcher,
    cfg: Config,
    *,
    replace: bool = False,
    stores: list[ReminderStore] | None = None,
) -> None:
    """Gives the dispatcher a sweeper per `--sweep-mode` unless it has one (or `replace`).

    Distributed mode registers the `tq-sweep` task class, so every replica
    that serves pushes must install it the same way. `stores`: what to
    sweep (default: every registered store, at each sweep).
    """
    if disp.sweeper is not None and not replace:
        return
    import sweeper

    try:
        if cfg.sweep_mode == "distributed":
            sweeper.DistributedSweeper(
                disp, queue=cfg.sweep_queue, stores=stores, **sweeper_options(cfg)
            )
        else:
            disp.configure(sweeper=sweeper.InProcSweeper(stores=stores, **sweeper_options(cfg)))
    except ValueError as e:
        raise fail(f"sweeper: {e}", CONFIG) from e


def worker_options(cfg: Config) -> dict[str, Any]:
    import datetime as dt

    return {
        "concurrency": cfg.concurrency,
        "queues": list(cfg.queues) or None,
        "poll_interval": cfg.poll_interval,
        "batch_size": cfg.batch_size,
        "lease_grace": dt.timedelta(seconds=cfg.lease_grace_s),
        "default_dispatch_deadline": dt.timedelta(seconds=cfg.dispatch_deadline_s),
        "signer": import_object(cfg.signer, "signer") if cfg.signer else None,
    }
