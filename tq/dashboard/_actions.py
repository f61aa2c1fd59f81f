"""The operator's actions: a confirmation page each, then the act itself, logged with who.

Every action goes through the admin layer (`tq.admin`), the same code as
the `tq` command: pause, resume and purge a queue; delete or run a task
now; replay or drop parked reminders. The confirmation page is a GET that
changes nothing; the act is a POST carrying the CSRF token of the user.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tq.dashboard._access import User
from tq.dashboard._context import Ctx, NotFound
from tq.dashboard._html import Markup, join, link, quote, tag

log = logging.getLogger("tq.dashboard")

QUEUE_ACTIONS = ("pause", "resume", "purge", "clean")
TASK_ACTIONS = ("run", "delete")
PARKED_ACTIONS = ("replay", "drop")
ACTIONS = QUEUE_ACTIONS + TASK_ACTIONS + PARKED_ACTIONS


class Refused(Exception):
    """The action's input is wrong (a 400 page); nothing was done."""


@dataclasses.dataclass(frozen=True)
class Request:
    """What an action acts on, from the query (confirm) or the form (act)."""

    action: str
    queue: str = ""
    name: str = ""
    store: str | None = None
    ids: tuple[str, ...] = ()
    all: bool = False
    state: str = ""  # clean: which tasks
    task_class: str = ""

    @classmethod
    def parse(cls, action: str, fields: Mapping[str, str], ids: Sequence[str]) -> Request:
        if action == "selected":  # the parked page's form: which button was pressed
            action = fields.get("action", "")
        if action not in ACTIONS:
            raise Refused(f"no action {action!r}")
        r = cls(
            action,
            queue=fields.get("queue", ""),
            name=fields.get("name", ""),
            store=fields.get("store") or None,
            ids=tuple(i for i in ids if i),
            all=fields.get("all") == "1",
            state=fields.get("state", ""),
            task_class=fields.get("class", ""),
        )
        if action in QUEUE_ACTIONS + TASK_ACTIONS and not r.queue:
            raise Refused("which queue?")
        if action in TASK_ACTIONS and not r.name:
            raise Refused("which task?")
        if action in PARKED_ACTIONS and r.all == bool(r.ids):
            raise Refused("select parked reminders (or all of them), not both")
        return r

    def fields(self) -> list[tuple[str, str]]:
        out = [
            (k, v)
            for k, v in (
                ("queue", self.queue),
                ("name", self.name),
                ("store", self.store or ""),
                ("state", self.state),
                ("class", self.task_class),
            )
            if v
        ]
        out += [("ids", i) for i in self.ids]
        if self.all:
            out.append(("all", "1"))
        return out

    def back(self) -> str:
        """The page to return to after the action (or its cancellation)."""
        if self.action in PARKED_ACTIONS:
            return "/parked"
        if self.action in TASK_ACTIONS and self.action != "delete":
            return f"/queues/{quote(self.queue)}/tasks/{quote(self.name)}"
        if self.action == "clean" and self.state:
            return f"/queues/{quote(self.queue)}?state={quote(self.state)}"
        return f"/queues/{quote(self.queue)}"


def _question(ctx: Ctx, r: Request) -> str:
    admin = ctx.src.queues
    if r.action in QUEUE_ACTIONS + TASK_ACTIONS and (admin is None or not admin.has_queue(r.queue)):
        raise NotFound(f"no queue {r.queue!r}")
    if r.action == "pause":
        return f"Pause queue {r.queue}? Its tasks are kept and wait until it is resumed."
    if r.action == "resume":
        return f"Resume queue {r.queue}? Its waiting tasks will be dispatched again."
    if r.action == "purge":
        assert admin is not None
        (s,) = admin.stats(r.queue)
        return (
            f"Purge queue {r.queue}? This deletes every waiting task ({s['tasks']} now); "
            "they will never run."
        )
    if r.action == "clean":
        c = _clean(admin, r, dry_run=True)
        which = " ".join(
            x for x in (r.state, f"of class {r.task_class}" if r.task_class else "") if x
        )
        return (
            f"Clean the {which or ''} tasks of queue {r.queue}? {c['matched']} match: "
            f"{c['deleted']} waiting or running would be deleted (never to run), "
            f"{c['dropped']} finished would be dropped, {c['kept']} kept while their names "
            "are reserved."
        )
    if r.action == "delete":
        return f"Delete task {r.name} of queue {r.queue}? It will never run."
    if r.action == "run":
        return f"Run task {r.name} of queue {r.queue} now?"
    what = "every parked reminder" if r.all else f"{len(r.ids)} parked reminders"
    where = f" of store {r.store}" if r.store else ""
    if r.action == "replay":
        return f"Replay {what}{where}? The next sweep submits them again; fix the cause first."
    return f"Drop {what}{where}? Their tasks are given up for good."


def confirm(ctx: Ctx, r: Request) -> str:
    """The page asking to confirm `r`, with the POST form that does it."""
    hidden = [tag("input", type="hidden", name=k, value=v) for k, v in r.fields()]
    hidden.append(tag("input", type="hidden", name="csrf", value=ctx.csrf))
    danger = r.action in ("purge", "clean", "delete", "drop")
    form = tag(
        "form",
        join(
            [
                *hidden,
                tag(
                    "button",
                    f"Yes, {r.action}",
                    type="submit",
                    class_="danger" if danger else "go",
                    id="confirm",
                ),
                Markup(" "),
                link(ctx.href(r.back()), "Cancel", class_="button", id="cancel"),
            ]
        ),
        method="post",
        action=ctx.href(f"/act/{r.action}"),
    )
    items = [tag("li", i) for i in r.ids[:50]]
    listing = tag("ul", join(items)) if items else Markup("")
    body = join([tag("p", _question(ctx, r), id="question"), listing, form])
    return ctx.page(f"Confirm: {r.action}", body)


def perform(ctx: Ctx, r: Request) -> tuple[str, str, bool]:
    """Does `r`; returns (message, page to go back to, whether it did what was asked)."""
    user = ctx.user
    if r.action in QUEUE_ACTIONS + TASK_ACTIONS:
        ok, message = _on_queues(ctx, r)
    else:
        ok, message = _on_parked(ctx, r)
    _log(user, r, message, ok)
    return message, r.back(), ok


def _on_queues(ctx: Ctx, r: Request) -> tuple[bool, str]:
    admin = ctx.src.queues
    if admin is None:
        raise NotFound("no queue backend")
    if r.action == "pause":
        ok = admin.pause(r.queue)
        return ok, f"queue {r.queue} paused" if ok else f"no queue {r.queue}"
    if r.action == "resume":
        ok = admin.resume(r.queue)
        return ok, f"queue {r.queue} resumed" if ok else f"no queue {r.queue}"
    if r.action == "purge":
        n = admin.purge(r.queue)
        if n is None:
            return False, f"no queue {r.queue}"
        return True, f"queue {r.queue} purged" + (f": {n} tasks deleted" if n else "")
    if r.action == "clean":
        c = _clean(admin, r, dry_run=False)
        return True, (
            f"{c['matched']} tasks cleaned from queue {r.queue}: {c['deleted']} deleted, "
            f"{c['dropped']} dropped, {c['kept']} kept while their names are reserved"
        )
    if r.action == "delete":
        ok = admin.delete_task(r.queue, r.name)
        return ok, (
            f"task {r.name} deleted"
            if ok
            else f"task {r.name} is not waiting or running: nothing deleted"
        )
    ok = admin.run_task(r.queue, r.name)
    return ok, (
        f"task {r.name} runs now"
        if ok
        else f"task {r.name} is neither waiting nor failed: nothing to run"
    )


def _clean(admin: Any, r: Request, *, dry_run: bool) -> dict[str, Any]:
    if not hasattr(admin, "clean"):
        raise Refused("this backend cannot clean tasks (the database queue can)")
    if not (r.state or r.task_class):
        raise Refused("clean which tasks? Choose a state or a class first")
    try:
        found: dict[str, Any] = admin.clean(
            r.queue, r.state or None, r.task_class or None, dry_run=dry_run
        )
    except ValueError as e:
        raise Refused(str(e)) from None
    return found


def _on_parked(ctx: Ctx, r: Request) -> tuple[bool, str]:
    outbox = ctx.src.outbox()
    if r.store is not None and outbox.store(r.store) is None:
        raise NotFound(f"no outbox store {r.store!r}")
    chosen, missing = outbox.choose_parked(None if r.all else r.ids, store=r.store)
    gone = f"; {len(missing)} were not parked any more" if missing else ""
    if r.action == "replay":
        failed = outbox.replay(chosen)
        done = len(chosen) - failed
        return (
            not failed and not missing,
            f"replayed {done} parked reminders{gone}; the next sweep submits them",
        )
    dropped = outbox.drop(chosen)
    return not missing, f"dropped {dropped} parked reminders{gone}"


def _log(user: User, r: Request, message: str, ok: bool) -> None:
    target = {
        "queue": r.queue or None,
        "task": r.name or None,
        "store": r.store,
        "state": r.state or None,
        "class": r.task_class or None,
        "reminders": list(r.ids) or ("all" if r.all else None),
    }
    log.warning(
        "tq dashboard: %s by %s: %s",
        r.action,
        user.describe(),
        message,
        extra={
            "tq_action": r.action,
            "tq_user": user.name,
            "tq_role": user.role.name.lower(),
            "tq_via": user.via,
            "tq_target": {k: v for k, v in target.items() if v},
            "tq_ok": ok,
        },
    )
