"""Queue configuration: rate limits and retry policy with Cloud Tasks semantics."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re

from tq._errors import ConfigError

_QUEUE_ID_RE = re.compile(r"^[a-zA-Z0-9-]{1,100}$")


@dataclasses.dataclass(frozen=True, slots=True)
class QueueConfig:
    """How one queue dispatches and retries its tasks.

        Defaults are Cloud Tasks' defaults for a queue created through its API.

        Args:
          name: the queue ID ("emails"), `[a-zA-Z0-9-]{1,100}`.
          rate_per_s: dispatches per second (the token bucket's refill rate);
            default 500; 0 dispatches nothing (like a paused queue).
          bucket_size: the most tokens the bucket holds, i.e. the burst size;
            default 100.
          max_concurrent: the most tasks of the queue in flight at once, over
            every worker; default 1,000; 0 means unlimited.
          max_attempts: attempts per task, the first included; default 100;
            -1 means unlimited. queue.yaml's `task_retry_limit` is this minus 1.
          max_retry_duration_s: how long after its first attempt a failing task
            may still be retried; 0 (default) means unlimited. A task stops when
            every limit that is set is reached: with both set, after
            `max_attempts` attempts AND `max_retry_duration_s` (as Cloud Tasks
            and App Engine define it).
          min_backoff_s, max_backoff_s, max_doublings: the wait before retry k is
            `min_backoff_s * 2**(k-1)` for the first `max_doublings` doublings,
            then grows by `min_backoff_s * 2**max_doublings` per retry, never
            above `max_backoff_s`. Defaults 0.1 s, 3,600 s, 16.

    Pausing is not configuration: it is the queue's state, changed with
    `Admin.pause_queue` / `resume_queue` and kept when the configuration is
    applied again.

        Refuses (ConfigError) invalid names and values out of range.
    """

    name: str
    rate_per_s: float = 500.0
    bucket_size: int = 100
    max_concurrent: int = 1000
    max_attempts: int = 100
    max_retry_duration_s: float = 0.0
    min_backoff_s: float = 0.1
    max_backoff_s: float = 3600.0
    max_doublings: int = 16
    pull: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raises ConfigError saying what is wrong."""

        def bad(what: str) -> ConfigError:
            return ConfigError(f"queue {self.name!r}: {what}")

        if not isinstance(self.name, str) or not _QUEUE_ID_RE.match(self.name):
            raise ConfigError(f"queue name {self.name!r} is invalid: use 1 to 100 of [a-zA-Z0-9-]")
        if not (self.rate_per_s >= 0 and math.isfinite(self.rate_per_s)):
            raise bad(f"rate_per_s must be a finite number >= 0, not {self.rate_per_s}")
        if self.bucket_size < 1:
            raise bad(f"bucket_size must be at least 1, not {self.bucket_size}")
        if self.max_concurrent < 0:
            raise bad(f"max_concurrent must be >= 0 (0: unlimited), not {self.max_concurrent}")
        if self.max_attempts < -1 or self.max_attempts == 0:
            raise bad(f"max_attempts must be >= 1 or -1 (unlimited), not {self.max_attempts}")
        if self.max_retry_duration_s < 0:
            raise bad("max_retry_duration_s must be >= 0 (0: unlimited)")
        if self.min_backoff_s < 0 or self.max_backoff_s < self.min_backoff_s:
            raise bad("backoff must satisfy 0 <= min_backoff_s <= max_backoff_s")
        if not 0 <= self.max_doublings <= 64:
            raise bad(f"max_doublings must be within 0 to 64, not {self.max_doublings}")

    def backoff(self, retry: int) -> dt.timedelta:
        """The wait before retry number `retry` (1 for the first retry)."""
        return dt.timedelta(seconds=backoff_s(self, retry))

    def gives_up(self, attempts: int, since_first_attempt: dt.timedelta) -> bool:
        """Whether a task that failed `attempts` times must not be retried.

        True when every limit that is set is reached; never when neither is
        set (max_attempts -1 and max_retry_duration_s 0).
        """
        attempts_limited = self.max_attempts != -1
        duration_limited = self.max_retry_duration_s > 0
        if not attempts_limited and not duration_limited:
            return False
        if attempts_limited and attempts < self.max_attempts:
            return False
        return not (
            duration_limited and since_first_attempt.total_seconds() < self.max_retry_duration_s
        )


def backoff_s(cfg: QueueConfig, retry: int) -> float:
    """Seconds before retry `retry` (>= 1): doubling, then linear, then capped."""
    if retry < 1:
        return 0.0
    if retry - 1 <= cfg.max_doublings:
        wait = cfg.min_backoff_s * 2.0 ** (retry - 1)
    else:
        step = cfg.min_backoff_s * 2.0**cfg.max_doublings
        wait = step + (retry - 1 - cfg.max_doublings) * step
    return min(wait, cfg.max_backoff_s)
