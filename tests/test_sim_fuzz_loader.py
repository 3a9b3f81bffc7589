"""Hypothesis fuzzing of the scenario loader: a malformed file is refused with an error naming the
file, the key and the rule; `ioband sim` exits 2 with that one line and no traceback."""

from __future__ import annotations

import contextlib
import copy
import io
import re
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ioband.cli import main
from ioband.sim import Scenario, ScenarioError, open_scenario

BASE: dict[str, Any] = {
    "name": "fuzz",
    "description": "every kind of key",
    "simulation": {"duration": 2.0, "seed": 1, "hz": 1000, "interval": 1.0,
                   "status_format": "legacy", "scheduler": "sfq", "sfq_depth": 4},
    "metrics": {"windows": [1, 2], "efficiency": False},
    "disk": [
        {"name": "sda", "model": "ssd", "iops": 20000, "bandwidth": "500MiB", "queue_depth": 32,
         "nr_requests": 128},
        {"name": "sdb", "model": "hdd", "rpm": 7200, "min_seek": "0.5ms", "max_seek": "16ms",
         "transfer_rate": "120MiB", "capacity": "500GiB", "track_size": "1MiB",
         "elevator": "clook"},
        {"name": "sdc", "model": "fixed", "service_time": "1ms", "byte_time": 0.0},
    ],
    "device": [
        {"name": "ioband1", "disk": "sda", "table": "0 2097152 ioband sda1 1 0 0 user weight 0 :40",
         "messages": ["attach 1000", {"at": 1, "message": "weight 1000:30"}]},
        {"name": "ioband2", "disk": "sdb",
         "table": "0 2097152 ioband sdb1 2 4 0 none range-bw 0 :1:2"},
    ],
    "workload": [
        {"name": "a", "device": "ioband1", "pattern": "randrw", "read_fraction": 0.5,
         "processes": 4, "iodepth": 2, "block_size": "4KiB", "direct": True, "uid": 1000,
         "gid": 10, "cgroup": 3, "pid": 5000, "pgrp": 4000, "client": 1, "rate": "1MiB",
         "rate_iops": 100, "offset": "1MiB", "size": "64MiB", "think_time": "1ms",
         "phase": [{"start": 0, "stop": 1}, {"start": 1.5}]},
        {"name": "b", "device": "ioband2", "pattern": "write", "writeback": True, "start": 0.5,
         "stop": 2},
    ],
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# A small TOML writer (tomllib only reads)

BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_key(k: str) -> str:
    return k if BARE.match(k) else toml_str(k)


def toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def to_toml(doc: dict[str, Any]) -> str:
    lines, sections = [], []
    for k, v in doc.items():
        if isinstance(v, dict):
            sections.append(f"[{toml_key(k)}]")
            sections += [f"{toml_key(a)} = {toml_value(b)}" for a, b in v.items()]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                sections.append(f"[[{toml_key(k)}]]")
                sections += [f"{toml_key(a)} = {toml_value(b)}" for a, b in item.items()]
        else:
            lines.append(f"{toml_key(k)} = {toml_value(v)}")
    return "\n".join(lines + sections) + "\n"


# ---------------------------------------------------------------------------------------------
# Mutations


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path (dict keys and list indexes) in ``node``, tables included."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in items:
        out.append((*prefix, k))
        if isinstance(v, dict | list):
            out += paths(v, (*prefix, k))
    return out


scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.booleans(),
    st.sampled_from(["0", "-1", "1e400", "4 parsecs", "10ms", "1KiB", "none", "", " ", "sda9"]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=6), scalars, max_size=2),
)


def get(doc: Any, path: tuple) -> Any:
    for k in path:
        doc = doc[k]
    return doc


@st.composite
def mutated(draw: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        live = paths(doc)
        if not live:
            break
        path = draw(st.sampled_from(live))
        parent = get(doc, path[:-1])
        kind = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if kind == "replace":
            parent[path[-1]] = draw(values)
        elif kind == "delete":
            del parent[path[-1]]
        else:
            target = get(doc, path) if isinstance(get(doc, path), dict) else parent
            if isinstance(target, dict):
                target[draw(st.text(min_size=1, max_size=8))] = draw(scalars)
            else:
                target.append(draw(values))
    return doc


def load(text: str) -> tuple[str, Scenario | ScenarioError]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "scenario.toml"
        path.write_text(text, encoding="utf-8")
        try:
            result: Scenario | ScenarioError = open_scenario(str(path))
        except ScenarioError as exc:
            result = exc
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                status = main(["sim", str(path)])
            assert status == 2
            assert err.getvalue() == f"ioband sim: {exc}\n"
            assert "Traceback" not in err.getvalue()
        return str(path), result


@given(mutated())
def test_malformed_scenarios_name_the_file_the_key_and_the_rule(doc):
    path, result = load(to_toml(doc))
    if isinstance(result, Scenario):
        return  # the mutation happened to be valid
    assert result.source == path
    assert result.key, f"no key in {result}"
    assert result.rule
    assert str(result) == f"{path}: {result.key}: {result.rule}"
    # the key is a path into the document, e.g. workload[0].phase[1].stop
    assert any(result.key.startswith(top) for top in {*doc, *BASE}), result.key


@given(st.text(max_size=40))
def test_syntax_errors_name_the_file(garbage):
    path, result = load(to_toml(BASE) + garbage + "\n")
    if isinstance(result, ScenarioError):
        assert result.source == path and str(result).startswith(f"{path}: ")
        assert result.rule


def test_the_base_document_is_valid():
    _, result = load(to_toml(BASE))
    assert isinstance(result, Scenario), result
    assert result.scheduler == "sfq" and result.windows == (1.0, 2.0)
