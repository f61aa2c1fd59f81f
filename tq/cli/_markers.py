"""`tq markers count|expire`: the done markers of effectively-once handlers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import click

from tq.admin import MarkerAdmin
from tq.cli import _databases, _output, _wiring
from tq.cli._errors import CONFIG, fail
from tq.cli._options import Config, settings_options

_json = click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
_store_opts = settings_options("database_url", "spanner_database", "dispatcher")
_app = click.option(
    "--app", "app_spec", metavar="MODULE:ATTR", envvar="TQ_APP", show_envvar=True,
    help="Import this app first, and act on the stores it registers.",
)  # fmt: skip


@contextlib.contextmanager
def _admin(cfg: Config, app_spec: str | None) -> Iterator[MarkerAdmin]:
    if app_spec:
        _wiring.load_app(app_spec, cfg)
    stores, owned = _databases.outbox_stores(cfg, registered=bool(app_spec))
    try:
        admin = MarkerAdmin(stores)
        if not admin.stores:
            raise fail("none of the stores keeps done markers (SQL and Spanner stores do)", CONFIG)
        yield admin
    finally:
        if owned:
            _databases.close_stores(stores)


@click.group("markers")
def markers() -> None:
    """Done markers of effectively-once handlers (tq.txn.sql.once, tq.txn.spanner.once)."""


@markers.command("count")
@_store_opts
@_app
@_json
def count(app_spec: str | None, as_json: bool, **kwargs: Any) -> None:
    """Count live and expired markers in each store (reads the whole table)."""
    with _admin(Config.take(kwargs), app_spec) as admin:
        rows = admin.counts()
    _output.table(rows, ["store", "live", "expired"], as_json=as_json, title="stores")


@markers.command("expire")
@_store_opts
@settings_options("marker_batch_size")
@_app
@_json
@click.option(
    "--max-batches",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many batches per store (default: until none is left).",
)
def expire(app_spec: str | None, as_json: bool, max_batches: int | None, **kwargs: Any) -> None:
    """Delete the markers past their expiry, in batches (safe to run anywhere, any time).

    Run it daily (a cron job, or a scheduled task class calling
    tq.txn.sql.expire_markers). Spanner also deletes expired markers by
    itself (a row deletion policy, within about three days).
    """
    cfg = Config.take(kwargs)
    with _admin(cfg, app_spec) as admin:
        rows = admin.expire(batch_size=cfg.marker_batch_size, max_batches=max_batches)
    _output.table(rows, ["store", "deleted"], as_json=as_json, title="stores")
