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

from tq.cli._errors import CONFIG, exit_codes, print_error
from tq.cli._settings import from_env as settings_from_env

REQUIRED = ("click", "rich")

__all__ = ["main", "missing_dependencies", "settings_from_env"]


def missing_dependencies() -> list[str]:
    """The modules the command needs that are not installed."""
    return [m for m in REQUIRED if importlib.util.find_spec(m) is None]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `tq` command; returns (or exits with) its exit code."""
    missing = missing_dependencies()
    if missing:
        print_error(
            f"the tq command needs {', '.join(missing)}: install the cli extra "
            "(pip install 'tq[cli]')"
        )
        return CONFIG
    from tq.cli._main import cli

    with exit_codes():
        cli.main(
            args=list(argv) if argv is not None else None, prog_name="tq", standalone_mode=True
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
