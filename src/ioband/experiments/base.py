"""What an experiment is and what it hands back, plus the helpers experiments share.

An experiment is a module with ``NAME``, ``TITLE`` and ``run(ctx) -> Outcome``. It builds its
scenarios (in code, from the built-ins or from dicts), runs them under the schedulers it compares,
and returns:

- ``data``: the numbers, JSON-ready and deterministic (same seed -> byte-identical JSON; no wall
  clock in here),
- ``cost``: wall-clock/CPU figures (written to a separate ``NAME.timing.json``; never compared),
- ``tables``: what the console and the results page print,
- ``checks``: what it asserts (name, passed, detail),
- ``figures``: ``(file name, draw function)``; the runner draws them with matplotlib (Agg),
- ``summary``: one paragraph saying what it shows (Markdown), ``published``: the published
  numbers it is compared with, if any (Markdown).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ioband.sim import Result, Scenario, load_builtin, load_scenario, run
from ioband.sim.metrics import compute, efficiency, jain_index, max_relative_error, shares

SCHEDULERS = ("ioband", "sfq", "none")
LABELS = {"ioband": "ioband", "sfq": "SFQ(D)", "none": "no control"}


@dataclass(frozen=True)
class Context:
    """How to run: ``quick`` shortens every run (tests, smoke runs); ``seed`` for every scenario."""

    quick: bool = False
    seed: int = 1

    def dur(self, full: float, quick: float) -> float:
        return quick if self.quick else full


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Outcome:
    data: dict[str, Any]
    tables: list[Table] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    figures: list[tuple[str, Callable[[Any], None]]] = field(default_factory=list)
    summary: str = ""
    published: str = ""
    cost: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(ok), detail))

    def check_error(self, name: str, summary: Mapping[str, Any], limit: float) -> None:
        """A check that a scheduler's largest relative share error is at most ``limit``."""
        error = summary["max_rel_error"]
        self.check(name, error <= limit, f"max relative error {pct(error, 2)}")


# ---------------------------------------------------------------------------------------------
# Scenarios


def ssd(name: str = "sda", **params: Any) -> dict[str, Any]:
    return {"name": name, "model": "ssd", **params}


def hdd(name: str = "sda", **params: Any) -> dict[str, Any]:
    return {"name": name, "model": "hdd", **params}


def scenario(
    name: str,
    *,
    duration: float,
    seed: int,
    disks: list[dict[str, Any]],
    devices: list[dict[str, Any]],
    workloads: list[dict[str, Any]],
    description: str = "",
    windows: Sequence[float] = (1.0, 10.0),
) -> Scenario:
    return load_scenario(
        {
            "name": name,
            "description": description,
            "simulation": {"duration": duration, "seed": seed},
            "metrics": {"windows": list(windows)},
            "disk": disks,
            "device": devices,
            "workload": workloads,
        }
    )


def builtin(name: str, ctx: Context, full: float, quick: float) -> Scenario:
    return load_builtin(name).with_overrides(duration=ctx.dur(full, quick), seed=ctx.seed)


def retable(sc: Scenario, old: str, new: str) -> Scenario:
    """``sc`` with ``old`` replaced by ``new`` in every device's table line."""
    devices = tuple(replace(d, table=d.table.replace(old, new)) for d in sc.devices)
    return replace(sc, devices=devices)


def run_under(
    sc: Scenario, schedulers: Iterable[str] = SCHEDULERS, depth: int | None = None
) -> dict[str, Result]:
    """``sc`` under each scheduler; every result carries metrics (eta against the ``none`` run)."""
    out: dict[str, Result] = {}
    for sch in schedulers:
        variant = sc.with_overrides(scheduler=sch, sfq_depth=depth if sch == "sfq" else None)
        out[sch] = run(variant)
    base = out.get("none")
    for r in out.values():
        r.metrics = compute(r, base if base is not r else None)
    return out


# ---------------------------------------------------------------------------------------------
# Numbers


def by_device(result: Result, attr: str = "ios") -> dict[str, float]:
    out: dict[str, float] = {}
    for w in result.workloads:
        out[w.device] = out.get(w.device, 0) + getattr(w, attr)
    return out


def by_workload(result: Result, attr: str = "ios") -> dict[str, float]:
    return {w.name: float(getattr(w, attr)) for w in result.workloads}


def share_summary(achieved: Mapping[str, float], weights: Mapping[str, float]) -> dict[str, Any]:
    return {
        "share": shares(achieved),
        "weight_share": shares(weights),
        "max_rel_error": max_relative_error(achieved, weights),
        "jain": jain_index(achieved, weights),
    }


def pool_windows(result: Result, width: float = 1.0) -> dict[str, Any] | None:
    """The first pool's windowed share metrics at ``width`` (None if it has none)."""
    assert result.metrics is not None
    pools = result.metrics["pools"]
    if not pools:
        return None
    return pools[0]["by_window"].get(f"{width:g}")


def eta(result: Result) -> float | None:
    assert result.metrics is not None
    eff = result.metrics.get("efficiency")
    return None if eff is None else eff["eta"]


def eta_of(result: Result, baseline: Result, kind: str = "eta") -> float | None:
    return efficiency(result, baseline)[kind]


def scenario_data(sc: Scenario, summaries: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The JSON record of a scenario run under several schedulers (keys in a fixed order)."""
    return {
        "scenario": sc.name,
        "duration": sc.duration,
        "disk": dict(sc.disks[0].params),
        "schedulers": summaries,
        **extra,
    }


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f} %"


def num(x: float | None, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def ms(x: float | None) -> str:
    return "-" if x is None else f"{1000 * x:.1f}"
