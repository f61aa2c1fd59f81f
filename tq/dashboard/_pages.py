"""The queue pages: the overview, a queue's tasks, one task."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tq import clock
from tq.admin import readable_payload
from tq.dashboard import _charts
from tq.dashboard._context import PAGE_SIZE, Ctx, NotFound, dl, short
from tq.dashboard._html import Markup, ago, badge, card, esc, join, link, quote, table, tag

ORDER_LABELS = {"oldest": "oldest first", "newest": "newest first", "overdue": "most overdue first"}


def _charts_of(history: list[dict[str, Any]] | None, what: str) -> Markup:
    if not history:
        return Markup("")
    return tag(
        "div",
        join(
            [
                _charts.bars(
                    f"{what}: tasks finished per minute (failed in red)",
                    [p["finished"] for p in history],
                    [p["failed"] for p in history],
                ),
                _charts.area(f"{what}: tasks waiting or running", [p["depth"] for p in history]),
            ]
        ),
        class_="charts",
    )


def _rate(row: Mapping[str, Any]) -> Any:
    done = row.get("executed_last_minute")
    limit = row.get("rate_per_s")
    text = "—" if done is None else f"{done}/min"
    return f"{text} (limit {limit:g}/s)" if isinstance(limit, int | float) and limit else text


def overview(ctx: Ctx) -> str:
    src, parts = ctx.src, []
    stats: list[dict[str, Any]] = src.queues.stats() if src.queues is not None else []
    outbox = src.outbox()
    counts = outbox.counts()
    pending = sum(c["pending"] for c in counts)
    parked = sum(c["parked"] for c in counts)
    late, complete = outbox.oldest_staleness()
    swept, sweep_stats = src.last_sweep()
    waiting = sum(s["tasks"] or 0 for s in stats)
    cards = [
        card("tasks waiting or running", waiting, f"in {len(stats)} queues"),
        card("in flight", _sum(stats, "in_flight")),
        card("failed (kept)", _sum(stats, "failed")),
        card("reminders waiting", pending, "committed, not yet submitted"),
        card(
            "oldest staleness",
            ago(late) if late else "none",
            "" if complete else "of the first 20,000 read",
        ),
        card("parked", link(ctx.href("/parked"), parked), "submits that failed for good"),
        card(
            "sweeper's last run",
            esc(swept) if swept else "not in this process",
            f"{sweep_stats.submitted} submitted, {sweep_stats.parked} parked"
            if sweep_stats
            else "",
        ),
    ]
    parts.append(tag("div", join(cards), class_="cards"))
    if src.queues is not None:
        parts.append(_charts_of(src.queues.history(None), "all queues"))
        parts.append(tag("h2", f"Queues ({src.queues.name})"))
        parts.append(
            table(
                stats,
                [
                    ("queue", lambda r: link(ctx.href(f"/queues/{quote(r['queue'])}"), r["queue"])),
                    ("state", lambda r: badge(r["state"])),
                    ("waiting or running", "tasks"),
                    ("oldest due", "oldest_eta"),
                    ("dispatched", _rate),
                    ("in flight", "in_flight"),
                    ("done", "done"),
                    ("failed", "failed"),
                ],
                empty="no queues yet",
                id_="queues",
            )
        )
    else:
        parts.append(tag("p", "No queue backend is configured for this dashboard.", class_="note"))
    parts.append(tag("h2", "Outbox stores"))
    parts.append(
        table(
            counts,
            [("store", "store"), ("reminders waiting", "pending"), ("parked", "parked")],
            empty="no outbox store is registered",
        )
    )
    if src.label:
        parts.append(tag("p", src.label, class_="rel"))
    return ctx.page("Overview", join(parts), "overview")


def _sum(rows: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) if values else None


def queue(ctx: Ctx, name: str, q: Mapping[str, str]) -> str:
    admin = ctx.src.queues
    if admin is None or not admin.has_queue(name):
        raise NotFound(f"no queue {name!r}")
    state = q.get("state") or None
    task_class = q.get("class") or None
    order = q.get("order") or "oldest"
    if order not in ORDER_LABELS:
        order = "oldest"
    cursor = q.get("cursor") or None
    rows, nxt = admin.page_tasks(
        name, state=state, task_class=task_class, order=order, limit=PAGE_SIZE, cursor=cursor
    )
    counts = admin.count_by_state(name)
    s = _summary(admin, name, counts)
    base = f"/queues/{quote(name)}"
    parts = [
        tag(
            "p",
            join(
                [
                    badge(s["state"]),
                    " ",
                    s["tasks"],
                    " waiting or running, oldest due ",
                    s["oldest_eta"],
                ]
            ),
        )
    ]
    parts.append(
        tag(
            "div",
            join(
                [
                    ctx.action("resume", "Resume", queue=name)
                    if s["state"] == "PAUSED"
                    else ctx.action("pause", "Pause", queue=name),
                    ctx.action("purge", "Purge…", danger=True, queue=name),
                    ctx.action(
                        "clean",
                        f"Clean {state or 'all'} tasks…",
                        danger=True,
                        queue=name,
                        state=state,
                        **{"class": task_class},
                    )
                    if hasattr(admin, "clean") and (state or task_class)
                    else "",
                ]
            ),
            class_="actions",
        )
    )
    parts.append(_charts_of(admin.history(name), name))
    tabs = [
        link(
            ctx.href(base, order=order, **{"class": task_class}),
            "all",
            class_="on" if state is None else None,
        )
    ]
    for st in admin.states:
        label = f"{st} ({counts[st]})" if counts is not None else st
        tabs.append(
            link(
                ctx.href(base, state=st, order=order, **{"class": task_class}),
                label,
                class_="on" if st == state else None,
            )
        )
    parts.append(tag("nav", join(tabs), class_="tabs"))
    options = join(
        tag("option", label, value=key, selected=key == order)
        for key, label in ORDER_LABELS.items()
    )
    parts.append(
        tag(
            "form",
            join(
                [
                    tag("input", type="hidden", name="state", value=state) if state else "",
                    tag(
                        "label",
                        join(
                            [
                                "class",
                                tag(
                                    "input", name="class", value=task_class or "", placeholder="any"
                                ),
                            ]
                        ),
                    ),
                    tag("label", join(["order", tag("select", options, name="order")])),
                    tag("button", "Show", type="submit"),
                ]
            ),
            class_="filters",
            method="get",
            action=ctx.href(base),
        )
    )

    # Priorities, tags and progress (database queue), when any task on the page has them.
    extra_columns: list[tuple[str, Any]] = [
        (label, key) for label, key in (("priority", "priority"), ("tag", "tag"),
                                        ("progress", "progress"))
        if any(r.get(key) for r in rows)
    ]  # fmt: skip

    def actions(r: Mapping[str, Any]) -> Markup:
        out = []
        if r["state"] in ("pending", "failed"):
            out.append(ctx.action("run", "Run now", queue=name, name=r["name"]))
        if r["state"] in ("pending", "leased"):
            out.append(ctx.action("delete", "Delete…", danger=True, queue=name, name=r["name"]))
        return join(out)

    parts.append(
        table(
            rows,
            [
                (
                    "task",
                    lambda r: link(
                        ctx.href(f"{base}/tasks/{quote(r['name'])}"), short(r["name"], 40)
                    ),
                ),
                ("title", lambda r: short(title_of(r["url"], r["task_class"]), 40)),
                ("class", "task_class"),
                ("state", lambda r: badge(r["state"])),
                ("ETA", "eta"),
                ("attempts", "attempts"),
                ("last status", "last_status"),
                ("last error", lambda r: short(r.get("last_error"), 60)),
                *extra_columns,
                ("", actions),
            ],
            empty="no tasks match",
            id_="tasks",
        )
    )
    pager = [
        link(ctx.href(base, state=state, order=order, **{"class": task_class}), "« first page")
    ]
    if nxt:
        pager.append(
            link(
                ctx.href(base, state=state, order=order, cursor=nxt, **{"class": task_class}),
                "next page »",
                rel="next",
            )
        )
    parts.append(tag("p", join(x for p in pager for x in (p, " ")), class_="pager"))
    return ctx.page(f"Queue {name}", join(parts))


def _summary(admin: Any, name: str, counts: Mapping[str, int] | None) -> dict[str, Any]:
    """The queue's state, live tasks and oldest due ETA, from indexed reads where possible.

    (Its full stats scan every task of the queue: fine for the overview's
    table, wasted here, where the counts by state are read anyway.)
    """
    if counts is None:  # Cloud Tasks: no counts, its stats list the tasks anyway
        (s,) = admin.stats(name)
        return dict(s)
    state = next(q["state"] for q in admin.list_queues() if q["queue"] == name)
    first, _ = admin.page_tasks(name, state="pending", order="overdue", limit=1)
    return {"state": state, "tasks": counts.get("pending", 0) + counts.get("leased", 0),
            "oldest_eta": first[0]["eta"] if first else None}  # fmt: skip


def title_of(url: str, task_class: str) -> str:
    """A task's title: what follows "/<class ID>/" in its URL ("" if none)."""
    _, mark, rest = url.partition(f"/{task_class}/")
    return rest.split("?", 1)[0] if mark else ""


def task(ctx: Ctx, queue_name: str, name: str) -> str:
    admin = ctx.src.queues
    t = admin.get_task(queue_name, name) if admin is not None else None
    if t is None:
        raise NotFound(f"no task {name!r} in queue {queue_name!r}")
    shown = readable_payload(t["body"], ctx.src.dispatcher)
    now = clock.now()
    overdue = t["eta"] is not None and t["state"] == "pending" and t["eta"] < now
    facts = [
        ("queue", link(ctx.href(f"/queues/{quote(queue_name)}"), queue_name)),
        ("class", t["task_class"]),
        ("title", title_of(t["url"], t["task_class"]) or None),
        ("state", badge(t["state"])),
        ("ETA", join([t["eta"], " (overdue)" if overdue else ""])),
        ("created", t.get("created")),
        ("attempts", t["attempts"]),
        ("executions", t.get("executions")),
        ("first attempt", t.get("first_attempt")),
        ("last attempt", t.get("last_attempt")),
        ("last response", t["last_status"]),
        ("retry reason", t.get("last_error")),
        ("finished", t.get("finished")),
        (
            "lease",
            join([t.get("lease_owner"), " until ", t.get("lease_expires")])
            if t.get("lease_owner")
            else None,
        ),
        ("priority", t.get("priority") or None),
        ("tag", t.get("tag")),
        ("progress", t.get("progress")),
        ("request", f"{t.get('method', '')} {t['url']}"),
    ]
    parts = [
        tag(
            "div",
            join(
                [
                    ctx.action("run", "Run now", queue=queue_name, name=name)
                    if t["state"] in ("pending", "failed")
                    else "",
                    ctx.action("delete", "Delete…", danger=True, queue=queue_name, name=name)
                    if t["state"] in ("pending", "leased")
                    else "",
                ]
            ),
            class_="actions",
        ),
        dl(facts),
    ]
    for key, heading in (("result", "Result"), ("failure", "Last failure")):
        if t.get(key):
            parts += [tag("h2", heading), tag("pre", readable_bytes(t[key]), id=key)]
    parts += payload_section(shown, t.get("headers") or {})
    return ctx.page(f"Task {name}", join(parts))


def readable_bytes(data: bytes) -> str:
    """Bytes a task produced, for a person: indented JSON, text, or hex."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data.hex(" ")
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def payload_section(shown: Mapping[str, Any], headers: Mapping[str, str]) -> list[Markup]:
    head = f"Payload: {shown['type']}" if shown["type"] else "Body"
    out = [tag("h2", head)]
    if shown["note"]:
        out.append(tag("p", shown["note"], class_="note"))
    out.append(tag("pre", shown["json"], id="payload"))
    out.append(tag("h2", "Headers"))
    out.append(
        table(
            [{"k": k, "v": v} for k, v in sorted(headers.items())],
            [("header", "k"), ("value", "v")],
            empty="no headers",
        )
    )
    return out
