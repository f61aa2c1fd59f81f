"""The `tq` command: run, inspect and operate tq locally and in production.

`tq dev APP` runs an app on the embedded default (SQLite, database-queue
workers in process, periodic sweeps, push authentication off); `tq serve`,
`tq worker` and `tq sweep` run the production parts; `tq db`, `tq queues`,
`tq tasks`, `tq reminders` and `tq parked` create tables and show and act on
what is queued, stuck or parked. See docs/cli.md.

This package is a composition root: the one part of `tq` that wires in
`sweeper` and `tq.dbqueue`. It needs the `cli` extra (click and rich);
`main()` says so clearly when they are missing. `import tq` never imports it.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

from tq.cli._errors import CONFIG, USAGE, exit_codes, print_error
from tq.cli._settings import from_env as settings_from_env

REQUIRED = ("click", "rich")

__all__ = ["main", "missing_dependencies", "settings_from_env"]


def missing_dependencies() -> list[str]:
    """The modules the command needs that are not installed."""
    return [m for m in REQUIRED if importlib.util.find_spec(m) is None]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `tq` command; returns (or exits with) its exit code.

    Every error, usage errors included, is one line on stderr starting with
    `tq: error: ` (docs/cli.md, "Exit codes").
    """
    missing = missing_dependencies()
    if missing:
        print_error(
            f"the tq command needs {', '.join(missing)}: install the cli extra "
            "(pip install 'tq[cli]')"
        )
        return CONFIG
    import click

    from tq.cli._main import cli

    with exit_codes():
        try:
            code = cli.main(
                args=list(argv) if argv is not None else None,
                prog_name="tq",
                standalone_mode=False,
            )
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx is not None else e.format_message())
            return 0
        except click.UsageError as e:
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            print_error(e.format_message() + where)
            return USAGE
        except click.ClickException as e:
            print_error(e.format_message())
            return e.exit_code
        except click.Abort:
            raise KeyboardInterrupt from None
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
