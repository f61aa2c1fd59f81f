"""Reading queue configuration from an App Engine `queue.yaml`."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from tq._errors import ConfigError
from tq.dbqueue._queues import QueueConfig

log = logging.getLogger("tq.dbqueue")

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*([smhd])\s*$")
_AGE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd])\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# App Engine's defaults for a queue.yaml push queue.
YAML_DEFAULT_RATE = "5/s"
YAML_DEFAULT_BUCKET = 5

_QUEUE_KEYS = {
    "name", "rate", "bucket_size", "max_concurrent_requests", "retry_parameters",
    "mode", "target", "acl",
}  # fmt: skip
_RETRY_KEYS = {
    "task_retry_limit", "task_age_limit", "min_backoff_seconds", "max_backoff_seconds",
    "max_doublings",
}  # fmt: skip


def parse_rate(text: str) -> float:
    """Dispatches per second of an App Engine rate: "5/s", "10/m", "1.5/h", "2/d"."""
    m = _RATE_RE.match(str(text))
    if not m:
        raise ConfigError(f"rate {text!r} is invalid: use N/s, N/m, N/h or N/d (e.g. '5/s')")
    return float(m.group(1)) / _UNIT_S[m.group(2)]


def parse_age(text: str | int | float) -> float:
    """Seconds of an App Engine age: "30s", "10m", "2h", "3d" (a bare number is seconds)."""
    if isinstance(text, int | float):
        return float(text)
    m = _AGE_RE.match(text)
    if not m:
        raise ConfigError(f"age {text!r} is invalid: use Ns, Nm, Nh or Nd (e.g. '2d')")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def parse_queue_yaml(text: str) -> list[QueueConfig]:
    """The push queues of a queue.yaml document.

    Follows App Engine's meaning: `rate` (default 5/s), `bucket_size`
    (default 5), `max_concurrent_requests` (default unlimited), and
    `retry_parameters` with `task_retry_limit` (retries after the first
    attempt; default unlimited), `task_age_limit`, `min_backoff_seconds`,
    `max_backoff_seconds`, `max_doublings`; `mode: pull` makes a pull queue.
    Refuses (ConfigError) unknown keys and invalid values.
    """
    import yaml

    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"queue.yaml is not valid YAML: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("queue", []), list):
        raise ConfigError("queue.yaml must be a mapping with a 'queue' list")
    out: list[QueueConfig] = []
    seen: set[str] = set()
    for entry in doc.get("queue") or []:
        cfg = _queue_of(entry)
        if cfg.name in seen:
            raise ConfigError(f"queue.yaml: queue {cfg.name!r} is defined twice")
        seen.add(cfg.name)
        out.append(cfg)
    return out


def load_queue_yaml(path: str | os.PathLike[str]) -> list[QueueConfig]:
    """`parse_queue_yaml` of the file at `path`."""
    with open(path, encoding="utf-8") as f:
        return parse_queue_yaml(f.read())


def _queue_of(entry: Any) -> QueueConfig:
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"queue.yaml: each queue needs a name, got {entry!r}")
    name = str(entry["name"])
    unknown = set(entry) - _QUEUE_KEYS
    if unknown:
        raise ConfigError(f"queue.yaml: queue {name!r} has unknown keys {sorted(unknown)}")
    mode = entry.get("mode", "push")
    if mode not in ("push", "pull"):
        raise ConfigError(f"queue.yaml: queue {name!r}: mode must be push or pull, not {mode!r}")
    retry = entry.get("retry_parameters") or {}
    if not isinstance(retry, dict):
        raise ConfigError(f"queue.yaml: queue {name!r}: retry_parameters must be a mapping")
    unknown = set(retry) - _RETRY_KEYS
    if unknown:
        raise ConfigError(f"queue.yaml: queue {name!r}: unknown retry_parameters {sorted(unknown)}")
    try:
        return QueueConfig(**_config_kwargs(name, entry, retry))
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"queue.yaml: queue {name!r}: {e}") from e


def _config_kwargs(name: str, entry: dict[str, Any], retry: dict[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "name": name,
        "rate_per_s": parse_rate(entry.get("rate", YAML_DEFAULT_RATE)),
        "bucket_size": int(entry.get("bucket_size", YAML_DEFAULT_BUCKET)),
        "max_concurrent": int(entry.get("max_concurrent_requests", 0)),
        "max_attempts": -1,
        "pull": entry.get("mode", "push") == "pull",
    }
    if "task_retry_limit" in retry:
        limit = int(retry["task_retry_limit"])
        if limit < 0:
            raise ConfigError(f"queue.yaml: queue {name!r}: task_retry_limit must be >= 0")
        kwargs["max_attempts"] = limit + 1
    if "task_age_limit" in retry:
        kwargs["max_retry_duration_s"] = parse_age(retry["task_age_limit"])
    if "min_backoff_seconds" in retry:
        kwargs["min_backoff_s"] = float(retry["min_backoff_seconds"])
    if "max_backoff_seconds" in retry:
        kwargs["max_backoff_s"] = float(retry["max_backoff_seconds"])
    if "max_doublings" in retry:
        kwargs["max_doublings"] = int(retry["max_doublings"])
    return kwargs
