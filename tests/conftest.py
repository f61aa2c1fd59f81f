"""Shared pytest configuration. Service fixtures are plugins in tests/_services/."""

from __future__ import annotations

pytest_plugins: list[str] = []
