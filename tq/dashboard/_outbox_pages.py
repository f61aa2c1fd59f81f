"""The outbox pages: reminders, one reminder, parked reminders; and the cron schedules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tq import clock
from tq.admin import readable_payload
from tq.dashboard._context import PAGE_SIZE, Ctx, NotFound, dl, short
from tq.dashboard._html import Markup, badge, esc, join, link, quote, table, tag
from tq.dashboard._pages import payload_section


def _store_tabs(ctx: Ctx, path: str, names: list[str], chosen: str | None) -> Markup:
    if len(names) < 2:
        return Markup("")
    tabs = [link(ctx.href(path), "all stores", class_="on" if chosen is None else None)]
    tabs += [link(ctx.href(path, store=n), n, class_="on" if n == chosen else None) for n in names]
    return tag("nav", join(tabs), class_="tabs")


def _where(r: Mapping[str, Any]) -> Any:
    return f"topic {r['topic']}" if r.get("topic") else r.get("queue")


def reminders(ctx: Ctx, q: Mapping[str, str]) -> str:
    outbox = ctx.src.outbox()
    store = q.get("store") or None
    after = q.get("after") or ""
    stale = q.get("stale") == "1"
    names = [s.name for s in outbox.stores]
    rows = outbox.list_reminders(PAGE_SIZE, stale=stale, store=store, after=after)
    now = clock.now()
    parts = [
        tag(
            "p",
            "Tasks whose transaction committed but which are not submitted yet. The "
            "happy path submits them at once; the sweeper takes those past their fresh-until "
            "time (stale).",
        ),
        table(
            outbox.counts(),
            [("store", "store"), ("waiting", "pending"), ("parked", "parked")],
            empty="no outbox store is registered",
        ),
        _store_tabs(ctx, "/reminders", names, store),
        tag(
            "p",
            link(
                ctx.href("/reminders", store=store, stale=None if stale else "1"),
                "show all" if stale else "only stale ones",
            ),
        ),
        table(
            rows,
            [
                (
                    "reminder",
                    lambda r: link(ctx.href(f"/reminders/{quote(r['store'])}/{r['id']}"), r["id"]),
                ),
                ("store", "store"),
                ("class", "task_class"),
                ("queue or topic", _where),
                ("created", "created"),
                (
                    "fresh until",
                    lambda r: join(
                        [r["fresh_until"], " ", badge("stale") if r["fresh_until"] <= now else ""]
                    ),
                ),
            ],
            empty="no reminders waiting",
            id_="reminders",
        ),
    ]
    if len(rows) >= PAGE_SIZE and (store is not None or len(names) == 1):
        nxt = ctx.href(
            "/reminders", store=store, stale="1" if stale else None, after=rows[-1]["id"]
        )
        parts.append(tag("p", link(nxt, "next page »", rel="next")))
    return ctx.page("Reminders", join(parts), "reminders")


def reminder(ctx: Ctx, store: str, reminder_id: str) -> str:
    r = ctx.src.outbox().get_reminder(store, reminder_id)
    if r is None:
        raise NotFound(f"no reminder {reminder_id!r} in store {store!r}")
    parked = "parked_code" in r
    facts = [
        ("store", store),
        ("class", r.get("task_class")),
        ("queue or topic", _where(r)),
        ("task name", r.get("task_name")),
        ("created", r.get("created")),
        ("fresh until", r["fresh_until"]),
        ("ETA", r.get("eta")),
        ("request", f"{r.get('method', '')} {r.get('url', '')}"),
    ]
    if parked:
        facts += [
            ("parked", join([badge("parked"), " ", r["parked_at"]])),
            ("code", r["parked_code"]),
            ("reason", r["parked_reason"]),
        ]
    parts = [
        tag(
            "div",
            join(
                [
                    ctx.action("replay", "Replay", store=store, ids=reminder_id) if parked else "",
                    ctx.action("drop", "Drop…", danger=True, store=store, ids=reminder_id)
                    if parked
                    else "",
                ]
            ),
            class_="actions",
        ),
        dl(facts),
    ]
    if "body" in r:
        parts += payload_section(
            readable_payload(r["body"], ctx.src.dispatcher), r.get("headers") or {}
        )
    return ctx.page(f"Reminder {reminder_id}", join(parts), "parked" if parked else "reminders")


def parked(ctx: Ctx, q: Mapping[str, str]) -> str:
    outbox = ctx.src.outbox()
    store = q.get("store") or None
    after = q.get("after") or ""
    names = [s.name for s in outbox.stores]
    rows = outbox.list_parked(PAGE_SIZE, store=store, after=after)
    total = sum(c["parked"] for c in outbox.counts() if store is None or c["store"] == store)

    def pick(r: Mapping[str, Any]) -> Markup:
        if not ctx.user.may_act:
            return Markup("")
        return tag(
            "input", type="checkbox", name="ids", value=r["id"], aria_label=f"select {r['id']}"
        )

    listing = table(
        rows,
        [
            ("", pick),
            (
                "reminder",
                lambda r: link(ctx.href(f"/reminders/{quote(r['store'])}/{r['id']}"), r["id"]),
            ),
            ("store", "store"),
            ("class", "task_class"),
            ("queue or topic", _where),
            ("code", "parked_code"),
            ("parked", "parked_at"),
            ("reason", lambda r: short(r.get("parked_reason"), 70)),
        ],
        empty="nothing is parked",
        id_="parked",
    )
    parts = [
        tag(
            "p",
            f"{total} reminders whose submit failed for good (a missing queue, a "
            "permission): fix the cause, then replay them (the next sweep submits them) "
            "or drop them.",
        ),
        _store_tabs(ctx, "/parked", names, store),
    ]
    if ctx.user.may_act and rows:
        store_of = {r["id"]: r["store"] for r in rows}
        one_store = store or (names[0] if len(set(store_of.values())) == 1 else None)
        buttons = join(
            [
                tag("button", "Replay selected", type="submit", name="action", value="replay"),
                tag(
                    "button",
                    "Drop selected…",
                    type="submit",
                    name="action",
                    value="drop",
                    class_="danger",
                ),
                ctx.action("replay", f"Replay all {total}", store=store, all="1"),
                ctx.action("drop", f"Drop all {total}…", danger=True, store=store, all="1"),
            ]
        )
        hidden = tag("input", type="hidden", name="store", value=one_store) if one_store else ""
        parts.append(
            tag(
                "form",
                join([hidden, tag("div", buttons, class_="actions"), listing]),
                method="get",
                action=ctx.href("/confirm/selected"),
            )
        )
    else:
        parts.append(listing)
    if len(rows) >= PAGE_SIZE and (store is not None or len(names) == 1):
        parts.append(
            tag(
                "p",
                link(
                    ctx.href("/parked", store=store, after=rows[-1]["id"]),
                    "next page »",
                    rel="next",
                ),
            )
        )
    return ctx.page("Parked reminders", join(parts), "parked")


def schedules(ctx: Ctx) -> str:
    disp = ctx.src.dispatcher
    now = clock.now()
    fired = {c["class"]: c for c in (ctx.src.queues.schedules() or [])} if ctx.src.queues else {}
    rows: list[dict[str, Any]] = []
    for c in disp.schedules() if disp is not None else []:
        assert c.schedule is not None
        assert disp is not None
        seen = fired.pop(c.id, None) or fired.pop(f"{disp.namespace}:{c.id}", None) or {}
        rows.append(
            {
                "class": c.id,
                "schedule": c.schedule.expression,
                "time_zone": c.schedule.time_zone,
                "queue": c.queue,
                "next_tick": seen.get("next_tick") or c.schedule.next_after(now),
                "last_tick": seen.get("last_tick"),
                "last_fired": seen.get("last_fired"),
            }
        )
    rows += [{**c, "queue": None} for c in fired.values()]  # fired by workers of another app
    parts = [
        tag(
            "p",
            "Task classes with a cron schedule. On the database queue the workers fire "
            "them (last fired below); on Cloud Tasks, Cloud Scheduler jobs call the cron "
            "endpoint (tq schedules --format gcloud).",
        ),
        table(
            rows,
            [
                ("class", "class"),
                ("schedule", "schedule"),
                ("time zone", "time_zone"),
                ("queue", "queue"),
                ("next tick", "next_tick"),
                ("last tick fired", "last_tick"),
                ("fired at", "last_fired"),
            ],
            empty="no scheduled classes"
            + ("" if disp is not None else " (the dashboard was given no dispatcher)"),
            id_="schedules",
        ),
    ]
    return ctx.page("Scheduled classes", join(parts), "schedules")


__all__ = ["esc", "parked", "reminder", "reminders", "schedules"]
