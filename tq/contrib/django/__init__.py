"""tq for Django: a django.tasks backend, the outbox in atomic() blocks, views, commands.

Add the app and the backend, mount the views, run the migrations::

    INSTALLED_APPS = [..., "tq.contrib.django"]
    TASKS = {"default": {"BACKEND": "tq.contrib.django.backend.TqBackend"}}
    TQ = {...}                          # optional, see tq.contrib.django._settings
    # urls.py
    path("internal/tasks/", include("tq.contrib.django.urls"))

Then `@task` functions enqueued inside `transaction.atomic()` are written in
that transaction (as are `disp.add_task` calls with protobuf task
classes), and delivered by Cloud Tasks or the database queue after it
commits; `manage.py tq ...` runs the `tq` command with the project's
settings (dev server, workers, sweeps, and looking at and acting on tasks).
Requires Django 6 (`pip install 'tq[django]'`). See docs/django.md.

Nothing in tq imports this package; importing it does not load Django
models (the backend lives in `tq.contrib.django.backend`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["mark_done", "on_database", "once"]


def __getattr__(name: str) -> object:
    # once and mark_done need Django's settings: imported on first use.
    if name in ("once", "mark_done"):
        from tq.contrib.django import _once

        return getattr(_once, name)
    raise AttributeError(f"module 'tq.contrib.django' has no attribute {name!r}")


@contextlib.contextmanager
def on_database(alias: str) -> Iterator[None]:
    """Tasks added in the block go into the `atomic()` block of database `alias`.

    Needed only where atomic blocks are open on several databases at once
    (tq refuses to guess); ConfigError if tq does not watch `alias`.
    """
    from tq.contrib.django import _atomic

    with _atomic.on_database(alias):
        yield
