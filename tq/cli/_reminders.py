"""`tq reminders list|count` and `tq parked list|replay|drop`: the outbox, seen and operated."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

import click

from tq import clock
from tq.cli import _output, _wiring
from tq.cli._errors import FAILED, fail
from tq.cli._options import Config, settings_options
from tq.txn import ReminderStore
from tq.txn._store import id_to_int, key_bound

_PAGE = 500
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
_store_opts = settings_options("database_url", "spanner_database", "dispatcher")
_app = click.option(
    "--app", "app_spec", metavar="MODULE:ATTR", envvar="TQ_APP", show_envvar=True,
    help="Import this app first, and act on the stores it registers.",
)  # fmt: skip


@contextlib.contextmanager
def _stores(cfg: Config, app_spec: str | None) -> Iterator[list[ReminderStore]]:
    if app_spec:
        _wiring.load_app(app_spec, cfg)
    stores, owned = _wiring.outbox_stores(cfg, registered=bool(app_spec))
    try:
        yield stores
    finally:
        if owned:
            _wiring.close_stores(stores)


def _describe(store: ReminderStore, r: Any) -> dict[str, Any]:
    """What an operator wants to know of a reminder: class, queue or topic, URL, why parked."""
    from tq._pb import reminder_pb2

    row: dict[str, Any] = {"store": store.name, "id": r.id, "fresh_until": r.fresh_until}
    try:
        sub = r.submission()
        req = sub.request
        if sub.topic:  # a message for a Pub/Sub topic
            row.update(task_class=sub.task_class, queue="", topic=sub.topic.rsplit("/", 1)[-1],
                       created=sub.created, url="")  # fmt: skip
        else:
            row.update(
                task_class=sub.task_class,
                queue=str(req.parent).rsplit("/", 1)[-1],
                topic="",
                created=sub.created,
                url=str(req.task.http_request.url or req.task.app_engine_http_request.relative_uri),
            )
    except Exception as e:  # a payload this tq cannot read: show it, never hide the row
        row["task_class"] = f"<undecodable: {type(e).__name__}>"
    if r.extra:
        extra = reminder_pb2.ReminderExtra.FromString(r.extra)
        if extra.parked_reason:
            row.update(
                parked_code=extra.parked_code,
                parked_reason=extra.parked_reason,
                parked_at=extra.parked_at.ToDatetime(dt.UTC),
            )
    return row


def _all_keys(store: ReminderStore, limit: int) -> Iterator[Any]:
    low, high, left = key_bound(0), key_bound(1 << 128), limit
    while left > 0:
        want = min(_PAGE, left)
        page = store.fetch_reminder_keys(low, high, want)
        yield from page
        if len(page) < want:
            return
        left -= len(page)
        low = key_bound(id_to_int(page[-1].id) + 1)


# Reminders.


@click.group("reminders")
def reminders() -> None:
    """Reminders: tasks committed but not yet submitted (the outbox)."""


@reminders.command("count")
@_store_opts
@_app
@_json
def count(app_spec: str | None, as_json: bool, **kwargs: Any) -> None:
    """Count reminders (pending and parked) in each store."""
    with _stores(Config.take(kwargs), app_spec) as stores:
        rows = []
        for s in stores:
            pending, parked = s.count_reminders()
            rows.append({"store": s.name, "pending": pending, "parked": parked})
    _output.table(rows, ["store", "pending", "parked"], as_json=as_json, title="stores")


@reminders.command("list")
@_store_opts
@_app
@_json
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="Most reminders listed per store.")  # fmt: skip
@click.option("--stale", is_flag=True, help="Only reminders past fresh_until (the sweeper's).")
def list_reminders(
    app_spec: str | None, as_json: bool, limit: int, stale: bool, **kwargs: Any
) -> None:
    """List pending (unparked) reminders by ID, with their class, queue and URL."""
    now = clock.now()
    rows: list[dict[str, Any]] = []
    with _stores(Config.take(kwargs), app_spec) as stores:
        for s in stores:
            keys = [k for k in _all_keys(s, limit) if not stale or k.fresh_until <= now]
            with _output.progress(f"reading {s.name}", len(keys)) as advance:
                for i in range(0, len(keys), _PAGE):
                    batch = s.fetch_reminders([k.id for k in keys[i : i + _PAGE]])
                    rows += [_describe(s, r) for r in sorted(batch, key=lambda r: r.id)]
                    advance(len(batch))
    cols = ["store", "id", "task_class", "queue", "topic", "fresh_until", "url"]
    _output.table(rows, cols, as_json=as_json, title="reminders")


# Parked reminders.


@click.group("parked")
def parked() -> None:
    """Parked reminders: tasks whose submit failed for good, kept for an operator."""


def _parked(store: ReminderStore, limit: int) -> list[Any]:
    out: list[Any] = []
    after = ""
    while len(out) < limit:
        want = min(_PAGE, limit - len(out))
        page = store.list_parked(want, after)
        out += page
        if len(page) < want:
            break
        after = page[-1].id
    return out


@parked.command("list")
@_store_opts
@_app
@_json
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
def list_parked(app_spec: str | None, as_json: bool, limit: int, **kwargs: Any) -> None:
    """List parked reminders with why they were parked."""
    with _stores(Config.take(kwargs), app_spec) as stores:
        rows = [_describe(s, r) for s in stores for r in _parked(s, limit)]
    cols = ["store", "id", "task_class", "queue", "topic", "parked_code", "parked_at",
            "parked_reason"]  # fmt: skip
    _output.table(rows, cols, as_json=as_json, title="parked reminders")


def _select(
    stores: list[ReminderStore], ids: tuple[str, ...], all_: bool
) -> list[tuple[ReminderStore, Any]]:
    if bool(ids) == all_:
        raise click.UsageError("give reminder IDs or --all (not both)")
    found = [(s, r) for s in stores for r in _parked(s, 1 << 30)]
    if all_:
        return found
    chosen = [(s, r) for s, r in found if r.id in ids]
    missing = set(ids) - {r.id for _, r in chosen}
    if missing:
        raise fail(f"no parked reminder with ID {', '.join(sorted(missing))}", FAILED)
    return chosen


def _confirm(all_: bool, yes: bool, what: str) -> None:
    if all_ and not yes:
        click.confirm(f"{what}?", abort=True, err=True)


@parked.command("replay")
@settings_options("database_url", "spanner_database", "dispatcher", "backend", "cloud_project",
                  "cloud_region", "cloudtasks_endpoint")  # fmt: skip
@_app
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every parked reminder.")
@click.option(
    "--now",
    "submit_now",
    is_flag=True,
    help="Submit at once through the backend instead of leaving it to the next sweep.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation with --all.")
def replay(app_spec: str | None, ids: tuple[str, ...], all_: bool, submit_now: bool, yes: bool,
           **kwargs: Any) -> None:  # fmt: skip
    """Unpark reminders so they are submitted again (by the next sweep, or --now).

    Fix the cause first (a missing queue, a permission): a reminder that
    fails for good again is parked again. Exit 1 if any could not be
    replayed.
    """
    cfg = Config.take(kwargs)
    with _stores(cfg, app_spec) as stores:
        chosen = _select(stores, ids, all_)
        _confirm(all_, yes, f"replay {len(chosen)} parked reminders")
        submitter = _submitter(cfg) if submit_now else None
        failed = 0
        with _output.progress("replaying", len(chosen)) as advance:
            for store, r in chosen:
                if not store.unpark_reminder(r.id, clock.now()):
                    failed += 1
                elif submitter is not None:
                    failed += _submit(store, r, submitter)
                advance()
        _close(submitter)
    _output.say(f"replayed {len(chosen) - failed} of {len(chosen)} parked reminders"
                + ("" if submit_now else "; the next sweep submits them"))  # fmt: skip
    if failed:
        raise fail(f"{failed} reminders could not be replayed", FAILED)


def _submitter(cfg: Config) -> Any:
    if _wiring.backend_of(cfg) == "cloudtasks":
        return _wiring.cloudtasks_submitter(cfg)
    return _wiring.dbqueue_submitter(_wiring.sql_engine(_wiring.require_db(cfg)), cfg)


def _close(submitter: Any) -> None:
    if submitter is None:
        return
    close = getattr(submitter, "close", None)
    if callable(close):
        close()
    engine = getattr(submitter, "engine", None)
    if engine is not None:
        engine.dispose()


def _submit(store: ReminderStore, r: Any, submitter: Any) -> int:
    from tq import _outbox

    outcome = _outbox.submit_reminder(store, r.submission(), submitter, path="replay")
    return 0 if outcome is _outbox.Outcome.SUBMITTED else 1


@parked.command("drop")
@_store_opts
@_app
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every parked reminder.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation with --all.")
def drop(app_spec: str | None, ids: tuple[str, ...], all_: bool, yes: bool, **kwargs: Any) -> None:
    """Delete parked reminders: their tasks are given up for good."""
    with _stores(Config.take(kwargs), app_spec) as stores:
        chosen = _select(stores, ids, all_)
        _confirm(all_, yes, f"drop {len(chosen)} parked reminders for good")
        by_store: dict[str, tuple[ReminderStore, list[str]]] = {}
        for s, r in chosen:
            by_store.setdefault(s.name, (s, []))[1].append(r.id)
        for s, rids in by_store.values():
            s.delete_reminders(rids)
    _output.say(f"dropped {len(chosen)} parked reminders")
