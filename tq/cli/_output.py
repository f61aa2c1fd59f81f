"""What commands print: rich tables for people, JSON lines for scripts, progress on stderr."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def out() -> Console:
    """stdout; made per call so that tests capturing sys.stdout see the output.

    Not a terminal (a pipe, a file): wide enough that no cell is cut or wrapped.
    """
    width = None if sys.stdout.isatty() else 1000
    return Console(file=sys.stdout, soft_wrap=True, highlight=False, width=width)


def err() -> Console:
    return Console(file=sys.stderr, soft_wrap=True, highlight=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if hasattr(value, "value") and not isinstance(value, int | float | str | bool):
        return value.value  # enums
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(_plain(value))


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], *, as_json: bool, title: str = ""
) -> None:
    """Prints rows as a table, or as one JSON object per line with `as_json`."""
    if as_json:
        for r in rows:
            print(json.dumps({c: _plain(r.get(c)) for c in columns}, sort_keys=False))
        return
    if not rows:
        out().print(f"(no {title or 'rows'})")
        return
    t = Table(*columns, title=None, show_edge=False, pad_edge=False, box=None, header_style="bold")
    for r in rows:
        t.add_row(*(_cell(r.get(c)) for c in columns))
    out().print(t)


def value(data: dict[str, Any], *, as_json: bool) -> None:
    """Prints one record: `key: value` lines, or a JSON object."""
    if as_json:
        print(json.dumps({k: _plain(v) for k, v in data.items()}))
        return
    for k, v in data.items():
        out().print(f"{k}: {_cell(v)}")


def confirm(question: str) -> bool:
    """Asks `question [y/N]` on stderr and reads the answer from stdin; True for yes.

    End of input counts as no (a script without --yes never deletes by accident).
    """
    try:
        err().print(f"{question} [y/N]: ", end="", markup=False)
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        err().print()  # the error line that follows starts a line of its own
        raise
    if not answer or not sys.stdin.isatty():
        err().print()  # a terminal echoed the answer's newline; a pipe did not
    return answer.strip().lower() in ("y", "yes")


def say(message: str) -> None:
    """A status line for people, on stderr (stdout stays for data)."""
    err().print(message)


@contextlib.contextmanager
def progress(description: str, total: int | None) -> Iterator[Any]:
    """A rich progress bar on stderr; yields `advance(n=1)`. Quiet when stderr is not a terminal."""
    p = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err(),
        transient=True,
        disable=not sys.stderr.isatty(),
    )
    with p:
        task = p.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            p.advance(task, n)

        yield advance
