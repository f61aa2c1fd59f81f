"""The operator's dashboard: web pages over queues, tasks, reminders and parked tasks.

Mount it beside the push endpoint::

    app.mount("/internal/tasks", tq.asgi.app(disp))
    app.mount("/tq", tq.dashboard.app(disp, engine=engine,
                                      access=tq.dashboard.Access(operator_tokens=[TOKEN])))

or serve it on its own with `tq dashboard --db URL` (docs/dashboard.md).
Pages: an overview (queues, outbox, parked, the sweeper, charts of the last
hour), a queue's tasks (by state and class, paged), one task with its
payload decoded, reminders, parked reminders, cron schedules. Actions
(operators only, each confirmed, CSRF-protected and logged on the
`tq.dashboard` logger with who did it) go through `tq.admin`, the same code
as the `tq` command. Access is closed unless configured (`Access`).
"""

from __future__ import annotations

from tq.dashboard._access import INSECURE_NO_AUTH, Access, Role, User
from tq.dashboard._app import app
from tq.dashboard._iap import IAP_CERTS_URL, iap_verifier

__all__ = ["IAP_CERTS_URL", "INSECURE_NO_AUTH", "Access", "Role", "User", "app", "iap_verifier"]
