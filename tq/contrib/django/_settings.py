"""`settings.TQ`: what a Django project tells tq, read once and checked.

Every key is optional::

    TQ = {
        "DISPATCHER": "tq.default",        # dotted path of the tq.Dispatcher
        # Dispatcher options (set on it at start-up when given):
        "CLOUD_PROJECT": "my-project", "CLOUD_REGION": "us-central1",
        "TARGET_HOST": "app.example.com", "TARGET_SCHEME": "https",
        "PUSH_AS": "tq@my-project.iam.gserviceaccount.com",
        "PUSH_AUDIENCE": None, "AUTHORIZED_PUSHERS": [], "NAMESPACE": "",
        # Where tasks go: "cloud-tasks", or "database" (the database queue
        # in DATABASE). Default: Cloud Tasks when the dispatcher has a
        # cloud project, else the database queue.
        "DELIVERY": None,
        "DATABASE": "default",             # the database queue's and results' alias
        "OUTBOX_DATABASES": None,          # aliases whose atomic() tq writes into
                                           # (default: every PostgreSQL or SQLite one)
        "SWEEPER": None,                   # e.g. "sweeper.InProcSweeper": a callable
                                           # making the dispatcher's sweeper
        # The push, sweep and cron views:
        "AUTH": "oidc",                    # or "insecure-no-auth" (local only)
        "AUTHORIZED_LAUNCHERS": [],        # who may call the sweep and cron views
        "MAX_BODY_BYTES": 1064960,
        "CERTS_URL": None,                 # where token-signing certificates are
                                           # (default Google's; a local issuer in tests)
    }

Misconfiguration raises ImproperlyConfigured at start-up, naming the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from tq.asgi import DEFAULT_MAX_BODY_BYTES, GOOGLE_CERTS_URL

DELIVERIES = ("cloud-tasks", "database")
AUTHS = ("oidc", "insecure-no-auth")
_DISPATCHER_KEYS = {
    "CLOUD_PROJECT": "cloud_project",
    "CLOUD_REGION": "cloud_region",
    "TARGET_HOST": "default_target_host",
    "TARGET_SCHEME": "target_scheme",
    "PUSH_AS": "push_as",
    "PUSH_AUDIENCE": "push_audience",
    "AUTHORIZED_PUSHERS": "authorized_pushers",
    "NAMESPACE": "namespace",
}
_KEYS = frozenset(
    {
        "DISPATCHER", "DELIVERY", "DATABASE", "OUTBOX_DATABASES", "SWEEPER", "AUTH",
        "AUTHORIZED_LAUNCHERS", "MAX_BODY_BYTES", "CERTS_URL", *_DISPATCHER_KEYS,
    }
)  # fmt: skip


@dataclasses.dataclass(frozen=True, slots=True)
class TQSettings:
    """`settings.TQ`, checked (see the module docstring)."""

    dispatcher: str
    dispatcher_options: Mapping[str, Any]
    delivery: str | None
    database: str
    outbox_databases: tuple[str, ...] | None
    sweeper: str | None
    auth: str
    authorized_launchers: tuple[str, ...]
    max_body_bytes: int
    certs_url: str


def _str_list(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ImproperlyConfigured(f"settings.TQ[{key!r}] must be a list of strings")
    return tuple(value)


def read() -> TQSettings:
    """`settings.TQ` (a dict; absent means all defaults), checked."""
    raw: Any = getattr(settings, "TQ", {})
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured("settings.TQ must be a dict")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ImproperlyConfigured(
            f"settings.TQ has unknown keys {unknown}; known: {sorted(_KEYS)}"
        )
    delivery = raw.get("DELIVERY")
    if delivery is not None and delivery not in DELIVERIES:
        raise ImproperlyConfigured(
            f"settings.TQ['DELIVERY'] must be one of {DELIVERIES} (or unset), not {delivery!r}"
        )
    auth = raw.get("AUTH", "oidc")
    if auth not in AUTHS:
        raise ImproperlyConfigured(f"settings.TQ['AUTH'] must be one of {AUTHS}, not {auth!r}")
    database = raw.get("DATABASE", "default")
    outbox = raw.get("OUTBOX_DATABASES")
    aliases = set(settings.DATABASES)
    for alias in [database, *(outbox or ())]:
        if alias not in aliases:
            raise ImproperlyConfigured(
                f"settings.TQ names database {alias!r}, which settings.DATABASES lacks"
            )
    max_body = raw.get("MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body <= 0:
        raise ImproperlyConfigured("settings.TQ['MAX_BODY_BYTES'] must be a positive int")
    options = {opt: raw[key] for key, opt in _DISPATCHER_KEYS.items() if key in raw}
    if "authorized_pushers" in options:
        pushers = options["authorized_pushers"]
        options["authorized_pushers"] = _str_list("AUTHORIZED_PUSHERS", pushers)
    return TQSettings(
        dispatcher=str(raw.get("DISPATCHER", "tq.default")),
        dispatcher_options=options,
        delivery=delivery,
        database=database,
        outbox_databases=None if outbox is None else _str_list("OUTBOX_DATABASES", outbox),
        sweeper=None if raw.get("SWEEPER") is None else str(raw["SWEEPER"]),
        auth=auth,
        authorized_launchers=_str_list("AUTHORIZED_LAUNCHERS", raw.get("AUTHORIZED_LAUNCHERS", ())),
        max_body_bytes=max_body,
        certs_url=str(raw.get("CERTS_URL") or GOOGLE_CERTS_URL),
    )
