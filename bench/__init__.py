"""Benchmarks of tq against the physical limits and its peers (see docs/benchmarks.md).

Run the suite with `scripts/bench` (or `python -m bench`); one benchmark
with `python -m bench.<name>`. Never part of the tests: only a smoke test
(tests/unit/test_bench_smoke.py) runs each script in its --tiny mode.
"""
