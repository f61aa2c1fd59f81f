"""Range arithmetic behind SQLStore.take_lease, checked against sets of keys."""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("sqlalchemy")

from hypothesis import given
from hypothesis import strategies as st

from tq.txn.sql._store import _normalize, _subtract

ranges = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=6)


def _keys(rs: list[tuple[int, int]]) -> set[int]:
    return {k for lo, hi in rs for k in range(lo, hi)}


@given(ranges)
def test_normalize_keeps_the_keys_in_sorted_disjoint_ranges(rs: list[tuple[int, int]]) -> None:
    out = _normalize(rs)
    assert _keys(out) == _keys(rs)
    assert all(lo < hi for lo, hi in out)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(out))


@given(ranges, ranges)
def test_subtract_leaves_exactly_the_keys_not_held(
    wanted: list[tuple[int, int]], held: list[tuple[int, int]]
) -> None:
    out = _subtract(_normalize(wanted), _normalize(held))
    assert _keys(out) == _keys(wanted) - _keys(held)
    assert out == _normalize(out)
