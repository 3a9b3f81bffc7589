"""The mypyc-compiled core makes every decision the pure-Python reference makes.

The same random workloads (``tests/core_trace.py``: every policy, 2 to 300 groups, messages,
suspend/resume, timers) run in two interpreters, one on the compiled core and one with
``IOBAND_PURE_PYTHON=1``; their traces must be equal, call by call. The install step builds the
compiled core, so under CI (``IOBAND_REQUIRE_REAL=1``) a missing or stale build fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ioband import _build
from tests.conftest import require_real

ROOT = Path(__file__).resolve().parent.parent


def run_traces(pure: bool) -> dict:
    env = {**os.environ, _build.PURE_ENV: "1" if pure else ""}
    out = subprocess.run(
        [sys.executable, "-m", "tests.core_trace"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return json.loads(out.stdout)


def test_compiled_core_decides_as_the_pure_python_reference():
    compiled, why = _build.decide()
    require_real(compiled, f"the compiled core is not in use: {why}")
    fast = run_traces(pure=False)
    reference = run_traces(pure=True)
    assert fast["compiled"] is True, fast["build"]
    assert reference["compiled"] is False, reference["build"]
    assert len(fast["traces"]) == len(reference["traces"]) == len(_workloads())
    for got, want in zip(fast["traces"], reference["traces"]):
        assert got["workload"] == want["workload"]
        for step, (a, b) in enumerate(zip(got["trace"], want["trace"])):
            assert a == b, f"{got['workload']}: step {step} differs"
        assert len(got["trace"]) == len(want["trace"]), got["workload"]


def _workloads() -> list:
    from tests.core_trace import workloads

    return workloads()


def test_pure_python_is_forced_by_the_environment_and_loads_the_sources():
    env = {**os.environ, _build.PURE_ENV: "1"}
    code = (
        "import ioband, ioband.core.engine as e, ioband.policies.weight as w;"
        "print(ioband.COMPILED, e.__file__.endswith('.py'), w.__file__.endswith('.py'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "True", "True"]


def test_a_changed_source_falls_back_to_pure_python(tmp_path, monkeypatch):
    """A stamp that does not match the sources (edited after the build) means pure Python."""
    stamp = tmp_path / "_compiled.json"
    sources = _build.source_hashes()
    first = next(iter(sources))
    stamp.write_text(
        json.dumps({"ext_suffix": _build.ext_suffix(), "sources": {**sources, first: "0" * 64}})
    )
    monkeypatch.setattr(_build, "STAMP", stamp)
    monkeypatch.delenv(_build.PURE_ENV, raising=False)
    compiled, why = _build.decide()
    assert not compiled and first in why
    stamp.write_text("{not json")
    assert _build.decide() == (False, "pure Python (the compiled core is not built: make install)")
