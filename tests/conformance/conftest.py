"""Runs every conformance scenario against each store (see harness.py)."""

from __future__ import annotations

import importlib

import pytest

from tests.conformance.harness import KINDS, StoreHarness

# Each harness module brings its `<kind>_harness` fixtures; pytest finds
# fixtures in this module's namespace, so they are copied in here.
_MODULES = ("tests.conformance.harness_sql", "tests.conformance.harness_spanner")
_available: set[str] = set()
for _mod_name in _MODULES:
    try:
        _mod = importlib.import_module(_mod_name)
    except ModuleNotFoundError as e:
        if e.name != _mod_name:
            raise
        continue
    for _kind in KINDS:
        _fixture = getattr(_mod, f"{_kind}_harness", None)
        if _fixture is not None:
            globals()[f"{_kind}_harness"] = _fixture
            _available.add(_kind)


_MARKS = {
    "postgres": pytest.mark.postgres,
    "mariadb": pytest.mark.mariadb,
    "spanner": pytest.mark.spanner,
}


@pytest.fixture(params=[pytest.param(k, marks=[_MARKS[k]] if k in _MARKS else []) for k in KINDS])
def harness(request: pytest.FixtureRequest) -> StoreHarness:
    kind: str = request.param
    if kind not in _available:
        pytest.skip(f"no conformance harness for {kind} (tests/conformance/harness_{kind}.py)")
    h: StoreHarness = request.getfixturevalue(f"{kind}_harness")
    return h
