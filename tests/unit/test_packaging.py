"""The package's shape: generated code is current, optional deps stay optional."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_generated_protobuf_modules_match_their_sources() -> None:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [str(ROOT / "scripts" / "gen-proto"), out],
            check=True,
            env={**os.environ, "PYTHON": sys.executable},
        )
        generated = sorted(p.relative_to(out) for p in pathlib.Path(out).rglob("*_pb2.py*"))
        assert generated, "scripts/gen-proto generated nothing"
        stale = [
            str(rel)
            for rel in generated
            if (pathlib.Path(out) / rel).read_bytes() != (ROOT / rel).read_bytes()
        ]
        assert not stale, f"run scripts/gen-proto and commit: out of date: {stale}"


@pytest.mark.parametrize("blocked", ["sqlalchemy", "google.cloud.spanner", "starlette", "uvicorn"])
def test_import_tq_works_without_optional_dependency(blocked: str) -> None:
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == {blocked!r} or name.startswith({blocked!r} + "."):
            raise ImportError("blocked for the test: " + name)
        return None
sys.meta_path.insert(0, Block())
import tq, tq.txn
tq.Dispatcher()
assert {blocked!r} not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_public_names_are_exported() -> None:
    import tq

    for name in tq.__all__:
        assert hasattr(tq, name), name
    for name in ("Dispatcher", "Task", "TaskClass", "Kind", "use_submitter", "add_task_async"):
        assert name in tq.__all__
