"""The admin objects the `queues`, `tasks`, `reminders` and `parked` commands act through.

The logic lives in `tq.admin` (shared with the dashboard); this module only
makes its objects from the command's settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tq.admin import QUEUE_KEYS, STATS_KEYS, TASK_KEYS, CloudTasksAdmin, DbQueueAdmin, QueueAdmin
from tq.cli import _databases, _wiring
from tq.cli._errors import CONFIG, fail
from tq.cli._options import Config

QUEUE_COLUMNS = QUEUE_KEYS
STATS_COLUMNS = STATS_KEYS
TASK_COLUMNS = TASK_KEYS


def open_backend(cfg: Config) -> QueueAdmin:
    """The database queue in `--db`, or Cloud Tasks, as `--backend` says."""
    if _wiring.backend_of(cfg) == "cloudtasks":
        if not cfg.cloud_project or not cfg.cloud_region:
            raise fail("Cloud Tasks needs --cloud-project and --cloud-region", CONFIG)
        return CloudTasksAdmin.connect(cfg.cloud_project, cfg.cloud_region,
                                       cfg.cloudtasks_endpoint)  # fmt: skip
    return DbQueueAdmin(_databases.sql_engine(_databases.require_db(cfg)), dispose=True)


@contextlib.contextmanager
def refusals_as_config_errors() -> Iterator[None]:
    """The admin layer's refusals (a filter a backend cannot apply) exit 3."""
    try:
        yield
    except ValueError as e:
        raise fail(str(e), CONFIG) from None
