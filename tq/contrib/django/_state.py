"""Start-up: wiring tq into a Django project (called from the app's `ready()`).

`setup()` reads `settings.TQ`, configures the dispatcher (its options, where
tasks go, the sweeper), registers the "django-task" task class, an outbox
store per watched database and the atomic-block finder. `current()` is
what the backend, the views and the commands use; it sets up on first use
if `ready()` has not.
"""

from __future__ import annotations

import dataclasses
import threading

from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.db.backends.signals import connection_created
from django.utils.module_loading import import_string

import tq
from tq._pb.django_task_pb2 import DjangoTask
from tq.contrib.django import _atomic, _databases, _runner, _settings
from tq.contrib.django._delivery import DatabaseDelivery
from tq.txn import register_finder, register_store, stores, unregister_store

CLASS_ID = "django-task"
LOCAL_PROJECT = "tq-local"
LOCAL_REGION = "local"


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    """What `setup()` wired: the settings, the dispatcher, the watched aliases."""

    settings: _settings.TQSettings
    dispatcher: tq.Dispatcher
    delivery: str
    watched: tuple[str, ...]


_state: State | None = None
_lock = threading.Lock()


def current() -> State:
    """The wiring of this process (made by `setup()` on first use)."""
    state = _state
    return state if state is not None else setup()


def setup() -> State:
    """Wires tq into the project from `settings.TQ` (idempotent; again after a settings change)."""
    global _state
    with _lock:
        cfg = _settings.read()
        disp = import_string(cfg.dispatcher)
        if not isinstance(disp, tq.Dispatcher):
            raise ImproperlyConfigured(
                f"settings.TQ['DISPATCHER'] = {cfg.dispatcher!r} is not a tq.Dispatcher"
            )
        if cfg.dispatcher_options:
            disp.configure(**cfg.dispatcher_options)
        # def handlers run in worker threads: Django's connections there get the
        # upkeep they would get around a request.
        disp.configure(sync_handler_scope=_runner.connections_scope)
        delivery = cfg.delivery or ("cloud-tasks" if disp.cloud_project else "database")
        given = getattr(disp, "_submitter", None)  # one passed to the Dispatcher in code
        if cfg.delivery is None and given is not None and not isinstance(given, DatabaseDelivery):
            delivery = "the dispatcher's submitter"
        if delivery == "database":
            _databases.sqlalchemy_url(cfg.database)  # refuses what cannot hold a queue
            defaults: dict[str, str] = {}
            if not disp.cloud_project:
                defaults["cloud_project"] = LOCAL_PROJECT
            if not disp.cloud_region:
                defaults["cloud_region"] = LOCAL_REGION
            disp.configure(**defaults, submitter=DatabaseDelivery(cfg.database))
        elif cfg.delivery == "cloud-tasks":
            disp.configure(submitter=None)  # a CloudTasksSubmitter, made on first use
        if cfg.sweeper:
            disp.configure(sweeper=import_string(cfg.sweeper)())
        watched = cfg.outbox_databases or tuple(
            a for a in connections.settings if _databases.supported(a)
        )
        for alias in watched:
            if not _databases.supported(alias):
                raise ImproperlyConfigured(
                    f"settings.TQ['OUTBOX_DATABASES'] names {alias!r}, which is "
                    f"{_databases.vendor(alias)}: tq's outbox lives on PostgreSQL or SQLite"
                )
        for s in stores():
            if isinstance(s, _databases.DjangoStore) and s.alias not in watched:
                unregister_store(s.name)
        for alias in watched:
            if not any(
                isinstance(s, _databases.DjangoStore) and s.alias == alias for s in stores()
            ):
                register_store(_databases.DjangoStore(alias))
        _atomic.watch(watched)
        connection_created.connect(_atomic.stamp_blocks, dispatch_uid="tq-stamp-blocks")
        register_finder(_atomic.find, scoped=True)
        cls = disp.task_class_by_id(CLASS_ID)
        if cls is None:
            disp.register_task_class(
                tq.TaskClass(
                    id=CLASS_ID,
                    prototype=DjangoTask,
                    kind=tq.Kind.FOLLOWS_CONTEXT,
                    queue="default",
                    handler=_runner.run,
                )
            )
        elif cls.prototype is not DjangoTask:
            raise ImproperlyConfigured(
                f"the dispatcher has a task class {CLASS_ID!r} of its own; tq's Django "
                "backend needs that ID"
            )
        _state = State(settings=cfg, dispatcher=disp, delivery=delivery, watched=watched)
        return _state
