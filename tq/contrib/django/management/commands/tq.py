"""`manage.py tq ...`: the `tq` command, with this Django project's settings.

Every subcommand of `tq` (docs/cli.md) runs as it is, with defaults taken
from the project, so the code is the command's own:

* `--app` / APP: the project's ASGI application
  (`tq.contrib.django.asgi:application`), so pushes go through the
  project's URLs and tq's views, and its dispatcher and stores are used;
* `--db`: the database of settings.TQ['DATABASE'] (the database queue and
  the outbox), as a SQLAlchemy URL made from the alias's settings;
* `--backend`: the project's delivery (`dbqueue` or `cloudtasks`), and for
  Cloud Tasks `--cloud-project` and `--cloud-region` from the dispatcher.

Flags and TQ_* environment variables still win. `manage.py tq dev` also
applies the migrations first. Examples::

    python manage.py tq dev                    # serve + workers + sweeps, locally
    python manage.py tq worker                 # deliver the database queue
    python manage.py tq sweep --loop           # sweep every --sweep-interval seconds
    python manage.py tq reminders list
    python manage.py tq parked replay --all --yes
    python manage.py tq queues purge default --yes
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

APP = "tq.contrib.django.asgi:application"


def project_environment() -> dict[str, str]:
    """The TQ_* variables that point the `tq` command at this project."""
    from tq.contrib.django import _databases, _state

    state = _state.current()
    env = {"TQ_APP": APP}
    alias = state.settings.database
    if _databases.supported(alias):
        url = _databases.sqlalchemy_url(alias)
        env["TQ_DATABASE_URL"] = url.render_as_string(hide_password=False)
    if state.delivery == "database":
        env["TQ_BACKEND"] = "dbqueue"
    elif state.delivery == "cloud-tasks":
        env["TQ_BACKEND"] = "cloudtasks"
        disp = state.dispatcher
        if disp.cloud_project:
            env["TQ_CLOUD_PROJECT"] = disp.cloud_project
        if disp.cloud_region:
            env["TQ_CLOUD_REGION"] = disp.cloud_region
    return env


class Command(BaseCommand):
    help = "Runs the tq command (dev, worker, sweep, queues, tasks, reminders, parked, ...)."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, help="the tq command's arguments")

    def run_from_argv(self, argv: list[str]) -> None:
        # Everything after "tq" belongs to the tq command, whose parser is click's.
        sys.exit(run(argv[2:]))

    def print_help(self, prog_name: str, subcommand: str) -> None:
        run(["--help"])

    def handle(self, *args: Any, **options: Any) -> None:
        """`call_command("tq", ...)`: returns when tq exits 0, else raises CommandError."""
        code = run(list(args))
        if code:
            raise CommandError(f"tq {' '.join(args)} exited with {code}", returncode=code)


def run(args: list[str]) -> int:
    """Runs `tq ARGS` with the project's defaults (the environment's TQ_* win); its exit code."""
    from tq.cli import main

    added = {k: v for k, v in project_environment().items() if k not in os.environ}
    os.environ.update(added)
    try:
        if args[:1] == ["dev"]:
            call_command("migrate", interactive=False, verbosity=0)
        try:
            return main(args)
        except SystemExit as e:  # click ends every run this way
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        for k in added:
            os.environ.pop(k, None)
