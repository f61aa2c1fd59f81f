"""The key space of reminder IDs: IDs as integers, and ranges of them.

Reminder IDs are 32 lowercase hex characters; ID ranges are half-open
integer ranges `[low, high)` over the 128-bit key space (what sweep shards
and leases cut).
"""

from __future__ import annotations

from collections.abc import Iterable

KEY_SPACE = 1 << 128


def id_to_int(reminder_id: str) -> int:
    return int(reminder_id, 16)


def int_to_id(key: int) -> str:
    """The 32-hex-character ID of a key below 2**128."""
    return f"{key:032x}"


def key_bound(key: int) -> str:
    """A string that sorts like `key` against 32-char hex IDs, also at 2**128."""
    if key >= KEY_SPACE:
        return "g"  # greater than any hex ID
    return f"{key:032x}"


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping, non-empty half-open ranges covering the same keys."""
    out: list[tuple[int, int]] = []
    for low, high in sorted(r for r in ranges if r[0] < r[1]):
        if out and low <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


def subtract_ranges(
    ranges: Iterable[tuple[int, int]], taken: Iterable[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The keys of `ranges` outside every range of `taken`, as merged ranges.

    What a lease can take of `ranges` when `taken` is held by other leases.
    """
    holes = merge_ranges(taken)
    out: list[tuple[int, int]] = []
    for low, high in merge_ranges(ranges):
        for h_low, h_high in holes:
            if h_high <= low or h_low >= high:
                continue
            if h_low > low:
                out.append((low, h_low))
            low = max(low, h_high)
        if low < high:
            out.append((low, high))
    return out
