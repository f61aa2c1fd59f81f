"""The direction of imports (docs/development.md, "The direction of imports").

Read from the source, not by importing it: every import counts, lazy ones
inside functions and those under TYPE_CHECKING too.
"""

from __future__ import annotations

import ast
import functools
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]

# tq's parts with a door of their own; the rest of tq is the core.
PARTS = ("admin", "cli", "contrib", "dashboard", "dbqueue", "pubsub", "txn")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _imports() -> tuple[tuple[str, str, int], ...]:
    """(importing module, imported module, line) for every import in tq, tqtesting, sweeper."""
    found: list[tuple[str, str, int]] = []
    for package in ("tq", "tqtesting", "sweeper"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name.endswith("_pb2.py"):
                continue
            module = _module_name(path)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found += [(module, a.name, node.lineno) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    assert node.level == 0, f"{module}:{node.lineno}: a relative import"
                    base = node.module or ""
                    found.append((module, base, node.lineno))
                    # `from tq import txn` imports tq.txn.
                    found += [(module, f"{base}.{a.name}", node.lineno) for a in node.names]
    return tuple(found)


def _part(module: str) -> str:
    """'tq' (the core), 'tq.<part>', or the top-level package."""
    names = module.split(".")
    if names[0] == "tq" and len(names) > 1 and names[1] in PARTS:
        return f"tq.{names[1]}"
    return names[0]


def _within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _offending(importer: str, imported: str, allowed: tuple[str, ...] = ()) -> list[str]:
    """Where a module of part `importer` imports one of part `imported`, outside `allowed`."""
    return [
        f"{src}:{line} imports {dst}"
        for src, dst, line in _imports()
        if _part(src) == importer
        and _within(dst, imported)
        and not _within(src, *allowed)
        and _part(dst) != importer
    ]


def test_tq_imports_sweeper_and_tqtesting_only_in_the_composition_root() -> None:
    bad = [
        line
        for package in ("sweeper", "tqtesting")
        for part in ("tq", *(f"tq.{p}" for p in PARTS))
        for line in _offending(part, package, allowed=("tq.cli",))
    ]
    assert not bad, bad


def test_the_core_imports_of_the_transaction_layer_only_its_store_protocol() -> None:
    # tq/__init__.py exposes the tq.txn namespace; every other core module
    # reaches the transaction layer through the store protocol alone (the
    # protocol and the key space of reminder IDs).
    bad = [
        f"{src}:{line} imports {dst}"
        for src, dst, line in _imports()
        if _part(src) == "tq"
        and src != "tq"
        and _within(dst, "tq.txn")
        and not _within(dst, "tq.txn._store", "tq.txn._keyspace")
    ]
    assert not bad, bad


def test_the_core_imports_no_backend_integration_or_composition_root() -> None:
    bad = [
        line
        for part in ("admin", "cli", "contrib", "dashboard", "dbqueue", "pubsub")
        for line in _offending("tq", f"tq.{part}")
    ]
    assert not bad, bad


def test_backends_import_no_composition_root_nor_the_django_integration() -> None:
    bad = [
        line
        for backend in ("tq.txn", "tq.dbqueue", "tq.pubsub")
        for root in ("tq.admin", "tq.cli", "tq.dashboard", "tq.contrib")
        for line in _offending(backend, root)
    ]
    assert not bad, bad


def test_the_admin_layer_is_imported_only_by_the_tq_command_and_the_dashboard() -> None:
    bad = [
        f"{src}:{line} imports {dst}"
        for src, dst, line in _imports()
        if _within(dst, "tq.admin") and _part(src) not in ("tq.admin", "tq.cli", "tq.dashboard")
    ]
    assert not bad, bad


def test_nothing_outside_the_django_integration_imports_it() -> None:
    bad = [
        f"{src}:{line} imports {dst}"
        for src, dst, line in _imports()
        if _within(dst, "tq.contrib") and _part(src) != "tq.contrib"
    ]
    assert not bad, bad


def test_the_tq_command_is_imported_only_by_integrations_that_run_it() -> None:
    # The Django integration's `manage.py tq` runs the tq command itself.
    bad = [
        f"{src}:{line} imports {dst}"
        for src, dst, line in _imports()
        if _within(dst, "tq.cli") and _part(src) not in ("tq.cli", "tq.contrib")
    ]
    assert not bad, bad


def test_the_check_sees_the_imports_it_judges() -> None:
    found = set(_imports())
    assert any(s == "tq.cli._wiring" and d == "sweeper" for s, d, _ in found)
    assert any(s == "tq" and d == "tq.txn" for s, d, _ in found)
    assert _part("tq._dispatcher") == "tq"
    assert _part("tq.txn.sql._store") == "tq.txn"
