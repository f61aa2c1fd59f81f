"""The project's ASGI application and tq dispatcher, for the `tq` command.

`manage.py tq dev|serve|worker` pass `tq.contrib.django.asgi:application`
as the app: Django's own ASGI handler (`get_asgi_application()`), so pushes
go through the project's URLs, middleware and tq's views. `dispatcher` is
the dispatcher settings.TQ names. Import it only with
DJANGO_SETTINGS_MODULE set (manage.py sets it).
"""

from __future__ import annotations

from django.core.asgi import get_asgi_application

from tq.contrib.django import _state

application = get_asgi_application()
dispatcher = _state.current().dispatcher
