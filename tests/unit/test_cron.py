"""Cron expressions: parsing, ticks against hand-computed tables, DST, and properties."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tq
from tq.cron import Cron

UTC = dt.UTC


def at(*args: int, tz: str = "UTC") -> dt.datetime:
    from zoneinfo import ZoneInfo

    return dt.datetime(*args, tzinfo=ZoneInfo(tz)).astimezone(UTC)  # type: ignore[misc]


def ticks(cron: Cron, start: dt.datetime, n: int) -> list[dt.datetime]:
    out = []
    t = start
    for _ in range(n):
        t = cron.next_after(t)
        out.append(t)
    return out


# (expression, start (UTC), the next ticks (UTC)), computed by hand.
TABLE = [
    ("* * * * *", at(2026, 1, 1, 0, 0, 30), [at(2026, 1, 1, 0, 1), at(2026, 1, 1, 0, 2)]),
    ("*/20 * * * *", at(2026, 1, 1, 0, 0), [at(2026, 1, 1, 0, 20), at(2026, 1, 1, 0, 40),
                                            at(2026, 1, 1, 1, 0)]),
    ("5-10/5,59 3 * * *", at(2026, 1, 1), [at(2026, 1, 1, 3, 5), at(2026, 1, 1, 3, 10),
                                           at(2026, 1, 1, 3, 59), at(2026, 1, 2, 3, 5)]),
    ("0 9 * * MON-FRI", at(2026, 11, 20, 10), [at(2026, 11, 23, 9), at(2026, 11, 24, 9)]),
    ("0 0 * * 7", at(2026, 11, 23), [at(2026, 11, 29), at(2026, 12, 6)]),
    ("0 0 * * sun,0", at(2026, 11, 23), [at(2026, 11, 29)]),
    ("0 12 1 jan,Jul *", at(2026, 2, 1), [at(2026, 7, 1, 12), at(2027, 1, 1, 12)]),
    # The 31st: only months that have one.
    ("0 0 31 * *", at(2026, 1, 31, 0, 0), [at(2026, 3, 31), at(2026, 5, 31), at(2026, 7, 31),
                                           at(2026, 8, 31), at(2026, 10, 31)]),
    # Feb 29: leap years only, and 2100 is not one.
    ("0 0 29 2 *", at(2026, 1, 1), [at(2028, 2, 29), at(2032, 2, 29)]),
    ("0 0 29 2 *", at(2096, 3, 1), [at(2104, 2, 29)]),
    # Vixie: both day fields restricted -> either matches (the 13th or a Friday).
    ("0 0 13 * 5", at(2026, 11, 1), [at(2026, 11, 6), at(2026, 11, 13), at(2026, 11, 20),
                                     at(2026, 11, 27), at(2026, 12, 4)]),
    # A day field starting with "*" -> both must match (odd days that are Mondays).
    ("0 0 */2 * MON", at(2026, 11, 1), [at(2026, 11, 9), at(2026, 11, 23), at(2026, 12, 7)]),
    ("@hourly", at(2026, 1, 1, 0, 0), [at(2026, 1, 1, 1), at(2026, 1, 1, 2)]),
    ("@daily", at(2026, 1, 1, 0, 0), [at(2026, 1, 2)]),
    ("@midnight", at(2026, 1, 1, 12), [at(2026, 1, 2)]),
    ("@weekly", at(2026, 11, 23), [at(2026, 11, 29)]),
    ("@monthly", at(2026, 11, 23), [at(2026, 12, 1), at(2027, 1, 1)]),
    ("@yearly", at(2026, 11, 23), [at(2027, 1, 1)]),
    ("@annually", at(2026, 11, 23), [at(2027, 1, 1)]),
]  # fmt: skip


@pytest.mark.parametrize(("expr", "start", "expected"), TABLE)
def test_ticks_match_the_hand_computed_table(
    expr: str, start: dt.datetime, expected: list[dt.datetime]
) -> None:
    cron = Cron(expr)
    got = ticks(cron, start, len(expected))
    assert got == expected
    assert all(t.tzinfo is UTC and cron.matches(t) for t in got)


def test_next_after_is_strictly_after_a_tick() -> None:
    cron = Cron("0 3 * * *")
    assert cron.next_after(at(2026, 1, 1, 3)) == at(2026, 1, 2, 3)
    assert cron.next_after(at(2026, 1, 1, 2, 59, 59)) == at(2026, 1, 1, 3)


def test_last_at_or_before_includes_the_instant_itself() -> None:
    cron = Cron("0 3 * * *")
    assert cron.last_at_or_before(at(2026, 1, 2, 3)) == at(2026, 1, 2, 3)
    assert cron.last_at_or_before(at(2026, 1, 2, 2, 59)) == at(2026, 1, 1, 3)
    assert Cron("0 0 29 2 *").last_at_or_before(at(2103, 1, 1)) == at(2096, 2, 29)


def test_a_time_zone_shifts_the_ticks() -> None:
    cron = Cron("0 3 * * *", time_zone="America/New_York")
    assert cron.next_after(at(2026, 1, 1)) == at(2026, 1, 1, 8)  # EST = UTC-5
    assert cron.next_after(at(2026, 7, 1)) == at(2026, 7, 1, 7)  # EDT = UTC-4


BERLIN, NEW_YORK = "Europe/Berlin", "America/New_York"


def test_a_nonexistent_local_time_is_skipped_in_spring() -> None:
    # Europe/Berlin: 2026-03-29 02:00 CET jumps to 03:00 CEST.
    cron = Cron("30 2 * * *", time_zone=BERLIN)
    assert ticks(cron, at(2026, 3, 28, 12), 2) == [
        at(2026, 3, 30, 2, 30, tz=BERLIN),
        at(2026, 3, 31, 2, 30, tz=BERLIN),
    ]
    # America/New_York: 2026-03-08 02:00 EST jumps to 03:00 EDT.
    every = Cron("*/30 * * * *", time_zone=NEW_YORK)
    assert [every.local(t).strftime("%H:%M%z") for t in ticks(every, at(2026, 3, 8, 6), 4)] == [
        "01:30-0500",
        "03:00-0400",
        "03:30-0400",
        "04:00-0400",
    ]


def test_an_ambiguous_local_time_ticks_once_in_autumn() -> None:
    # Europe/Berlin: 2026-10-25 03:00 CEST goes back to 02:00 CET.
    cron = Cron("30 2 * * *", time_zone=BERLIN)
    got = ticks(cron, at(2026, 10, 24, 12), 2)
    assert got == [at(2026, 10, 25, 0, 30), at(2026, 10, 26, 1, 30)]  # 02:30 CEST, then CET
    hourly = Cron("0 * * * *", time_zone=NEW_YORK)  # 2026-11-01 02:00 EDT -> 01:00 EST
    local = [hourly.local(t).strftime("%H:%M%z") for t in ticks(hourly, at(2026, 11, 1, 4), 3)]
    assert local == ["01:00-0400", "02:00-0500", "03:00-0500"]
    # From inside the repeated hour, the next tick is after it.
    inside = at(2026, 11, 1, 6, 10)  # 01:10 EST, the second time through 01:10
    assert hourly.next_after(inside) == at(2026, 11, 1, 7)


@pytest.mark.parametrize(
    ("expr", "field"),
    [
        ("60 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 0 * *", "day-of-month"),
        ("* * 32 * *", "day-of-month"),
        ("* * * 13 *", "month"),
        ("* * * FOO *", "month"),
        ("* * * * 8", "day-of-week"),
        ("* * * * MON-", "day-of-week"),
        ("*/0 * * * *", "minute"),
        ("5/15 * * * *", "minute"),
        ("10-5 * * * *", "minute"),
        ("1,,2 * * * *", "minute"),
        ("-1 * * * *", "minute"),
        ("* x * * *", "hour"),
    ],
)
def test_a_bad_field_is_refused_by_name(expr: str, field: str) -> None:
    with pytest.raises(tq.ConfigError, match=f"{field} field"):
        Cron(expr)


@pytest.mark.parametrize(
    ("expr", "tz", "match"),
    [
        ("* * * *", "UTC", "need 5 fields"),
        ("* * * * * *", "UTC", "need 5 fields"),
        ("@reboot", "UTC", "unknown shorthand"),
        ("0 0 30 2 *", "UTC", "never run"),
        ("0 0 31 4,6,9,11 *", "UTC", "never run"),
        ("0 0 * * *", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_schedules_are_refused(expr: str, tz: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Cron(expr, time_zone=tz)


def test_a_day_that_exists_in_some_month_is_accepted_with_the_or_rule() -> None:
    # Feb 30 never exists, but with a restricted day of week Mondays in Feb match.
    assert Cron("0 0 30 2 MON").next_after(at(2026, 1, 1)) == at(2026, 2, 2)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Cron("* * * * *").next_after(dt.datetime(2026, 1, 1))


def test_equality_and_repr() -> None:
    assert Cron("0  3 * * *") == Cron("0 3 * * *")
    assert Cron("0 3 * * *") != Cron("0 3 * * *", time_zone=BERLIN)
    assert repr(Cron("@daily")) == "Cron('@daily', time_zone='Etc/UTC')"


# Properties, checked by brute force over every minute of a bounded window.

_FIELD_VALUES = [
    st.sampled_from(["*", "0", "*/7", "5-20/5", "0,30", "59", "10-12"]),
    st.sampled_from(["*", "0", "*/5", "1-3", "2", "23", "0,12"]),
    st.sampled_from(["*", "1", "*/10", "15-17", "29", "31", "13"]),
    st.sampled_from(["*", "1", "2", "*/3", "MAR-OCT", "11,12", "10"]),
    st.sampled_from(["*", "0", "7", "MON-FRI", "SAT", "*/2", "3"]),
]
_ZONES = st.sampled_from(["UTC", BERLIN, NEW_YORK, "Australia/Lord_Howe", "Asia/Kolkata"])
# Starts near DST changes (and elsewhere) in 2026.
_STARTS = st.sampled_from(
    [at(2026, 3, 29), at(2026, 3, 8, 5), at(2026, 10, 25), at(2026, 11, 1, 4), at(2026, 4, 4, 14),
     at(2026, 2, 28), at(2028, 2, 28), at(2026, 12, 31, 20)]
) | st.datetimes(
    min_value=dt.datetime(2026, 1, 1), max_value=dt.datetime(2029, 12, 31), timezones=st.just(UTC)
)  # fmt: skip


def _cron_or_none(fields: list[str], tz: str) -> Cron | None:
    try:
        return Cron(" ".join(fields), time_zone=tz)
    except tq.ConfigError:
        return None  # e.g. "0 0 31 11 *"


@settings(max_examples=150, deadline=None)
@given(st.tuples(*_FIELD_VALUES), _ZONES, _STARTS)
def test_next_after_finds_every_tick_in_order(
    fields: tuple[str, ...], tz: str, start: dt.datetime
) -> None:
    cron = _cron_or_none(list(fields), tz)
    if cron is None:
        return
    window_end = start + dt.timedelta(hours=30)
    # Brute force: every UTC minute whose first wall-clock occurrence matches.
    minute = start.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    expected = []
    while minute <= window_end:
        local = minute.astimezone(cron.zone)
        wall = local.replace(tzinfo=None)
        if local.fold == 0 and cron._wall_matches(wall):
            expected.append(minute)
        minute += dt.timedelta(minutes=1)
    got = []
    t = start
    while True:
        n = cron.next_after(t)
        assert n > t
        assert cron.matches(n)
        if n > window_end:
            break
        got.append(n)
        t = n
    assert got == expected
    if expected:
        assert cron.last_at_or_before(expected[-1] + dt.timedelta(seconds=59)) == expected[-1]
        assert cron.last_at_or_before(window_end) == expected[-1]
