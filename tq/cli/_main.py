"""The `tq` command group, and `tq config`."""

from __future__ import annotations

from typing import Any

import click

import tq
from tq.cli import (
    _dashboard,
    _db,
    _markers,
    _output,
    _queues,
    _reminders,
    _run,
    _schedules,
    _settings,
    _sweep,
)
from tq.cli._errors import exit_codes
from tq.cli._options import Config, settings_options


class _Group(click.Group):
    """Turns known failures of any subcommand into the documented exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        with exit_codes():
            return super().invoke(ctx)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(tq.__version__, prog_name="tq")
def cli() -> None:
    """tq: background tasks on Cloud Tasks with a transactional outbox.

    Every option can also come from the environment variable shown in each
    command's --help (a flag wins); `tq config` shows them all. Exit codes:
    0 done, 1 failed or not found, 2 usage, 3 configuration, 4 backend
    unavailable, 130 interrupted.
    """


@cli.command("config")
@settings_options("dispatcher", "database", "sweeper", "worker", "server", "dashboard")
@click.option("--markdown", is_flag=True, help="Print the documentation table of every setting.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def config(markdown: bool, as_json: bool, **kwargs: Any) -> None:
    """Show the effective settings (flags, then environment, then defaults)."""
    if markdown:
        click.echo(_settings.markdown_table(), nl=False)
        return
    cfg = Config.take(kwargs)
    rows = [
        {"setting": s.key, "flag": s.flag, "env": ",".join(s.env), "value": _shown(s.key, cfg),
         "source": "set" if cfg.given(s.key) else "default"}
        for s in _settings.SETTINGS
    ]  # fmt: skip
    _output.table(rows, ["setting", "flag", "env", "value", "source"], as_json=as_json)


def _shown(key: str, cfg: Config) -> object:
    value = getattr(cfg, key)
    secret = key.endswith(("_token", "_secret"))
    return "(set, not shown)" if secret and value else value


for command in (
    _run.dev,
    _run.serve,
    _run.worker,
    _sweep.sweep,
    _db.db,
    _queues.queues,
    _queues.tasks,
    _reminders.reminders,
    _reminders.parked,
    _markers.markers,
    _schedules.schedules,
    _dashboard.dashboard,
):
    cli.add_command(command)
