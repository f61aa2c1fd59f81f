"""`tq markers count|expire`: the done markers of effectively-once handlers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import click

from tq.admin import MarkerAdmin
from tq.cli import _output, _wiring
from tq.cli._errors import CONFIG, fail
from tq.cli._options import Config, app_option, json_lines, outbox_store_options, settings_options


@contextlib.contextmanager
def _admin(cfg: Config, app_spec: str | None) -> Iterator[MarkerAdmin]:
    with _wiring.app_outbox_stores(cfg, app_spec) as stores:
        admin = MarkerAdmin(stores)
        if not admin.stores:
            raise fail("none of the stores keeps done markers (SQL and Spanner stores do)", CONFIG)
        yield admin


@click.group("markers")
def markers() -> None:
    """Done markers of effectively-once handlers (tq.txn.sql.once, tq.txn.spanner.once)."""


@markers.command("count")
@outbox_store_options
@app_option
@json_lines
def count(app_spec: str | None, as_json: bool, **kwargs: Any) -> None:
    """Count live and expired markers in each store (reads the whole table)."""
    with _admin(Config.take(kwargs), app_spec) as admin:
        rows = admin.counts()
    _output.table(rows, ["store", "live", "expired"], as_json=as_json, title="stores")


@markers.command("expire")
@outbox_store_options
@settings_options("marker_batch_size")
@app_option
@json_lines
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
