"""Cron schedules: unix-cron expressions in a time zone, and their ticks.

`Cron("0 3 * * *", time_zone="Europe/Berlin")` is "every day at 03:00,
Berlin time". It reads the unix-cron format Cloud Scheduler accepts: five
fields separated by blanks,

    minute (0-59)  hour (0-23)  day of month (1-31)  month (1-12, JAN-DEC)
    day of week (0-7 or SUN-SAT; 0 and 7 are Sunday)

each `*` or a comma-separated list of `n`, `a-b`, `*/s` and `a-b/s` (names
are case-insensitive and may bound ranges: `MON-FRI`). When both day fields
are restricted (neither starts with `*`), a day matches if either does (the
Vixie cron rule: `0 0 1,15 * MON` runs on the 1st, the 15th and every
Monday); otherwise a day must match both. `@hourly`, `@daily` (=
`@midnight`), `@weekly`, `@monthly` and `@yearly` (= `@annually`) stand for
`0 * * * *`, `0 0 * * *`, `0 0 * * 0`, `0 0 1 * *` and `0 0 1 1 *`.
A schedule no day can match (`0 0 30 2 *`) is refused.

Ticks are whole minutes of the time zone's wall clock (an IANA name, read
with `zoneinfo`; default `Etc/UTC`, Cloud Scheduler's). Around daylight
saving time changes:

* a local time that does not exist (the clock jumps over it, spring) is
  skipped: `30 2 * * *` in Europe/Berlin does not run on the last Sunday of
  March;
* a local time that happens twice (the clock goes back, autumn) ticks once,
  at its first occurrence: `30 2 * * *` runs at 02:30 summer time only, and
  `*/15 * * * *` does not tick during the repeated hour.

Ticks are returned as UTC datetimes. Errors are `tq.ConfigError` (a
`ValueError`) naming the bad field.
"""

from __future__ import annotations

import bisect
import datetime as dt
import zoneinfo

from tq._errors import ConfigError

__all__ = ["DEFAULT_TIME_ZONE", "Cron"]

DEFAULT_TIME_ZONE = "Etc/UTC"

SHORTHANDS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    )
}
_DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
# (name, lowest, highest, names); day of week accepts 7 for Sunday.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),
)
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February: leap years
_MINUTE = dt.timedelta(minutes=1)
_DAY = dt.timedelta(days=1)
# How far next_after may search: every valid schedule ticks within 8 years
# (Feb 29 across a skipped leap year); the bound only guards against a bug.
_SEARCH_YEARS = 30
# How far back last_at_or_before looks before saying there is no tick.
_LOOKBACK = dt.timedelta(days=366 * 9)


class Cron:
    """A unix-cron schedule in a time zone. Immutable; equal if expression, zone and
    guard are.

    Args:
      expression: five fields or a shorthand (see the module docstring).
      time_zone: an IANA time zone name; default "Etc/UTC".
      max_pending: a guard: the database queue's workers add no task for a
        tick while this many tasks of the class (pending or running) are
        still in its queue; the tick is skipped, not caught up later.
        None (default): no guard. Cloud Scheduler does not apply it.

    Raises ConfigError naming the bad field, the unknown time zone, or a bad
    guard.
    """

    __slots__ = (
        "_day_and",
        "_doms",
        "_dows",
        "_hours",
        "_minutes",
        "_months",
        "expression",
        "fields",
        "max_pending",
        "time_zone",
        "zone",
    )

    def __init__(
        self,
        expression: str,
        time_zone: str = DEFAULT_TIME_ZONE,
        *,
        max_pending: int | None = None,
    ) -> None:
        if not isinstance(expression, str):
            raise ConfigError(f"cron schedule must be a string, got {expression!r}")
        self.expression = " ".join(expression.split())
        self.time_zone = time_zone
        if max_pending is not None and (
            not isinstance(max_pending, int) or isinstance(max_pending, bool) or max_pending < 1
        ):
            raise ConfigError(
                f"cron schedule {self.expression!r}: max_pending must be a positive int or "
                f"None, got {max_pending!r}"
            )
        self.max_pending = max_pending
        try:
            self.zone = zoneinfo.ZoneInfo(time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigError(
                f"cron schedule {self.expression!r}: unknown time zone {time_zone!r}; use an "
                "IANA name such as 'Europe/Berlin' or 'Etc/UTC'"
            ) from None
        text = self.expression
        if text.startswith("@"):
            if text.lower() not in SHORTHANDS:
                raise ConfigError(
                    f"cron schedule {text!r}: unknown shorthand; use one of "
                    f"{', '.join(SHORTHANDS)} or five fields"
                )
            text = SHORTHANDS[text.lower()]
        parts = text.split()
        if len(parts) != 5:
            raise ConfigError(
                f"cron schedule {self.expression!r}: need 5 fields (minute hour day-of-month "
                f"month day-of-week), got {len(parts)}"
            )
        self.fields: tuple[str, ...] = tuple(parts)
        """The five fields (a shorthand spelled out)."""
        sets = [
            _parse_field(self.expression, p, *spec) for p, spec in zip(parts, _FIELDS, strict=True)
        ]
        self._minutes = sorted(sets[0])
        self._hours = sorted(sets[1])
        self._doms = frozenset(sets[2])
        self._months = sorted(sets[3])
        self._dows = frozenset(d % 7 for d in sets[4])
        # Vixie cron: a field starting with "*" counts as unrestricted.
        self._day_and = parts[2].startswith("*") or parts[4].startswith("*")
        if self._day_and and not any(
            d <= _DAYS_IN_MONTH[m - 1] for m in self._months for d in self._doms
        ):
            raise ConfigError(
                f"cron schedule {self.expression!r}: no month in the month field has a day "
                "the day-of-month field names; it would never run"
            )

    def __repr__(self) -> str:
        guard = "" if self.max_pending is None else f", max_pending={self.max_pending}"
        return f"Cron({self.expression!r}, time_zone={self.time_zone!r}{guard})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cron):
            return NotImplemented
        return (self.expression, self.time_zone, self.max_pending) == (
            other.expression,
            other.time_zone,
            other.max_pending,
        )

    def __hash__(self) -> int:
        return hash((self.expression, self.time_zone, self.max_pending))

    # Ticks.

    def next_after(self, t: dt.datetime) -> dt.datetime:
        """The first tick strictly after `t` (timezone-aware), as a UTC datetime."""
        t_utc = _utc(t)
        local = t_utc.astimezone(self.zone).replace(tzinfo=None, second=0, microsecond=0)
        wall = local.replace(fold=0) + _MINUTE
        limit = wall.year + _SEARCH_YEARS
        while True:
            wall = self._next_wall(wall, limit)
            tick = self._instant(wall)
            # Past t is needed too: after a fold, early wall times map before t.
            if tick is not None and tick > t_utc:
                return tick
            wall += _MINUTE

    def last_at_or_before(self, t: dt.datetime) -> dt.datetime | None:
        """The latest tick at or before `t` (timezone-aware), as UTC; None if none in 9 years."""
        hi = _utc(t)
        span = dt.timedelta(hours=1)
        while True:
            lo = self.next_after(hi - span)
            if lo <= hi:
                break
            if span > _LOOKBACK:
                return None
            span *= 2
        # lo is a tick <= hi; narrow (lo, hi] down to the last tick in it.
        while True:
            after = self.next_after(lo)
            if after > hi:
                return lo
            mid = lo + (hi - lo) / 2
            beyond = self.next_after(mid)
            if beyond <= hi:
                lo = beyond
            else:
                hi = mid

    def matches(self, t: dt.datetime) -> bool:
        """Whether `t` (timezone-aware) is a tick."""
        t_utc = _utc(t)
        if t_utc.second or t_utc.microsecond:
            return False
        wall = t_utc.astimezone(self.zone).replace(tzinfo=None, fold=0)
        return self._wall_matches(wall) and self._instant(wall) == t_utc

    @property
    def days_of_week(self) -> tuple[int, ...]:
        """The days of week the fifth field names, 0 (Sunday) to 6."""
        return tuple(sorted(self._dows))

    def local(self, t: dt.datetime) -> dt.datetime:
        """`t` on the schedule's wall clock (an aware datetime in `zone`)."""
        return _utc(t).astimezone(self.zone)

    # Wall-clock arithmetic (naive datetimes in the zone).

    def _day_matches(self, d: dt.date) -> bool:
        dom = d.day in self._doms
        dow = d.isoweekday() % 7 in self._dows
        return (dom and dow) if self._day_and else (dom or dow)

    def _wall_matches(self, w: dt.datetime) -> bool:
        return (
            w.minute in self._minutes
            and w.hour in self._hours
            and w.month in self._months
            and self._day_matches(w.date())
        )

    def _next_wall(self, w: dt.datetime, limit_year: int) -> dt.datetime:
        """The first matching wall time at or after `w` (whole minutes)."""
        while True:
            if w.year > limit_year:  # pragma: no cover - valid schedules never get here
                raise RuntimeError(f"cron schedule {self.expression!r}: no tick found")
            if w.month not in self._months:
                i = bisect.bisect_right(self._months, w.month)
                if i == len(self._months):
                    w = dt.datetime(w.year + 1, self._months[0], 1)
                else:
                    w = dt.datetime(w.year, self._months[i], 1)
                continue
            if not self._day_matches(w.date()):
                w = dt.datetime.combine(w.date() + _DAY, dt.time())
                continue
            if w.hour not in self._hours:
                i = bisect.bisect_right(self._hours, w.hour)
                if i == len(self._hours):
                    w = dt.datetime.combine(w.date() + _DAY, dt.time())
                else:
                    w = w.replace(hour=self._hours[i], minute=0)
                continue
            if w.minute not in self._minutes:
                i = bisect.bisect_right(self._minutes, w.minute)
                if i == len(self._minutes):
                    w = w.replace(minute=0) + dt.timedelta(hours=1)
                else:
                    w = w.replace(minute=self._minutes[i])
                continue
            return w

    def _instant(self, wall: dt.datetime) -> dt.datetime | None:
        """The UTC instant of a wall time (its first occurrence), or None if it does not exist."""
        instant = wall.replace(tzinfo=self.zone, fold=0).astimezone(dt.UTC)
        if instant.astimezone(self.zone).replace(tzinfo=None) != wall:
            return None  # in a gap: the clock jumped over it
        return instant


def _utc(t: dt.datetime) -> dt.datetime:
    if not isinstance(t, dt.datetime) or t.utcoffset() is None:
        raise ValueError(f"need a timezone-aware datetime, got {t!r}")
    return t.astimezone(dt.UTC)


def _parse_field(
    expression: str, text: str, name: str, lo: int, hi: int, names: dict[str, int]
) -> set[int]:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"cron schedule {expression!r}: {name} field {text!r}: {why}")

    def value(s: str) -> int:
        if s.isascii() and s.isdigit():
            v = int(s)
        elif s.upper() in names:
            v = names[s.upper()]
        else:
            allowed = f"a number {lo}-{hi}" + (
                f" or a name ({', '.join(n.lower() for n in names)})" if names else ""
            )
            raise bad(f"{s!r} is not {allowed}")
        if not lo <= v <= hi:
            raise bad(f"{v} is out of range {lo}-{hi}")
        return v

    out: set[int] = set()
    for item in text.split(","):
        if not item:
            raise bad("empty list item")
        span, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) < 1:
                raise bad(f"step {step_text!r} must be a whole number of at least 1")
            step = int(step_text)
        if span == "*":
            first, last = lo, (6 if name == "day-of-week" else hi)
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = value(a), value(b)
            if first > last:
                raise bad(f"range {span!r} goes backwards")
        elif slash:
            raise bad(f"a step needs a range or '*' ('*/{step_text}', 'a-b/{step_text}')")
        else:
            first = last = value(span)
        out.update(range(first, last + 1, step))
    return out
