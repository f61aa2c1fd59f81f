"""`tq schedules`: the cron schedules of an app's task classes, for Cloud Scheduler.

On the database queue the workers fire the schedules themselves. On Cloud
Tasks, one Cloud Scheduler job per scheduled class calls the cron endpoint
(`<mount>/c/cron/<class ID>`, see `tq.asgi`), which adds the task of the
tick; this command prints those jobs as `gcloud scheduler jobs create http`
commands or as App Engine `cron.yaml` entries.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import click

import tq
from tq.cli import _output, _wiring
from tq.cli._errors import CONFIG, fail
from tq.cli._options import Config, settings_options
from tq.cron import Cron

DEFAULT_MOUNT = "/internal/tasks"
_DAY_NAMES = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")


def cron_path(mount: str, class_id: str) -> str:
    """The path of a class's cron endpoint under the push app's mount point."""
    return f"{mount.rstrip('/')}/c/cron/{class_id}"


def job_id(prefix: str, class_id: str) -> str:
    """A Cloud Scheduler job ID ([A-Za-z0-9_-]) for a class."""
    return prefix + re.sub(r"[^A-Za-z0-9_-]", "-", class_id)


def app_engine_schedule(cron: Cron) -> str | None:
    """The App Engine cron.yaml schedule ticking like `cron`, or None if there is none.

    App Engine's cron.yaml speaks an English-like format, not unix-cron; the
    daily, weekly-by-day and evenly divided minute or hour cases translate.
    """
    minute, hour, dom, month, dow = cron.fields
    if (dom, month) != ("*", "*"):
        return None
    if minute.isdigit() and hour.isdigit():
        at = f"{int(hour):02d}:{int(minute):02d}"
        if dow == "*":
            return f"every day {at}"
        if not any(c in dow for c in "*/"):
            return f"every {','.join(_DAY_NAMES[d] for d in cron.days_of_week)} {at}"
        return None
    if dow != "*":
        return None
    if hour == "*" and (minute == "*" or _even_step(minute, 60)):
        n = 1 if minute == "*" else int(minute[2:])
        return f"every {n} minutes" + (" synchronized" if n > 1 else "")
    if minute == "0" and (hour == "*" or _even_step(hour, 24)):
        n = 1 if hour == "*" else int(hour[2:])
        return f"every {n} hours synchronized"
    return None


def _even_step(field: str, period: int) -> bool:
    return field.startswith("*/") and field[2:].isdigit() and period % int(field[2:]) == 0


@click.command("schedules")
@settings_options("dispatcher", "target_host", "push_audience", "authorized_launchers",
                  "cloud_region", "namespace")  # fmt: skip
@click.option("--app", "app_spec", metavar="MODULE:ATTR", envvar="TQ_APP", show_envvar=True,
              help="The app whose dispatcher holds the scheduled classes.")  # fmt: skip
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "gcloud", "cron.yaml", "json"]),
    default="table",
    show_default=True,
    help="A table, gcloud commands (Cloud Scheduler), App Engine cron.yaml entries, or JSON.",
)
@click.option(
    "--mount",
    default=DEFAULT_MOUNT,
    show_default=True,
    help="Where the app mounts tq.asgi.app (the cron endpoint is <mount>/c/cron/ID).",
)
@click.option("--job-prefix", default="tq-cron-", show_default=True,
              help="Prefix of the Cloud Scheduler job IDs.")  # fmt: skip
def schedules(app_spec: str | None, fmt: str, mount: str, job_prefix: str, **kwargs: Any) -> None:
    """Show the cron schedules of the app's task classes, or export them to Cloud Scheduler.

    `--format gcloud` prints one `gcloud scheduler jobs create http` command
    per scheduled class: the job calls https://<--target-host><mount>/c/cron/<ID>
    with an OIDC token of the first --authorized-launchers account (the
    endpoint accepts those), audience --push-audience or https://<host>.
    `--format cron.yaml` prints App Engine cron entries (App Engine trusts its
    own cron calls); a schedule App Engine's format cannot say is printed as a
    comment, to create as a Cloud Scheduler job instead.
    """
    cfg = Config.take(kwargs)
    if app_spec:
        _, disp = _wiring.load_app(app_spec, cfg)
    else:
        disp = _wiring.find_dispatcher(cfg)
    _wiring.configure_dispatcher(disp, cfg)
    classes = disp.schedules()
    if fmt == "gcloud":
        click.echo(gcloud_commands(disp, classes, cfg, mount, job_prefix), nl=False)
    elif fmt == "cron.yaml":
        click.echo(cron_yaml(classes, mount), nl=False)
    else:
        now = tq.clock.now()
        rows = [
            {"class": c.id, "schedule": c.schedule.expression, "time_zone": c.schedule.time_zone,
             "next_tick": c.schedule.next_after(now), "path": cron_path(mount, c.id)}
            for c in classes if c.schedule is not None
        ]  # fmt: skip
        _output.table(rows, ["class", "schedule", "time_zone", "next_tick", "path"],
                      as_json=fmt == "json")  # fmt: skip


def gcloud_commands(
    disp: tq.Dispatcher, classes: list[tq.TaskClass], cfg: Config, mount: str, prefix: str
) -> str:
    """One `gcloud scheduler jobs create http` command per scheduled class."""
    host = disp.default_target_host
    if not host:
        raise fail("gcloud jobs need the service's host: give --target-host", CONFIG)
    if not cfg.authorized_launchers:
        raise fail(
            "gcloud jobs need the account Cloud Scheduler calls as: give --authorized-launchers "
            "(the cron endpoint accepts its tokens)",
            CONFIG,
        )
    region = disp.cloud_region or cfg.cloud_region
    audience = disp.push_audience or f"https://{host}"
    lines = []
    for c in classes:
        assert c.schedule is not None
        args = ["gcloud", "scheduler", "jobs", "create", "http", job_id(prefix, c.id)]
        if region:
            args.append(f"--location={region}")
        args += [
            f"--schedule={c.schedule.expression}",
            f"--time-zone={c.schedule.time_zone}",
            f"--uri=https://{host}{cron_path(mount, c.id)}",
            "--http-method=POST",
            f"--oidc-service-account-email={cfg.authorized_launchers[0]}",
            f"--oidc-token-audience={audience}",
        ]
        lines.append(" ".join(shlex.quote(a) for a in args))
    return "".join(line + "\n" for line in lines)


def cron_yaml(classes: list[tq.TaskClass], mount: str) -> str:
    """App Engine cron.yaml entries of the scheduled classes (with the `cron:` key)."""
    out = ["cron:"]
    for c in classes:
        assert c.schedule is not None
        schedule = app_engine_schedule(c.schedule)
        if schedule is None:
            out.append(
                f"  # {c.id}: {c.schedule.expression!r} has no cron.yaml equivalent; create a "
                "Cloud Scheduler job for it (tq schedules --format gcloud)"
            )
            continue
        out += [
            f"  - description: tq cron {c.id}",
            f"    url: {cron_path(mount, c.id)}",
            f"    schedule: {schedule}",
            f"    timezone: {c.schedule.time_zone}",
        ]
    return "\n".join(out) + "\n"


__all__ = ["app_engine_schedule", "cron_yaml", "gcloud_commands", "schedules"]
