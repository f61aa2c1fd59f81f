"""Partitions: ranges of the reminder key space that one scan covers.

Reminder IDs are 32 lowercase hex characters, read as integers below 2**128.
A `Partition` is the half-open integer range `[low, high)` of such keys. The
sweeper splits the whole space into shards, and a scan that finds more
reminders than it reads splits what is left after the last key it read,
assuming the keys it has not seen are as dense as the ones it has.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

from tq.txn import KEY_SPACE, key_bound


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class Partition:
    """The keys `low <= key < high`, with `0 <= low <= high <= 2**128`.

    Raises ValueError for bounds outside the key space or reversed.
    """

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high <= KEY_SPACE:
            raise ValueError(
                f"bad partition [{self.low}, {self.high}): need 0 <= low <= high <= 2**128"
            )

    @classmethod
    def full(cls, key_space: int = KEY_SPACE) -> Partition:
        """The whole key space (or `[0, key_space)`)."""
        return cls(0, key_space)

    @classmethod
    def from_string(cls, text: str) -> Partition:
        """Parses `str(partition)`: "<low hex>-<high hex>". Raises ValueError."""
        low, sep, high = text.partition("-")
        if not sep or not low or not high:
            raise ValueError(f"bad partition {text!r}: want '<low hex>-<high hex>'")
        return cls(int(low, 16), int(high, 16))

    def __str__(self) -> str:
        # 32 hex digits each; the top of the space prints as 33 ("1" and 32 zeros).
        return f"{self.low:032x}-{self.high:032x}"

    @property
    def width(self) -> int:
        return self.high - self.low

    def __bool__(self) -> bool:
        return self.high > self.low

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self.low <= key < self.high

    def query_bounds(self) -> tuple[str, str]:
        """String bounds `(low, high)` for `store.fetch_reminder_keys`.

        They compare against 32-char hex IDs as the integers do, including a
        high bound at the very top of the space (see `tq.txn.key_bound`).
        """
        return key_bound(self.low), key_bound(self.high)

    def split(self, n: int) -> list[Partition]:
        """`n` adjacent partitions of (nearly) equal width covering this one.

        Fewer when the partition is narrower than `n` keys (never an empty
        piece); none for an empty partition. Raises ValueError if n < 1.
        """
        if n < 1:
            raise ValueError(f"cannot split a partition into {n} pieces")
        n = min(n, self.width)
        if n == 0:
            return []
        bounds = [self.low + self.width * i // n for i in range(n + 1)]
        return [Partition(bounds[i], bounds[i + 1]) for i in range(n)]

    def split_after(self, last: int, seen: int, target: int, max_shards: int) -> list[Partition]:
        """Splits the keys after `last` for follow-up scans of about `target` keys.

        `seen` keys were read in `[low, last]`; the rest of the partition,
        `(last, high)`, is assumed as dense and cut into
        `ceil(expected / target)` pieces, at least 1 and at most `max_shards`.
        Returns [] when nothing is left after `last`.
        """
        rest = Partition(min(last + 1, self.high), self.high)
        if not rest:
            return []
        density = seen / max(1, last + 1 - self.low)
        expected = density * rest.width
        shards = min(max_shards, max(1, math.ceil(expected / max(1, target))))
        return rest.split(shards)


def subtract(
    ranges: Iterable[tuple[int, int]], taken: Iterable[tuple[int, int]]
) -> list[Partition]:
    """What of `ranges` lies outside every range of `taken`, sorted and merged."""
    out: list[Partition] = []
    holes = merge(taken)
    for part in merge(ranges):
        low = part.low
        for hole in holes:
            if hole.high <= low or hole.low >= part.high:
                continue
            if hole.low > low:
                out.append(Partition(low, hole.low))
            low = max(low, hole.high)
        if low < part.high:
            out.append(Partition(low, part.high))
    return out


def merge(ranges: Iterable[tuple[int, int]] | Iterable[Partition]) -> list[Partition]:
    """Sorted, non-overlapping partitions covering the same keys; empties dropped."""
    parts = sorted(p if isinstance(p, Partition) else Partition(p[0], p[1]) for p in ranges)
    out: list[Partition] = []
    for p in parts:
        if not p:
            continue
        if out and p.low <= out[-1].high:
            if p.high > out[-1].high:
                out[-1] = Partition(out[-1].low, p.high)
        else:
            out.append(p)
    return out


def covers(ranges: Sequence[Partition], key: int) -> bool:
    """Whether sorted, merged `ranges` hold `key` (binary search)."""
    lo, hi = 0, len(ranges)
    while lo < hi:
        mid = (lo + hi) // 2
        if key < ranges[mid].low:
            hi = mid
        elif key >= ranges[mid].high:
            lo = mid + 1
        else:
            return True
    return False
