"""Partitions of the reminder key space (sweeper/_partition.py)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeper._partition import Partition, covers, merge, subtract
from tq.txn import KEY_SPACE

# Deterministic and free of timing: the same cases on every run, however loaded the machine.
steady = settings(deadline=None, derandomize=True, database=None, max_examples=200)

ranges_st = st.lists(
    st.tuples(st.integers(0, 60), st.integers(0, 60)).map(lambda t: (min(t), max(t))),
    max_size=6,
)


def keys_of(parts: list[Partition]) -> set[int]:
    return {k for p in parts for k in range(p.low, p.high)}


def test_full_space_splits_into_equal_shards_on_hex_boundaries() -> None:
    shards = Partition.full().split(16)
    assert [s.low for s in shards] == [i << 124 for i in range(16)]
    assert shards[-1].high == KEY_SPACE
    assert {s.width for s in shards} == {1 << 124}


@steady
@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(1, 40))
def test_split_covers_the_partition_with_adjacent_nonempty_pieces(a: int, b: int, n: int) -> None:
    part = Partition(min(a, b), max(a, b))
    pieces = part.split(n)
    assert len(pieces) == min(n, part.width)
    if pieces:
        assert pieces[0].low == part.low
        assert pieces[-1].high == part.high
    assert all(p for p in pieces)
    assert all(x.high == y.low for x, y in itertools.pairwise(pieces))
    widths = {p.width for p in pieces}
    assert max(widths, default=0) - min(widths, default=0) <= 1


def test_split_refuses_fewer_than_one_piece() -> None:
    with pytest.raises(ValueError, match="0 pieces"):
        Partition(0, 10).split(0)


@pytest.mark.parametrize(("low", "high"), [(-1, 5), (5, 4), (0, KEY_SPACE + 1)])
def test_bounds_outside_the_key_space_are_refused(low: int, high: int) -> None:
    with pytest.raises(ValueError, match="bad partition"):
        Partition(low, high)


@pytest.mark.parametrize(
    "part", [Partition(0, 1), Partition(0xABC, 0xDEF0), Partition(5 << 124, KEY_SPACE)]
)
def test_string_form_round_trips(part: Partition) -> None:
    text = str(part)
    assert text.split("-")[0] == f"{part.low:032x}"
    assert Partition.from_string(text) == part


@pytest.mark.parametrize("text", ["", "abc", "-12", "12-", "zz-12", "12-10"])
def test_bad_string_forms_are_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (int() and Partition word theirs apart)
        Partition.from_string(text)


def test_query_bounds_sort_like_the_keys_also_at_the_top_of_the_space() -> None:
    top = Partition(KEY_SPACE - 16, KEY_SPACE)
    low, high = top.query_bounds()
    last_id = "f" * 32
    assert low <= last_id < high
    assert low == f"{KEY_SPACE - 16:032x}"
    mid = Partition(0x10, 0x20)
    assert mid.query_bounds() == (f"{0x10:032x}", f"{0x20:032x}")
    assert f"{0x1F:032x}" < mid.query_bounds()[1] <= f"{0x20:032x}"


def test_split_after_assumes_the_rest_is_as_dense_as_what_was_read() -> None:
    # 100 keys read in [0, 100): one per key, so ~900 more in (99, 1000).
    rest = Partition(0, 1000).split_after(99, 100, 100, 16)
    assert len(rest) == 9
    assert rest[0].low == 100
    assert rest[-1].high == 1000


def test_split_after_caps_the_shards_and_keeps_at_least_one() -> None:
    dense = Partition(0, 1_000_000).split_after(99, 100, 10, 16)
    assert len(dense) == 16
    sparse = Partition(0, 1000).split_after(899, 10, 100, 16)
    assert sparse == [Partition(900, 1000)]


def test_split_after_the_last_key_leaves_nothing() -> None:
    assert Partition(0, 100).split_after(99, 100, 10, 16) == []


@steady
@given(ranges_st, ranges_st)
def test_subtract_leaves_exactly_the_keys_outside_what_is_taken(
    ranges: list[tuple[int, int]], taken: list[tuple[int, int]]
) -> None:
    left = subtract(ranges, taken)
    want = {k for lo, hi in ranges for k in range(lo, hi)} - {
        k for lo, hi in taken for k in range(lo, hi)
    }
    assert keys_of(left) == want
    assert left == merge(left)


@steady
@given(ranges_st, st.integers(-2, 62))
def test_covers_agrees_with_the_merged_ranges(ranges: list[tuple[int, int]], key: int) -> None:
    merged = merge(ranges)
    assert all(x.high < y.low for x, y in itertools.pairwise(merged))
    assert covers(merged, key) == any(lo <= key < hi for lo, hi in ranges)
