"""Click options made from the settings table, and the values a command received."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tq.cli import _settings
from tq.cli._settings import BY_KEY, SETTINGS, Setting

F = TypeVar("F", bound=Callable[..., Any])


if TYPE_CHECKING:
    _ParamType = click.ParamType[Any, Any]
else:  # generic only for type checkers in older click releases
    _ParamType = click.ParamType


class _SettingType(_ParamType):
    """Parses a flag or environment value the way the settings table says."""

    def __init__(self, setting: Setting) -> None:
        self.setting = setting
        self.name = setting.kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default, already a value
        try:
            return _settings.parse(self.setting, value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _option(s: Setting) -> Callable[[F], F]:
    metavar = s.metavar or ("|".join(s.choices) if s.choices else s.kind.upper())
    return click.option(
        s.flag,
        s.key,
        type=_SettingType(s),
        default=s.default,
        envvar=list(s.env),
        show_envvar=True,
        show_default=s.default not in (None, ()),
        metavar=metavar,
        help=s.help.replace("`", ""),
    )


def settings_options(*groups_or_keys: str) -> Callable[[F], F]:
    """Adds the options of these setting groups (or single settings) to a command."""
    wanted = [s for s in SETTINGS if s.group in groups_or_keys or s.key in groups_or_keys]

    def decorate(fn: F) -> F:
        for s in reversed(wanted):
            fn = _option(s)(fn)
        return fn

    return decorate


json_lines = click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
"""`--json`: print JSON lines instead of a table."""

app_option = click.option(
    "--app", "app_spec", metavar="MODULE:ATTR", envvar="TQ_APP", show_envvar=True,
    help="Import this app first, and act on the stores it registers.",
)  # fmt: skip
"""`--app`: the app whose registered outbox stores a command acts on."""


def outbox_store_options(f: F) -> F:
    """The settings that name the outbox stores a command acts on (`--db`, `--spanner`)."""
    return settings_options("database_url", "spanner_database", "dispatcher")(f)


class Config:
    """The settings a command received (flags, environment, defaults), by key.

    Reading a setting the command did not declare gives its default.
    """

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    @classmethod
    def take(cls, kwargs: dict[str, Any]) -> Config:
        """Moves the settings out of a command's keyword arguments."""
        return cls({k: kwargs.pop(k) for k in list(kwargs) if k in BY_KEY})

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        if key in self._values:
            return self._values[key]
        if key in BY_KEY:
            return BY_KEY[key].default
        raise AttributeError(f"no setting {key!r}")

    def given(self, key: str) -> bool:
        """Whether the setting differs from its default (set by a flag or the environment)."""
        return key in self._values and self._values[key] != BY_KEY[key].default

    def replace(self, **values: Any) -> Config:
        return Config({**self._values, **values})

    def items(self) -> list[tuple[str, Any]]:
        return [(s.key, getattr(self, s.key)) for s in SETTINGS]
