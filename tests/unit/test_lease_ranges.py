"""The range arithmetic every store's take_lease uses, checked against sets of keys."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests._longmode import fuzz_settings
from tq.txn import KEY_SPACE, merge_ranges, subtract_ranges

ranges = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=6)


def _keys(rs: list[tuple[int, int]]) -> set[int]:
    return {k for lo, hi in rs for k in range(lo, hi)}


def _sorted_disjoint(rs: list[tuple[int, int]]) -> bool:
    return all(lo < hi for lo, hi in rs) and all(a[1] < b[0] for a, b in itertools.pairwise(rs))


@fuzz_settings(ci=200, long=10_000)  # no per-example deadline: a loaded machine is slow
@given(ranges)
def test_merge_keeps_the_keys_in_sorted_disjoint_ranges(rs: list[tuple[int, int]]) -> None:
    out = merge_ranges(rs)
    assert _keys(out) == _keys(rs)
    assert _sorted_disjoint(out)


@fuzz_settings(ci=200, long=10_000)
@given(ranges, ranges)
def test_subtract_leaves_exactly_the_keys_nobody_holds(
    wanted: list[tuple[int, int]], held: list[tuple[int, int]]
) -> None:
    out = subtract_ranges(wanted, held)
    assert _keys(out) == _keys(wanted) - _keys(held)
    assert _sorted_disjoint(out)


def test_subtract_works_at_the_top_of_the_key_space() -> None:
    top = (KEY_SPACE - 10, KEY_SPACE)
    assert subtract_ranges([top], [(KEY_SPACE - 5, KEY_SPACE)]) == [(KEY_SPACE - 10, KEY_SPACE - 5)]


def test_spanner_ranges_round_trip_through_their_column_encoding() -> None:
    pytest.importorskip("google.cloud.spanner_v1")
    from tq.txn._spanner_store import _decode_range, _encode_range

    for r in ((0, 1), (5, 2**127), (KEY_SPACE - 1, KEY_SPACE)):
        assert _decode_range(_encode_range(r)) == r
