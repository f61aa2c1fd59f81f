"""`tq queues list|stats|pause|resume|purge` and `tq tasks list|delete|run`."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import click

import tq
import tq.txn
from tq._errors import ValidationError
from tq._task import deduplicated_task_id
from tq.admin import DbQueueAdmin, QueueAdmin
from tq.cli import _databases, _output, _wiring
from tq.cli._backends import (
    QUEUE_COLUMNS,
    STATS_COLUMNS,
    TASK_COLUMNS,
    open_backend,
    refusals_as_config_errors,
)
from tq.cli._errors import CONFIG, FAILED, USAGE, fail
from tq.cli._options import Config, json_lines, settings_options

_backend_opts = settings_options(
    "database_url", "backend", "cloud_project", "cloud_region", "cloudtasks_endpoint"
)


@contextlib.contextmanager
def _backend(kwargs: dict[str, Any]) -> Iterator[QueueAdmin]:
    backend = open_backend(Config.take(kwargs))
    try:
        with refusals_as_config_errors():
            yield backend
    finally:
        backend.close()


@click.group("queues")
def queues() -> None:
    """Queues of the database queue (--db) or of Cloud Tasks (--cloud-project)."""


@queues.command("list")
@_backend_opts
@json_lines
def list_queues(as_json: bool, **kwargs: Any) -> None:
    """List queues with their state, rate and retry limit."""
    with _backend(kwargs) as b:
        rows = b.list_queues()
    _output.table(rows, QUEUE_COLUMNS, as_json=as_json, title="queues")


@queues.command("stats")
@_backend_opts
@json_lines
@click.argument("queue", required=False)
def stats(queue: str | None, as_json: bool, **kwargs: Any) -> None:
    """Tasks waiting, oldest ETA, in flight, done and failed, per queue.

    On Cloud Tasks (whose v2 API has no stats) waiting tasks are counted by
    listing them; the other columns are empty. Exit 1 if QUEUE does not exist.
    """
    with _backend(kwargs) as b:
        if queue is not None and not b.has_queue(queue):
            raise fail(f"no queue {queue!r}", FAILED)
        rows = b.stats(queue)
    _output.table(rows, STATS_COLUMNS, as_json=as_json, title="queues")


def _switch(kwargs: dict[str, Any], queue: str, pause: bool) -> None:
    with _backend(kwargs) as b:
        ok = b.pause(queue) if pause else b.resume(queue)
    if not ok:
        raise fail(f"no queue {queue!r}", FAILED)
    _output.say(f"queue {queue} {'paused' if pause else 'resumed'}")


@queues.command("pause")
@_backend_opts
@click.argument("queue")
def pause(queue: str, **kwargs: Any) -> None:
    """Stop dispatching QUEUE's tasks (they are kept). Exit 1 if there is no such queue."""
    _switch(kwargs, queue, True)


@queues.command("resume")
@_backend_opts
@click.argument("queue")
def resume(queue: str, **kwargs: Any) -> None:
    """Dispatch QUEUE's tasks again. Exit 1 if there is no such queue."""
    _switch(kwargs, queue, False)


@queues.command("purge")
@_backend_opts
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(queue: str, yes: bool, **kwargs: Any) -> None:
    """Delete every task waiting in QUEUE. Exit 1 if there is no such queue."""
    if not yes and not _output.confirm(f"delete every task of queue {queue}?"):
        raise fail(f"declined: queue {queue} not purged", FAILED)
    with _backend(kwargs) as b:
        n = b.purge(queue)
    if n is None:
        raise fail(f"no queue {queue!r}", FAILED)
    _output.say(f"queue {queue} purged" + (f": {n} tasks deleted" if n else ""))


_BACKEND_NAMES = {"dbqueue": "the database queue", "cloudtasks": "Cloud Tasks"}


def _check_state(backend: QueueAdmin, state: str | None) -> None:
    """A --state the backend has no such state for is a usage error (exit 2)."""
    if state is not None and state not in backend.states:
        raise fail(
            f"--state {state!r}: {_BACKEND_NAMES.get(backend.name, backend.name)} has the "
            "states " + ", ".join(backend.states),
            USAGE,
        )


# Tasks.


@click.group("tasks")
def tasks() -> None:
    """Tasks waiting, running or finished, in the database queue or Cloud Tasks."""


@tasks.command("list")
@_backend_opts
@json_lines
@click.option("--queue", help="Only this queue.")
@click.option("--state", help="Only this state (database queue: pending, leased, done, failed, "
              "deleted; Cloud Tasks: pending).")  # fmt: skip
@click.option("--task-class", help="Only tasks of this class ID.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
def list_tasks(
    queue: str | None,
    state: str | None,
    task_class: str | None,
    limit: int,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """List tasks (oldest first on the database queue)."""
    with _backend(kwargs) as b:
        _check_state(b, state)
        rows = b.list_tasks(queue, state, task_class, limit)
    cols = [*TASK_COLUMNS, "last_error"] if as_json else list(TASK_COLUMNS)
    # The database queue's priorities, tags and heartbeat progress, where any task has one.
    cols += [k for k in ("priority", "tag", "progress") if any(r.get(k) for r in rows)]
    _output.table(rows, cols, as_json=as_json, title="tasks")


@tasks.command("clean")
@_backend_opts
@json_lines
@click.option("--queue", help="Only this queue.")
@click.option("--state", help="Only this state: pending, leased, done, failed, deleted.")
@click.option("--task-class", help="Only tasks of this class ID.")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def clean(
    queue: str | None,
    state: str | None,
    task_class: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    **kwargs: Any,
) -> None:
    """Delete tasks of the database queue by queue, state and class (at least one).

    Waiting and running tasks are deleted (they will not run; their names
    stay taken for the tombstone window); finished ones are dropped, except
    those whose names are still reserved. Works in batches, with a progress
    bar. --dry-run counts what would happen.
    """
    if queue is None and state is None and task_class is None:
        raise fail("give --queue, --state or --task-class: clean never deletes everything", CONFIG)
    with _backend(kwargs) as b:
        if not isinstance(b, DbQueueAdmin):
            raise fail("tq tasks clean works on the database queue (--db) only", CONFIG)
        _check_state(b, state)
        total = b.count_tasks(queue, state, task_class)
        if not (dry_run or not total or yes or _output.confirm(f"delete {total} tasks?")):
            raise fail(f"declined: {total} tasks not deleted", FAILED)
        if dry_run or not total:
            row = b.clean(queue, state, task_class, dry_run=True)
        else:
            with _output.progress("cleaning", total) as advance:
                row = b.clean(queue, state, task_class, progress=advance)
    if as_json:
        _output.value(row, as_json=True)
        return
    verb = "would be" if dry_run else "were"
    _output.say(
        f"{row['matched']} tasks matched: {row['deleted']} waiting or running {verb} deleted, "
        f"{row['dropped']} finished {verb} dropped, {row['kept']} kept while their names "
        "are reserved"
    )


@tasks.command("delete")
@settings_options(
    "database_url", "spanner_database", "backend", "cloud_project", "cloud_region",
    "cloudtasks_endpoint", "namespace",
)  # fmt: skip
@click.argument("queue")
@click.argument("names", nargs=-1)
@click.option("--task-class", help="With --dedup-key: the class the tasks were added with.")
@click.option(
    "--dedup-key", "dedup_keys", multiple=True,
    help="Delete the task of --task-class added with this deduplication key (repeatable).",
)  # fmt: skip
def delete(
    queue: str,
    names: tuple[str, ...],
    task_class: str | None,
    dedup_keys: tuple[str, ...],
    **kwargs: Any,
) -> None:
    """Delete waiting (or running) tasks of QUEUE so they never run (again).

    Name them by task ID (NAMES, as `tq tasks list` shows them), or by
    --task-class and --dedup-key (the deduplication keys they were added
    with, under --namespace). On Cloud Tasks, with the outbox's --db or
    --spanner, a task whose reminder is still pending there (committed, not
    yet submitted) has its reminder deleted too, so no sweep creates it.
    Exit 1 if any was not found, 2 for a malformed name.
    """
    if bool(task_class) != bool(dedup_keys):
        raise fail("--task-class and --dedup-key go together", USAGE)
    if not names and not dedup_keys:
        raise fail("give task NAMES, or --task-class and --dedup-key", USAGE)
    cfg = Config.take(kwargs)
    ids = list(names)
    if task_class:
        ids += [deduplicated_task_id(cfg.namespace or "", task_class, k) for k in dedup_keys]
    with _deleting_dispatcher(cfg) as disp:
        missing = []
        for task_id in ids:
            try:
                result = disp.delete_task(f"{queue}/tasks/{task_id}")
            except ValidationError as e:
                raise fail(str(e), USAGE) from None
            if not result.deleted:
                missing.append(task_id)
    _output.say(f"deleted {len(ids) - len(missing)} tasks")
    if missing:
        raise fail(f"no waiting task {', '.join(missing)} in queue {queue!r}", FAILED)


@contextlib.contextmanager
def _deleting_dispatcher(cfg: Config) -> Iterator[tq.Dispatcher]:
    """A dispatcher whose submitter is the backend's (tq.Dispatcher.delete_task does the work).

    The database queue keeps no project or location: names there get
    placeholders. On Cloud Tasks the outbox stores on --db / --spanner, if
    given, are registered while it deletes (pending reminders are taken back).
    """
    submitter: Any
    close: Callable[[], None]
    if _wiring.backend_of(cfg) == "cloudtasks":
        if not cfg.cloud_project or not cfg.cloud_region:
            raise fail("Cloud Tasks needs --cloud-project and --cloud-region", CONFIG)
        submitter = tq.CloudTasksSubmitter(endpoint=cfg.cloudtasks_endpoint)
        project, region = cfg.cloud_project, cfg.cloud_region
        outbox = cfg.database_url or cfg.spanner_database
        stores = _databases.outbox_stores(cfg)[0] if outbox else []
        for store in stores:
            tq.txn.register_store(store)
        close = functools.partial(_close_cloud_tasks, submitter, stores)
    else:
        from tq.dbqueue import DbQueueSubmitter

        engine = _databases.sql_engine(_databases.require_db(cfg))
        submitter = DbQueueSubmitter(engine)
        project = cfg.cloud_project or _wiring.DEV_PROJECT
        region = cfg.cloud_region or _wiring.DEV_REGION
        close = engine.dispose
    try:
        yield tq.Dispatcher(
            cloud_project=project, cloud_region=region, namespace=cfg.namespace or "",
            submitter=submitter,
        )  # fmt: skip
    finally:
        close()


def _close_cloud_tasks(submitter: tq.CloudTasksSubmitter, stores: list[Any]) -> None:
    for store in stores:
        tq.txn.unregister_store(store.name)
    _databases.close_stores(stores)
    submitter.close()


@tasks.command("run")
@_backend_opts
@click.argument("queue")
@click.argument("names", nargs=-1, required=True)
def run(queue: str, names: tuple[str, ...], **kwargs: Any) -> None:
    """Run tasks now: make waiting tasks due now, or retry failed ones from scratch.

    On Cloud Tasks this is RunTask (dispatch now). Exit 1 if a task is
    neither waiting nor failed (or, on Cloud Tasks, not found).
    """
    with _backend(kwargs) as b:
        missing = [n for n in names if not b.run_task(queue, n)]
    _output.say(f"{len(names) - len(missing)} tasks due now")
    if missing:
        raise fail(f"no waiting or failed task {', '.join(missing)} in queue {queue!r}", FAILED)
