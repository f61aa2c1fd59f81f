"""`tq dashboard`: the operator's web pages, served on their own.

It wires the dashboard (`tq.dashboard`) to what the other commands act on:
the database queue in `--db` or Cloud Tasks (`--backend`), the outbox
stores in `--db` / `--spanner` (or those `--app` registers), and the app's
dispatcher (payload types, cron schedules). Access comes from the dashboard
settings; with none, it makes an operator token and prints the address to
sign in with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any

import click

from tq.cli import _databases, _server, _wiring
from tq.cli._backends import open_backend
from tq.cli._errors import CONFIG, CLIError, fail
from tq.cli._options import Config, settings_options


def access_of(cfg: Config) -> tuple[Any, str | None]:
    """The dashboard's `Access` from the settings, and the token made here (if any)."""
    from tq.dashboard import Access

    made = None
    operator_tokens = [cfg.dashboard_token] if cfg.dashboard_token else []
    configured = (cfg.dashboard_token or cfg.dashboard_viewer_token or cfg.dashboard_operators
                  or cfg.dashboard_viewers)  # fmt: skip
    if not configured:
        made = secrets.token_urlsafe(24)
        operator_tokens = [made]
    try:
        access = Access(
            operator_tokens=operator_tokens,
            viewer_tokens=[cfg.dashboard_viewer_token] if cfg.dashboard_viewer_token else [],
            operators=cfg.dashboard_operators,
            viewers=cfg.dashboard_viewers,
            audience=cfg.dashboard_audience,
            iap_audience=cfg.dashboard_iap_audience,
            session_secret=cfg.dashboard_secret.encode() if cfg.dashboard_secret else None,
        )
    except ValueError as e:
        raise fail(f"dashboard access: {e}", CONFIG) from e
    return access, made


@click.command("dashboard")
@settings_options("database_url", "spanner_database", "backend", "cloud_project", "cloud_region",
                  "cloudtasks_endpoint", "dispatcher", "host", "port", "log_level",
                  "dashboard")  # fmt: skip
@click.option("--app", "app_spec", metavar="MODULE:ATTR", envvar="TQ_APP", show_envvar=True,
              help="Import this app first: its dispatcher decodes payloads and lists schedules, "
              "its registered stores are shown.")  # fmt: skip
@click.option("--insecure-no-auth", is_flag=True,
              help="Let anyone who reaches it operate the dashboard (local use only).")  # fmt: skip
def dashboard(app_spec: str | None, insecure_no_auth: bool, **kwargs: Any) -> None:
    """Serve the dashboard: queues, tasks, reminders, parked reminders, schedules.

    Queues come from the database queue in --db or from Cloud Tasks
    (--backend); the outbox from --db / --spanner, or the stores --app
    registers. Runs until SIGINT/SIGTERM (exit 0).
    """
    import tq.dashboard

    cfg = Config.take(kwargs)
    disp = _wiring.load_app(app_spec, cfg)[1] if app_spec else _wiring.find_dispatcher(cfg)
    queues = None
    if cfg.database_url or cfg.cloud_project or cfg.backend != "auto":
        queues = open_backend(cfg)
    try:
        stores, owned = _databases.outbox_stores(cfg, registered=bool(app_spec))
    except CLIError:
        stores, owned = [], False
    made = None
    if insecure_no_auth:
        access: Any = tq.dashboard.INSECURE_NO_AUTH
    else:
        access, made = access_of(cfg)
    label = _label(cfg, queues)
    app = tq.dashboard.app(disp, access=access, queues=queues, stores=stores, label=label)
    sock = _server.listen(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    address = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    where = f"{address}/login?token={made}" if made else f"{address}/"
    # Plain lines (never wrapped): scripts and people copy the address.
    click.echo(f"tq dashboard: {label or 'no queue backend'}", err=True)
    click.echo(f"tq dashboard: open {where}", err=True)
    if made:
        click.echo("tq dashboard: that token (made for this run) signs in as operator; set "
                   "TQ_DASHBOARD_TOKEN to choose one", err=True)  # fmt: skip
    try:
        with _server.graceful_signals(), contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_server.serve(app, sock, cfg.log_level, []))
    finally:
        sock.close()
        if queues is not None:
            queues.close()
        if owned:
            _databases.close_stores(stores)


def _label(cfg: Config, queues: Any) -> str:
    if queues is None:
        return ""
    if queues.name == "cloudtasks":
        return f"Cloud Tasks {cfg.cloud_project}/{cfg.cloud_region}"
    url = _databases.normalize_url(str(cfg.database_url))
    return f"database queue {url.split('@')[-1] if '@' in url else url}"
