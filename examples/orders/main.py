"""The orders service as configured by its environment: `tq dev examples.orders.main:app`.

The database is `TQ_DATABASE_URL` (default `sqlite:///orders.db`), the
variable the `tq` command reads and exports too; `TQ_AUTHORIZED_LAUNCHERS`
names who may call the sweep endpoint; `TQ_DASHBOARD_TOKEN`, when set,
serves the dashboard at `/tq` to whoever holds it. `tq dev` and `tq serve`
find the dispatcher here (`dispatcher`) and configure it.
"""

from __future__ import annotations

import os

import tq.dashboard
from examples.orders.service import OrdersService
from examples.orders.web import create_app
from tq.cli import settings_from_env

service = OrdersService.from_env()
dispatcher = service.dispatcher
# Who may call the sweep endpoint (Cloud Scheduler's service account), read
# as the `tq` command reads its settings.
launchers = settings_from_env(os.environ, ["authorized_launchers"])["authorized_launchers"]
token = os.environ.get("TQ_DASHBOARD_TOKEN")
dashboard = tq.dashboard.Access(operator_tokens=[token]) if token else None
app = create_app(service, authorized_launchers=launchers, dashboard=dashboard)
