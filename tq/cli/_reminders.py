"""`tq reminders list|count` and `tq parked list|replay|drop`: the outbox, seen and operated."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import click

from tq.admin import OutboxAdmin
from tq.admin._outbox import Chosen
from tq.cli import _databases, _output, _wiring
from tq.cli._errors import FAILED, fail
from tq.cli._options import Config, app_option, json_lines, outbox_store_options, settings_options


@contextlib.contextmanager
def _stores(cfg: Config, app_spec: str | None) -> Iterator[OutboxAdmin]:
    with _wiring.app_outbox_stores(cfg, app_spec) as stores:
        yield OutboxAdmin(stores)


# Reminders.


@click.group("reminders")
def reminders() -> None:
    """Reminders: tasks committed but not yet submitted (the outbox)."""


@reminders.command("count")
@outbox_store_options
@app_option
@json_lines
def count(app_spec: str | None, as_json: bool, **kwargs: Any) -> None:
    """Count reminders (pending and parked) in each store."""
    with _stores(Config.take(kwargs), app_spec) as outbox:
        rows = outbox.counts()
    _output.table(rows, ["store", "pending", "parked"], as_json=as_json, title="stores")


@reminders.command("list")
@outbox_store_options
@app_option
@json_lines
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="Most reminders listed per store.")  # fmt: skip
@click.option("--stale", is_flag=True, help="Only reminders past fresh_until (the sweeper's).")
def list_reminders(
    app_spec: str | None, as_json: bool, limit: int, stale: bool, **kwargs: Any
) -> None:
    """List pending (unparked) reminders by ID, with their class, queue and URL."""
    with _stores(Config.take(kwargs), app_spec) as outbox:
        rows = outbox.list_reminders(limit, stale=stale)
    cols = ["store", "id", "task_class", "queue", "topic", "fresh_until", "url"]
    _output.table(rows, cols, as_json=as_json, title="reminders")


# Parked reminders.


@click.group("parked")
def parked() -> None:
    """Parked reminders: tasks whose submit failed for good, kept for an operator."""


@parked.command("list")
@outbox_store_options
@app_option
@json_lines
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
def list_parked(app_spec: str | None, as_json: bool, limit: int, **kwargs: Any) -> None:
    """List parked reminders with why they were parked."""
    with _stores(Config.take(kwargs), app_spec) as outbox:
        rows = outbox.list_parked(limit)
    cols = ["store", "id", "task_class", "queue", "topic", "parked_code", "parked_at",
            "parked_reason"]  # fmt: skip
    _output.table(rows, cols, as_json=as_json, title="parked reminders")


def _select(outbox: OutboxAdmin, ids: tuple[str, ...], all_: bool) -> list[Chosen]:
    if bool(ids) == all_:
        raise click.UsageError("give reminder IDs or --all (not both)")
    chosen, missing = outbox.choose_parked(None if all_ else ids)
    if missing:
        raise fail(f"no parked reminder with ID {', '.join(missing)}", FAILED)
    return chosen


def _confirm(all_: bool, yes: bool, what: str) -> None:
    if all_ and not yes and not _output.confirm(f"{what}?"):
        raise fail(f"declined: did not {what}", FAILED)


@parked.command("replay")
@settings_options("database_url", "spanner_database", "dispatcher", "backend", "cloud_project",
                  "cloud_region", "cloudtasks_endpoint")  # fmt: skip
@app_option
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every parked reminder.")
@click.option(
    "--now",
    "submit_now",
    is_flag=True,
    help="Submit at once through the backend instead of leaving it to the next sweep.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation with --all.")
def replay(app_spec: str | None, ids: tuple[str, ...], all_: bool, submit_now: bool, yes: bool,
           **kwargs: Any) -> None:  # fmt: skip
    """Unpark reminders so they are submitted again (by the next sweep, or --now).

    Fix the cause first (a missing queue, a permission): a reminder that
    fails for good again is parked again. Exit 1 if any could not be
    replayed.
    """
    cfg = Config.take(kwargs)
    with _stores(cfg, app_spec) as outbox:
        chosen = _select(outbox, ids, all_)
        _confirm(all_, yes, f"replay {len(chosen)} parked reminders")
        submitter = _submitter(cfg) if submit_now else None
        try:
            failed = outbox.replay(chosen, submitter)
        finally:
            _close(submitter)
    _output.say(f"replayed {len(chosen) - failed} of {len(chosen)} parked reminders"
                + ("" if submit_now else "; the next sweep submits them"))  # fmt: skip
    if failed:
        raise fail(f"{failed} reminders could not be replayed", FAILED)


def _submitter(cfg: Config) -> Any:
    if _wiring.backend_of(cfg) == "cloudtasks":
        return _wiring.cloudtasks_submitter(cfg)
    return _wiring.dbqueue_submitter(_databases.sql_engine(_databases.require_db(cfg)), cfg)


def _close(submitter: Any) -> None:
    if submitter is None:
        return
    close = getattr(submitter, "close", None)
    if callable(close):
        close()
    engine = getattr(submitter, "engine", None)
    if engine is not None:
        engine.dispose()


@parked.command("drop")
@outbox_store_options
@app_option
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every parked reminder.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation with --all.")
def drop(app_spec: str | None, ids: tuple[str, ...], all_: bool, yes: bool, **kwargs: Any) -> None:
    """Delete parked reminders: their tasks are given up for good."""
    with _stores(Config.take(kwargs), app_spec) as outbox:
        chosen = _select(outbox, ids, all_)
        _confirm(all_, yes, f"drop {len(chosen)} parked reminders for good")
        outbox.drop(chosen)
    _output.say(f"dropped {len(chosen)} parked reminders")
