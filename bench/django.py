"""13. Django: enqueue inside atomic() vs one extra row by hand and vs django-tasks-db.

Every variant runs the same Django transaction (`transaction.atomic()`,
one `Order` saved with the ORM), one after another on one connection, and
does one more thing in it:

  row by hand        saves one more model row (a task path, its JSON
                     arguments, a queue, a time) with the ORM: the baseline
                     of goal 1 (tq >= 0.9x)
  django-tasks-db    `task.using(backend=<django-tasks-db>).enqueue(id)`:
                     the ORM-based django.tasks backend (its result row is
                     its queue): the baseline of goal 2 (tq >= 1x)
  tq, database queue `task.enqueue(id)` through tq's backend, delivery to
                     the database queue (the local default): the task row,
                     written through Django's connection (it stands for the
                     READY result until the first attempt writes one)
  tq, outbox         the same with tasks going to Cloud Tasks (a no-op
                     submitter): the result row and the reminder; the
                     happy path after the commit switched off
  tq, outbox + happy the same with the happy path (the submit, then the
                     reminder's DELETE after the commit)
  plain              the transaction alone (for scale)

On PostgreSQL (loopback, fsync off) and on SQLite (a file in WAL mode).
Needs Django 6 (Python 3.12+) and django-tasks-db, neither a dependency of
tq: scripts/bench installs them in .tq-run/benchenv-django; without them
this script says so and compares nothing.

Usage: python -m bench.django [--n 1000] [--rounds 3]
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench import _common as c

BACKENDS = ("pg", "sqlite")
CURRENT = {"alias": "pg"}  # the database of the round; django-tasks-db writes there


class Router:
    """Sends django-tasks-db's ORM writes (and everything unnamed) to the round's database."""

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return CURRENT["alias"]

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return CURRENT["alias"]


def configure(pg_url: str, sqlite_path: str) -> None:
    import urllib.parse

    import django
    from django.conf import settings

    u = urllib.parse.urlsplit(pg_url.replace("postgresql+psycopg://", "postgresql://", 1))
    settings.configure(
        SECRET_KEY="bench",
        USE_TZ=True,
        INSTALLED_APPS=["tq.contrib.django", "django_tasks_db", "bench.django_app"],
        DATABASES={
            "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
            "pg": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": u.path.lstrip("/"),
                "USER": u.username or "",
                "PASSWORD": u.password or "",
                "HOST": u.hostname or "",
                "PORT": str(u.port or ""),
            },
            "sqlite": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": sqlite_path,
                "OPTIONS": {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL"},
            },
        },
        TASKS={
            "default": {"BACKEND": "tq.contrib.django.backend.TqBackend"},
            "dtdb": {"BACKEND": "django_tasks_db.backend.DatabaseBackend"},
        },
        TQ={
            "TARGET_HOST": "app.example.com",
            "DELIVERY": "database",
            "DATABASE": "pg",
            "OUTBOX_DATABASES": ["pg", "sqlite"],
        },
        DATABASE_ROUTERS=["bench.django.Router"],
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()
    from django.core.management import call_command

    for alias in BACKENDS:
        call_command("migrate", database=alias, run_syncdb=True, verbosity=0)


@contextlib.contextmanager
def tq_settings(alias: str) -> Iterator[None]:
    """tq's results and database queue on `alias` for the block."""
    from django.test import override_settings

    from tq.contrib.django import _state

    cfg = _state.current().settings
    with override_settings(
        TQ={
            "TARGET_HOST": "app.example.com",
            "DELIVERY": "database",
            "DATABASE": alias,
            "OUTBOX_DATABASES": list(cfg.outbox_databases or BACKENDS),
        }
    ):
        yield


def variants(alias: str) -> dict[str, Callable[[int], None]]:
    from django.db import transaction
    from django.utils import timezone

    from bench.django_app.models import Order, OutboxRow
    from bench.django_app.tasks import confirm

    orders = Order.objects.using(alias)
    rows = OutboxRow.objects.using(alias)
    by_db = confirm.using(backend="dtdb")
    atomic = transaction.atomic

    def plain(i: int) -> None:
        with atomic(using=alias):
            orders.create(item="tea", quantity=i)

    def by_hand(i: int) -> None:
        with atomic(using=alias):
            o = orders.create(item="tea", quantity=i)
            rows.create(
                task_path="bench.django_app.tasks.confirm",
                args_json=json.dumps([o.id]),
                queue_name="default",
                created_at=timezone.now(),
            )

    def tq_enqueue(i: int) -> None:
        with atomic(using=alias):
            o = orders.create(item="tea", quantity=i)
            confirm.enqueue(o.id)

    def dtdb(i: int) -> None:
        with atomic(using=alias):
            o = orders.create(item="tea", quantity=i)
            by_db.enqueue(o.id)

    return {
        "plain": plain,
        "row by hand": by_hand,
        "django-tasks-db": dtdb,
        "tq dbqueue": tq_enqueue,
        "tq outbox": tq_enqueue,
        "tq outbox + happy": tq_enqueue,
    }


def around(name: str) -> contextlib.AbstractContextManager[Any]:
    """The context of one variant's chunk: where its tasks go, whether the happy path runs."""
    import tq

    if not name.startswith("tq outbox"):
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(tq.use_submitter(c.NullSubmitter()))
    stack.enter_context(c.happy_path(name.endswith("happy")))
    return stack


def clean(alias: str) -> None:
    from django.db import connections

    with connections[alias].cursor() as cursor:
        for table in (
            "django_app_order", "django_app_outboxrow", "django_tasks_database_dbtaskresult",
            "tq_django_task_results", "tq_tasks", "tq_reminders",
        ):  # fmt: skip
            cursor.execute(f"DELETE FROM {table}")


def main() -> None:
    ap = c.args(__doc__)
    ap.add_argument("--n", type=int, default=1000)
    a = ap.parse_args()
    n, rounds = (20, 1) if a.tiny else (a.n, a.rounds)
    table = c.Table("13. Django: enqueue in atomic() vs a row by hand and vs django-tasks-db")
    missing = [m for m in ("django", "django_tasks_db") if importlib.util.find_spec(m) is None]
    if missing:
        table.notes.append(
            f"Skipped: {', '.join(missing)} not installed here (Django 6 needs Python 3.12+; "
            "scripts/bench installs both in .tq-run/benchenv-django)."
        )
        table.print()
        return
    import django
    import django_tasks_db

    started = time.perf_counter()
    results: dict[str, dict[str, list[float]]] = {}
    with c.postgres() as server, tempfile.TemporaryDirectory() as tmp:
        configure(c.fresh_database(server, "tq_bench_django"), os.path.join(tmp, "bench.db"))
        try:
            for alias in BACKENDS:
                CURRENT["alias"] = alias
                with tq_settings(alias):
                    fns = variants(alias)
                    res: dict[str, list[float]] = {k: [] for k in fns}
                    hooks = {k: (lambda k=k: around(k)) for k in fns}
                    for _ in range(rounds):
                        for k, v in c.race(fns, n, warmup=min(100, n), around=hooks).items():
                            res[k].append(v)
                        clean(alias)
                    results[alias] = res
        finally:
            from django.db import connections

            from tq.contrib.django import _databases

            connections.close_all()
            _databases.dispose_engines()
    for alias, res in results.items():
        db = "PostgreSQL" if alias == "pg" else "SQLite"
        hand, dtdb = res["row by hand"], res["django-tasks-db"]
        for kind, key in (("database queue", "tq dbqueue"), ("outbox", "tq outbox")):
            table.ratio_row(f"{db}: tq enqueue, {kind} / row by hand", res[key], hand, goal=0.9)
        for kind, key in (("database queue", "tq dbqueue"), ("outbox", "tq outbox")):
            table.ratio_row(f"{db}: tq enqueue, {kind} / django-tasks-db", res[key], dtdb, goal=1.0)
        happy = res["tq outbox + happy"]
        table.ratio_row(f"{db}: tq outbox + happy path / row by hand", happy, hand)
        table.ratio_row(f"{db}: the transaction alone / row by hand", res["plain"], hand)
    table.notes.append(
        f"Transactions per second, each `transaction.atomic()` with one Order saved by the "
        f"ORM plus the variant's work (Django {django.get_version()}, psycopg 3; "
        f"django-tasks-db {getattr(django_tasks_db, '__version__', '0.13.0')}). PostgreSQL on "
        f"loopback, fsync off; SQLite a file in WAL mode. {n} transactions per variant and round, "
        f"{rounds} rounds; took {time.perf_counter() - started:.0f} s; load average "
        f"{c.load_average()}."
    )
    table.print()


if __name__ == "__main__":
    main()
