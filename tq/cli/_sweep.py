"""`tq sweep`: submit reminders the happy path left behind, once or in a loop."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import click

import tq
from tq.cli import _databases, _output, _wiring
from tq.cli._errors import FAILED, UNAVAILABLE, fail
from tq.cli._options import Config, settings_options

STATS_FIELDS = (
    "scans",
    "scan_errors",
    "stale",
    "submitted",
    "kept",
    "parked",
    "not_leased",
    "gone",
)


@contextlib.contextmanager
def sweeping_dispatcher(cfg: Config, app_spec: str | None) -> Iterator[tq.Dispatcher]:
    """The dispatcher a sweep runs with: the app's (configured), or a bare one on the stores.

    Stores: those the app registered, else `--db` / `--spanner` (closed after).
    """
    if app_spec:
        _, disp = _wiring.load_app(app_spec, cfg)
    else:
        disp = tq.Dispatcher()
    _wiring.configure_dispatcher(disp, cfg)
    stores, owned = _databases.outbox_stores(cfg, registered=bool(app_spec))
    engine = None
    submitter: Any = None
    try:
        _check_stores(stores)
        # Auto: Cloud Tasks when a project is known (from the settings or the app).
        eff = cfg if cfg.cloud_project else cfg.replace(cloud_project=disp.cloud_project)
        if not app_spec or eff.backend != "auto" or eff.cloud_project or eff.database_url:
            if _wiring.backend_of(eff) == "cloudtasks":
                submitter = _wiring.cloudtasks_submitter(cfg)
            else:
                engine = _databases.sql_engine(_databases.require_db(cfg))
                submitter = _wiring.dbqueue_submitter(engine, cfg)
            disp.configure(submitter=submitter)
        _wiring.install_sweeper(
            disp, cfg, replace=not app_spec or cfg.given("sweep_mode"),
            stores=stores if owned else None,
        )  # fmt: skip
        yield disp
    finally:
        if owned:
            _databases.close_stores(stores)
        if engine is not None:
            engine.dispose()
        close = getattr(submitter, "close", None)
        if callable(close):
            close()


def _check_stores(stores: list[Any]) -> None:
    """Reads one reminder key of each store, so that a store that cannot be read at all
    (tq's tables missing, the database down) fails the command with one line naming the
    cause, instead of every scan of the sweep logging it."""
    for store in stores:
        store.fetch_reminder_keys("", "~", 1)


def _stats_row(disp: tq.Dispatcher) -> dict[str, Any] | None:
    stats = getattr(disp.sweeper, "last_stats", None)
    if stats is None:
        return None
    return {k: getattr(stats, k) for k in STATS_FIELDS}


@click.command("sweep")
@settings_options("dispatcher", "database_url", "spanner_database", "backend", "sweeper")
@click.option("--app", "app_spec", metavar="MODULE:ATTR", envvar="TQ_APP", show_envvar=True,
              help="Import this app first: its dispatcher and stores are used.")  # fmt: skip
@click.option("--loop", is_flag=True, help="Sweep every --sweep-interval seconds until stopped.")
@click.option("--json", "as_json", is_flag=True, help="Print the sweep's counts as JSON.")
def sweep(app_spec: str | None, loop: bool, as_json: bool, **kwargs: Any) -> None:
    """Find reminders past their fresh_until and submit them.

    Once (the default): one sweep of every store, then its counts; exit 1
    if it parked reminders (permanent submit failures), 4 if some could not
    be read or submitted for now (the next sweep retries them). With --loop:
    until SIGINT or SIGTERM, then exit 0.

    Stores: those the --app registers, else --db and/or --spanner. Tasks go
    to Cloud Tasks (--cloud-project, --cloud-region) or to the database
    queue in --db (see --backend).
    """
    cfg = Config.take(kwargs)
    with sweeping_dispatcher(cfg, app_spec) as disp:
        if loop:
            _loop(disp, cfg)
            return
        with _output.err().status("sweeping..."):
            disp.sweep()
        row = _stats_row(disp)
    if row is None:  # a distributed sweep: tasks were enqueued
        _output.say("sweep tasks enqueued")
        return
    _output.value(row, as_json=as_json)
    if row["parked"]:
        raise fail(f"{row['parked']} reminders were parked (see tq parked list)", FAILED)
    if row["kept"] or row["scan_errors"]:
        raise fail(
            f"{row['kept']} reminders could not be submitted and {row['scan_errors']} scans "
            "failed for now; the next sweep tries again",
            UNAVAILABLE,
        )


def _loop(disp: tq.Dispatcher, cfg: Config) -> None:
    import sweeper

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        _output.say(f"tq sweep: {signal.Signals(signum).name}, stopping after this sweep")
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _output.say(f"tq sweep: sweeping every {cfg.sweep_interval:g} s (Ctrl-C stops)")
        rounds = sweeper.run_periodically_blocking(disp, cfg.sweep_interval, stop)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    _output.say(f"tq sweep: stopped after {rounds} sweeps")
