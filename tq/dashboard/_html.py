"""HTML by hand: escaping, the page layout, tables and the little formats pages share.

Every value that reaches a page goes through `esc` (or `attr`); markup is
built from these helpers only, so nothing a task carries (names, payloads,
error messages) can inject markup. No external assets: the style sheet is
inline and charts are inline SVG (`_charts`).
"""

from __future__ import annotations

import datetime as dt
import html
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from tq import clock


class Markup(str):
    """Text that is already HTML (made by these helpers); `esc` leaves it alone."""


def esc(value: Any) -> Markup:
    """`value` as HTML text (None as a dash)."""
    if isinstance(value, Markup):
        return value
    if value is None:
        return Markup('<span class="none">—</span>')
    if isinstance(value, dt.datetime):
        return when(value)
    return Markup(html.escape(str(value), quote=True))


def attr(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def join(parts: Iterable[Any]) -> Markup:
    return Markup("".join(esc(p) for p in parts))


def tag(element: str, content: Any = "", /, **attrs: Any) -> Markup:
    """<element attrs>content</element>; attrs lose a trailing "_" (class_=...), "_" is "-"."""
    spec = "".join(
        f' {k.rstrip("_").replace("_", "-")}="{attr(v)}"'
        for k, v in attrs.items()
        if v is not None and v is not False
    )
    if element in _VOID:
        return Markup(f"<{element}{spec}>")
    return Markup(f"<{element}{spec}>{esc(content) if content != '' else ''}</{element}>")


_VOID = frozenset({"input", "br", "hr", "meta"})


def link(href: str, text: Any, **attrs: Any) -> Markup:
    return tag("a", text, href=href, **attrs)


def url(path: str, **query: Any) -> str:
    """`path` with the query parameters that are not None."""
    q = {k: v for k, v in query.items() if v not in (None, "")}
    return path + ("?" + urllib.parse.urlencode(q) if q else "")


def quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def ago(delta: dt.timedelta) -> str:
    """A duration for people: 42 s, 3 min, 5 h, 2 d."""
    s = abs(delta.total_seconds())
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def when(t: dt.datetime | None) -> Markup:
    """A time as UTC with how far from now, in a <time> element."""
    if t is None:
        return esc(None)
    delta = t - clock.now()
    rel = f"in {ago(delta)}" if delta.total_seconds() > 0 else f"{ago(delta)} ago"
    iso = t.astimezone(dt.UTC).isoformat(timespec="seconds")
    text = t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return Markup(
        f'<time datetime="{attr(iso)}" title="{attr(rel)}">{text}</time>'
        f' <span class="rel">{esc(rel)}</span>'
    )


Cell = Callable[[Mapping[str, Any]], Any]


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str | Cell]],
    *,
    empty: str = "nothing here",
    id_: str | None = None,
) -> Markup:
    """A table of `rows`; each column is (heading, key or function of the row)."""
    if not rows:
        return tag("p", empty, class_="empty")
    head = join(tag("th", h) for h, _ in columns)
    body = []
    for r in rows:
        cells = (tag("td", c(r) if callable(c) else r.get(c)) for _, c in columns)
        body.append(tag("tr", join(cells)))
    return tag(
        "table", Markup(f"<thead><tr>{head}</tr></thead><tbody>{join(body)}</tbody>"), id=id_
    )


def badge(text: str) -> Markup:
    return tag("span", text, class_=f"badge b-{text.lower()}")


def card(title: str, value: Any, note: Any = "") -> Markup:
    return tag(
        "div",
        join(
            [
                tag("div", title, class_="k"),
                tag("div", value, class_="v"),
                tag("div", note, class_="n"),
            ]
        ),
        class_="card",
    )


STYLE = """
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,sans-serif;color:#1d2330;background:#f6f7f9}header{background:#1d2330;color:#fff;
padding:.6rem 1.2rem;display:flex;gap:1.4rem;align-items:center}header a{color:#cfd6e4;
text-decoration:none}header a:hover,header a.on{color:#fff}header .brand{font-weight:700;
color:#fff}header .who{margin-left:auto;color:#9aa6bd;font-size:12px}main{padding:1rem 1.2rem;
max-width:1200px}h1{font-size:20px;margin:.2rem 0 1rem}h2{font-size:16px;margin:1.4rem 0 .5rem}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde1e8}
th,td{text-align:left;padding:.35rem .55rem;border-bottom:1px solid #eceff3;vertical-align:top}
th{background:#f0f2f5;font-weight:600;font-size:12px;color:#4a5368}td{font-size:13px}
a{color:#1b5fc4}.none{color:#9aa3b2}.rel{color:#7b8496;font-size:12px}.empty{color:#7b8496}
.cards{display:flex;flex-wrap:wrap;gap:.7rem}.card{background:#fff;border:1px solid #dde1e8;
border-radius:6px;padding:.6rem .8rem;min-width:150px}.card .k{font-size:12px;color:#5a6478}
.card .v{font-size:20px;font-weight:600}.card .n{font-size:12px;color:#7b8496}
.badge{display:inline-block;padding:0 .45rem;border-radius:9px;font-size:12px;background:#e5e8ee}
.b-running,.b-done{background:#d9f2e3;color:#17683a}.b-paused,.b-leased{background:#fff1cc;
color:#7a5600}.b-failed,.b-parked{background:#fde0e0;color:#9b1c1c}.b-pending{background:#e1ecfd;
color:#1b4f9c}.b-deleted{background:#eceef2;color:#5a6478}
.actions{display:flex;gap:.5rem;flex-wrap:wrap;margin:.6rem 0}form.inline{display:inline}
button,.button{font:inherit;padding:.3rem .8rem;border-radius:5px;border:1px solid #b8c0ce;
background:#fff;cursor:pointer;color:#1d2330;text-decoration:none}button.danger,
.button.danger{border-color:#d23b3b;color:#b42323}button.go{background:#1b5fc4;color:#fff;
border-color:#1b5fc4}pre{background:#fff;border:1px solid #dde1e8;padding:.7rem;overflow:auto;
font-size:12.5px;max-height:30rem}dl{display:grid;grid-template-columns:max-content auto;
gap:.25rem 1rem;background:#fff;border:1px solid #dde1e8;padding:.7rem}dt{color:#5a6478}
dd{margin:0}.tabs a{margin-right:.8rem}.tabs a.on{font-weight:700;color:#1d2330}
.note{background:#fff8e1;border:1px solid #f0d68a;padding:.5rem .8rem;border-radius:5px}
.flash{background:#e3f4e8;border:1px solid #9fd4b0;padding:.5rem .8rem;border-radius:5px}
.error{background:#fde7e7;border:1px solid #f0a8a8;padding:.5rem .8rem;border-radius:5px}
.charts{display:flex;gap:1rem;flex-wrap:wrap;margin:.8rem 0}.chart{margin:0;background:#fff;
border:1px solid #dde1e8;padding:.4rem .6rem}.chart .t{font-size:12px;color:#5a6478}
svg text{font-size:10px;fill:#7b8496}
form.filters{display:flex;gap:.6rem;align-items:end;margin:.5rem 0}label{font-size:12px;
color:#5a6478;display:flex;flex-direction:column}select,input{font:inherit;padding:.2rem}
"""

NAV = [
    ("overview", "Overview", ""),
    ("reminders", "Reminders", "reminders"),
    ("parked", "Parked", "parked"),
    ("schedules", "Schedules", "schedules"),
]


def layout(
    root: str, title: str, body: Markup, *, who: str = "", section: str = "", flash: str = ""
) -> str:
    """A whole page: header with navigation, then `body`."""
    nav = join(
        link(f"{root}/{path}", text, class_="on" if key == section else None)
        for key, text, path in NAV
    )
    flash_html = tag("p", flash, class_="flash", role="status") if flash else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)} · tq</title><style>{STYLE}</style></head><body>"
        f'<header><a class=brand href="{attr(root)}/">tq dashboard</a>{nav}'
        f"<span class=who>{esc(who)}</span></header><main>{flash_html}"
        f"<h1>{esc(title)}</h1>{body}</main></body></html>"
    )
