"""What a page handler gets: where the dashboard is mounted, who is looking, the sources."""

from __future__ import annotations

import dataclasses
from typing import Any

from tq.dashboard._access import User
from tq.dashboard._html import Markup, esc, join, layout, link, tag, url
from tq.dashboard._sources import Sources

PAGE_SIZE = 50


class NotFound(Exception):
    """The page's subject does not exist (a 404 page)."""


class Forbidden(Exception):
    """The user's role may not do this (a 403 page)."""


@dataclasses.dataclass
class Ctx:
    root: str  # the mount path, "" at the top
    user: User
    csrf: str
    src: Sources
    flash: str = ""
    insecure: bool = False

    def page(self, title: str, body: Markup, section: str = "") -> str:
        if self.insecure:
            body = Markup(
                tag(
                    "p",
                    "This dashboard runs WITHOUT AUTHENTICATION: anyone who can reach it "
                    "can act on every queue. For a local dev server only.",
                    class_="error",
                )
                + body
            )
        return layout(
            self.root, title, body, who=self.user.describe(), section=section, flash=self.flash
        )

    def href(self, path: str, **query: Any) -> str:
        return url(self.root + path, **query)

    def action(self, action: str, label: str, *, danger: bool = False, **fields: Any) -> Markup:
        """A button leading to the confirmation page of `action` (operators only)."""
        if not self.user.may_act:
            return Markup("")
        cls = "button danger" if danger else "button"
        return link(
            self.href(f"/confirm/{action}", **fields), label, class_=cls, data_action=action
        )


def dl(items: list[tuple[str, Any]]) -> Markup:
    return tag("dl", join(join([tag("dt", k), tag("dd", v)]) for k, v in items))


def short(text: Any, n: int = 80) -> Any:
    if not isinstance(text, str) or len(text) <= n:
        return text
    return tag("span", text[: n - 1] + "…", title=text)


__all__ = ["PAGE_SIZE", "Ctx", "Forbidden", "NotFound", "dl", "esc", "short"]
