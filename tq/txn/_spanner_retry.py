"""How long a Spanner transaction waits before it runs again after an abort.

Spanner aborts read-write transactions that touch the same rows at once;
the client re-runs them. Production Spanner nearly always says how long to
wait (the client honours that); when it says nothing, as the emulator
never does, the client's own fallback is 2**n seconds plus up to one, which
under contention serialises everyone behind second-long sleeps. `Backoff`
is tq's fallback instead: short, doubling, jittered.
"""

from __future__ import annotations

import dataclasses
import random as _random
from collections.abc import Callable

from tq._errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Backoff:
    """The pause before re-running a transaction Spanner aborted.

    The n-th retry waits `first_s * 2**(n-1)` seconds, at most `max_s`,
    scaled by a random factor in [0.5, 1), so that transactions aborted
    together do not come back together. When Spanner suggests a delay, the
    client waits that long as well. Refuses (ConfigError) anything but
    0 <= first_s <= max_s.
    """

    first_s: float = 0.01
    max_s: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.first_s <= self.max_s:
            raise ConfigError(
                f"Backoff needs 0 <= first_s <= max_s, got first_s={self.first_s}, "
                f"max_s={self.max_s}"
            )

    def delay(self, retry: int, random: Callable[[], float] = _random.random) -> float:
        """Seconds to wait before retry number `retry` (1 for the first)."""
        return min(self.max_s, self.first_s * 2.0 ** (retry - 1)) * (0.5 + random() / 2)

    def __str__(self) -> str:
        return f"{self.first_s:g} s doubling up to {self.max_s:g} s, jittered"


DEFAULT = Backoff()
"""`SpannerStore`'s default: 10 ms, doubling up to 0.5 s, jittered."""
