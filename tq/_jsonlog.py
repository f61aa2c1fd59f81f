"""A logging formatter writing one JSON object per record (for Cloud Logging and others)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from opentelemetry import trace

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JSONFormatter(logging.Formatter):
    """Formats records as one-line JSON objects with their `extra` fields.

    Every object has `time` (RFC 3339, UTC), `severity` (the level name, as
    Cloud Logging reads it), `logger` and `message`; then each field given
    through `extra=` (tq's own: `tq_class`, `tq_task`, `tq_reminder`,
    `tq_queue`, `tq_attempt`, `tq_outcome`, `tq_status`); `exception` with
    the traceback when there is one; and `trace_id` / `span_id` (hex) when a
    span is current.

    Args:
      cloud_project: when set, also writes the trace and span in the fields
        Google Cloud Logging links to Cloud Trace
        (`logging.googleapis.com/trace` as `projects/<p>/traces/<id>`,
        `logging.googleapis.com/spanId`). Default None.

    Values that JSON cannot hold are written with `str()`.
    """

    def __init__(self, *, cloud_project: str | None = None) -> None:
        super().__init__()
        self.cloud_project = cloud_project

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STANDARD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        sc = trace.get_current_span().get_span_context()
        if sc.is_valid:
            trace_id, span_id = f"{sc.trace_id:032x}", f"{sc.span_id:016x}"
            out["trace_id"], out["span_id"] = trace_id, span_id
            if self.cloud_project:
                out["logging.googleapis.com/trace"] = (
                    f"projects/{self.cloud_project}/traces/{trace_id}"
                )
                out["logging.googleapis.com/spanId"] = span_id
        return json.dumps(out, default=str, ensure_ascii=False)
