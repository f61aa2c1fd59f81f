"""The Django app of tq: `INSTALLED_APPS = [..., "tq.contrib.django"]`."""

from __future__ import annotations

from django.apps import AppConfig


class TqConfig(AppConfig):
    """Wires tq in at start-up (see `_state.setup`); its label is "tq"."""

    name = "tq.contrib.django"
    label = "tq"
    verbose_name = "tq"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core.signals import setting_changed

        from tq.contrib.django import _state

        _state.setup()
        setting_changed.connect(_settings_changed, dispatch_uid="tq.contrib.django")


def _settings_changed(*, setting: str, **kwargs: object) -> None:
    # override_settings(TQ=...) in tests: wire again with the new settings.
    if setting == "TQ":
        from tq.contrib.django import _state

        _state.setup()
