"""How the Spanner store computes the free part of a lease request."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("google.cloud.spanner_v1")

from tq.txn import KEY_SPACE
from tq.txn.spanner import _decode_range, _encode_range, _subtract

small_ranges = st.lists(
    st.tuples(st.integers(0, 60), st.integers(0, 60)).map(lambda r: (min(r), max(r))), max_size=6
)


@given(small_ranges, small_ranges)
def test_subtract_leaves_exactly_the_keys_nobody_holds(
    wanted: list[tuple[int, int]], taken: list[tuple[int, int]]
) -> None:
    free = _subtract(wanted, taken)

    def keys(ranges: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> set[int]:
        return {k for lo, hi in ranges for k in range(lo, hi)}

    assert keys(free) == keys(wanted) - keys(taken)
    assert all(lo < hi for lo, hi in free)
    assert all(a[1] < b[0] for a, b in itertools.pairwise(free))  # sorted, merged


def test_ranges_round_trip_through_their_column_encoding_up_to_the_key_space_end() -> None:
    for r in ((0, 1), (5, 2**127), (KEY_SPACE - 1, KEY_SPACE)):
        assert _decode_range(_encode_range(r)) == r
