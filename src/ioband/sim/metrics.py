"""Fairness metrics of a run (formulas: ``peers-and-metrics.md`` M1-M4), over time windows.

Groups are the scheduler's groups (a device's default group or an attached id). Weights come from
the devices' final ``table`` lines: groups whose devices name the same device-group id form one
*pool* and compete by weight. A group is *active* in a window when one of its workloads is in an
on-phase for the whole window; shares are owed to active groups only:

- share of group i: ``s_i = x_i / sum_j x_j`` over the pool's active groups, x in IOs or bytes;
  target ``phi_i = w_i / sum_j w_j``; **max relative error** ``max_i |s_i - phi_i| / phi_i``
  (the pool's unit: bytes under ``weight-iosize``, IOs otherwise; both are reported);
- **weighted Jain index** ``J = (sum x_i/w_i)^2 / (n * sum (x_i/w_i)^2)`` (1 = perfect, 1/n worst);
- **efficiency** ``eta`` = bytes completed with control / bytes completed by the same workload
  under ``scheduler = "none"`` (both runs done);
- **range-bw**: per group, the fraction of active windows in which it got at least its min
  (KB/s, 1 KB = 1024 bytes) and the largest excess over its max;
- **latency** per workload: p50/p99/p99.9 of completion latency and of the delay inside the
  scheduler (submit -> issued).

Windows cover ``[k*W, (k+1)*W)`` for the whole windows that fit the run (a trailing part is
dropped). ``simulator.analyse`` runs a scenario (and its ``none`` twin) and attaches
``metrics``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ioband.core.grammar import parse_group_param, parse_range, parse_table, parse_weight
from ioband.errors import IobandError
from ioband.sim.results import GroupResult, Result, percentile

WEIGHT_POLICIES = ("weight", "weight-iosize", "default")
KB = 1024  # range-bw's KB/s: 2 sectors per KB
DEFAULT_WEIGHT = 100


# ---------------------------------------------------------------------------------------------
# The formulas (pure functions, unit-tested against hand-computed values)


def shares(values: Mapping[str, float]) -> dict[str, float]:
    """Each value's fraction of the total (all 0 when the total is 0)."""
    total = sum(values.values())
    return {k: (v / total if total else 0.0) for k, v in values.items()}


def relative_errors(
    achieved: Mapping[str, float], weights: Mapping[str, float]
) -> dict[str, float]:
    """``|s_i - phi_i| / phi_i`` per key, with s and phi the shares of achieved and weights."""
    s = shares(achieved)
    phi = shares(weights)
    return {k: abs(s[k] - phi[k]) / phi[k] for k in weights if phi[k] > 0}


def max_relative_error(achieved: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The largest relative share error (0 = every share exactly its weight share)."""
    errors = relative_errors(achieved, weights)
    return max(errors.values()) if errors else 0.0


def jain_index(achieved: Mapping[str, float], weights: Mapping[str, float] | None = None) -> float:
    """Weighted Jain index ``(sum x_i/w_i)^2 / (n sum (x_i/w_i)^2)``; 1.0 for no or zero service."""
    keys = list(achieved)
    if not keys:
        return 1.0
    norm = [achieved[k] / (weights[k] if weights else 1.0) for k in keys]
    square_sum = sum(v * v for v in norm)
    if square_sum == 0:
        return 1.0
    return sum(norm) ** 2 / (len(norm) * square_sum)


def window_counts(times: Sequence[float], width: float, n: int) -> list[int]:
    """Completions in each window ``[k*width, (k+1)*width)``, k < n (``times`` sorted)."""
    edges = [bisect_left(times, k * width) for k in range(n + 1)]
    return [edges[k + 1] - edges[k] for k in range(n)]


def whole_windows(duration: float, width: float) -> int:
    """How many whole windows of ``width`` fit ``duration`` (float-tolerant)."""
    return max(0, math.floor(duration / width + 1e-9))


def summary(values: Sequence[float]) -> dict[str, float | None]:
    """mean, p50, p99 (nearest rank), min and max of a series (None when empty)."""
    if not values:
        return {"mean": None, "p50": None, "p99": None, "min": None, "max": None}
    ordered = sorted(values)
    return {
        "mean": sum(ordered) / len(ordered),
        "p50": percentile(ordered, 50),
        "p99": percentile(ordered, 99),
        "min": ordered[0],
        "max": ordered[-1],
    }


def efficiency(controlled: Result, uncontrolled: Result) -> dict[str, float | None]:
    """eta: the controlled run's completions over the uncontrolled run's, by bytes (``eta``), by
    IOs and by disk busy time (``eta_util``: the fair measure when control changes the mix of
    request sizes, e.g. weight-iosize)."""
    cb = sum(w.bytes for w in controlled.workloads)
    ub = sum(w.bytes for w in uncontrolled.workloads)
    ci = sum(w.ios for w in controlled.workloads)
    ui = sum(w.ios for w in uncontrolled.workloads)
    cu = sum(d.utilization for d in controlled.disks.values())
    uu = sum(d.utilization for d in uncontrolled.disks.values())
    return {
        "baseline": uncontrolled.scenario.scheduler,
        "bytes": cb,
        "baseline_bytes": ub,
        "eta": cb / ub if ub else None,
        "eta_ios": ci / ui if ui else None,
        "eta_util": cu / uu if uu else None,
    }


# ---------------------------------------------------------------------------------------------
# Groups, pools and their configuration


@dataclass
class GroupInfo:
    """A group with its configuration and the workloads it served."""

    result: GroupResult
    pool: str | None
    policy: str | None
    weight: float | None  # weight policies
    band: tuple[int, int] | None  # range-bw (min, max) KB/s
    phases: list[tuple[float, float]] = field(default_factory=list)  # union of its workloads'

    @property
    def key(self) -> str:
        return self.result.key


def table_values(table: str) -> tuple[str, str, dict[int, str]] | None:
    """(device-group id, policy, group id -> value text) from a table line, or None."""
    try:
        spec = parse_table(table)
    except IobandError:
        return None
    values: dict[int, str] = {}
    if spec.default_param is not None:
        values[-1] = spec.default_param
    for word in spec.groups:
        try:
            gid, value = parse_group_param(word)
        except IobandError:
            return None
        values[gid] = value
    return spec.group_name, spec.policy, values


def group_infos(result: Result) -> list[GroupInfo]:
    sc = result.scenario
    duration = result.duration
    tables = {name: table_values(d.table) for name, d in result.devices.items()}
    specs = {w.name: w for w in sc.workloads}
    out = []
    for g in result.groups:
        parsed = tables.get(g.device)
        pool = policy = None
        weight = None
        band = None
        if parsed is not None:
            pool, policy, values = parsed
            text = values.get(g.id)
            try:
                if policy in WEIGHT_POLICIES:
                    if text is not None or g.id == -1:
                        w = parse_weight(text)
                        weight = float(DEFAULT_WEIGHT if w is None else w)
                elif policy == "range-bw" and text is not None:
                    band = parse_range(text)
            except IobandError:
                pass
        phases: list[tuple[float, float]] = []
        for name in g.times:
            spec = specs.get(name)
            if spec is None:
                continue
            for start, stop in spec.on_phases:
                phases.append((start, duration if stop is None else min(stop, duration)))
        out.append(GroupInfo(g, pool, policy, weight, band, sorted(phases)))
    return out


def covers(phases: Sequence[tuple[float, float]], a: float, b: float) -> bool:
    """True when one phase covers all of ``[a, b)`` (phases of one group may overlap)."""
    eps = 1e-9
    return any(start <= a + eps and stop >= b - eps for start, stop in phases)


# ---------------------------------------------------------------------------------------------
# The metrics document


def compute(
    result: Result, baseline: Result | None = None, windows: Sequence[float] | None = None
) -> dict[str, Any]:
    """The ``metrics`` document of ``result`` (``baseline``: the same workload, no control)."""
    widths = tuple(windows if windows is not None else result.scenario.windows)
    infos = group_infos(result)
    doc: dict[str, Any] = {
        "windows": list(widths),
        "groups": [
            {
                "key": i.key,
                "device": i.result.device,
                "id": i.result.id,
                "pool": i.pool,
                "policy": i.policy,
                **({"weight": i.weight} if i.weight is not None else {}),
                **({"band_kbps": list(i.band)} if i.band is not None else {}),
                "workloads": list(i.result.times),
                "ios": i.result.ios,
                "bytes": i.result.bytes,
            }
            for i in infos
        ],
        "pools": pool_metrics(result, infos, widths),
        "range_bw": range_bw_metrics(result, infos, widths),
        "efficiency": efficiency(result, baseline) if baseline is not None else None,
        "latency": {
            w.name: {
                "p50": w.latency_p50,
                "p99": w.latency_p99,
                "p999": w.latency_p999,
                "delay_p50": w.delay_p50,
                "delay_p99": w.delay_p99,
                "delay_p999": w.delay_p999,
            }
            for w in result.workloads
        },
    }
    return doc


def counts(info: GroupInfo, width: float, n: int) -> tuple[list[int], list[int]]:
    """(IOs, bytes) per window of one group."""
    ios = [0] * n
    nbytes = [0] * n
    for name, times in info.result.times.items():
        c = window_counts(times, width, n)
        bs = info.result.block_size[name]
        for k in range(n):
            ios[k] += c[k]
            nbytes[k] += c[k] * bs
    return ios, nbytes


def pool_metrics(
    result: Result, infos: list[GroupInfo], widths: Sequence[float]
) -> list[dict[str, Any]]:
    pools: dict[str, list[GroupInfo]] = {}
    for i in infos:
        if i.pool is not None and i.weight is not None:
            pools.setdefault(i.pool, []).append(i)
    out = []
    for name, members in pools.items():
        policy = members[0].policy
        unit = "bytes" if policy == "weight-iosize" else "ios"
        entry: dict[str, Any] = {"pool": name, "policy": policy, "unit": unit}
        entry["overall"] = overall_shares(result, members, unit)
        by_window = {}
        for width in widths:
            by_window[f"{width:g}"] = windowed_shares(result, members, unit, width)
        entry["by_window"] = by_window
        out.append(entry)
    return out


def share_block(
    members: list[GroupInfo], ios: Mapping[str, float], nbytes: Mapping[str, float], unit: str
) -> dict[str, Any]:
    weights = {i.key: i.weight for i in members}
    main = nbytes if unit == "bytes" else ios
    return {
        "weight_share": shares(weights),
        "io_share": shares(ios),
        "byte_share": shares(nbytes),
        "rel_error": relative_errors(main, weights),
        "max_rel_error": max_relative_error(main, weights),
        "max_rel_error_ios": max_relative_error(ios, weights),
        "max_rel_error_bytes": max_relative_error(nbytes, weights),
        "jain": jain_index(main, weights),
    }


def overall_shares(result: Result, members: list[GroupInfo], unit: str) -> dict[str, Any]:
    """Shares over the whole run, among the groups active for all of it."""
    active = [i for i in members if covers(i.phases, 0.0, result.duration)]
    doc: dict[str, Any] = {"groups": [i.key for i in active]}
    if active:
        ios = {i.key: float(i.result.ios) for i in active}
        nbytes = {i.key: float(i.result.bytes) for i in active}
        doc.update(share_block(active, ios, nbytes, unit))
    return doc


def windowed_shares(
    result: Result, members: list[GroupInfo], unit: str, width: float
) -> dict[str, Any]:
    n = whole_windows(result.duration, width)
    per = {i.key: counts(i, width, n) for i in members}
    errors: list[float | None] = []
    jains: list[float | None] = []
    for k in range(n):
        a, b = k * width, (k + 1) * width
        active = [i for i in members if covers(i.phases, a, b)]
        if len(active) < 1:
            errors.append(None)
            jains.append(None)
            continue
        weights = {i.key: i.weight for i in active}
        main = {i.key: float(per[i.key][1 if unit == "bytes" else 0][k]) for i in active}
        errors.append(max_relative_error(main, weights))
        jains.append(jain_index(main, weights))
    return {
        "windows": n,
        "max_rel_error": summary([e for e in errors if e is not None]),
        "jain": summary([j for j in jains if j is not None]),
        "series": {"max_rel_error": errors, "jain": jains},
    }


def range_bw_metrics(
    result: Result, infos: list[GroupInfo], widths: Sequence[float]
) -> list[dict[str, Any]]:
    out = []
    for i in infos:
        if i.band is None:
            continue
        lo, hi = i.band
        entry: dict[str, Any] = {"group": i.key, "min_kbps": lo, "max_kbps": hi, "by_window": {}}
        for width in widths:
            n = whole_windows(result.duration, width)
            _, nbytes = counts(i, width, n)
            rates = [
                nbytes[k] / KB / width
                for k in range(n)
                if covers(i.phases, k * width, (k + 1) * width)
            ]
            met = sum(1 for r in rates if r >= lo)
            over = [r - hi for r in rates if hi and r > hi]
            worst = max(over, default=0.0)
            entry["by_window"][f"{width:g}"] = {
                "windows": len(rates),
                "min_met": met / len(rates) if rates else None,
                "windows_over_max": len(over),
                "max_excess_kbps": worst,
                "max_excess_bytes": worst * KB * width,
                "kbps": summary(rates),
            }
        out.append(entry)
    return out


def text_lines(metrics: Mapping[str, Any]) -> list[str]:
    """A few human lines: per pool share error and Jain per window, eta, range-bw conformance."""
    lines = []
    for p in metrics["pools"]:
        o = p["overall"]
        head = f"pool {p['pool']} ({p['policy']}, shares of {p['unit']}):"
        if "max_rel_error" in o:
            head += f" whole run max error {100 * o['max_rel_error']:.1f} %, Jain {o['jain']:.4f}"
        lines.append(head)
        for width, w in p["by_window"].items():
            e, j = w["max_rel_error"], w["jain"]
            if e["mean"] is None:
                continue
            lines.append(
                f"  {width} s windows ({w['windows']}): max error mean {100 * e['mean']:.1f} %,"
                f" worst {100 * e['max']:.1f} %; Jain mean {j['mean']:.4f}, min {j['min']:.4f}"
            )
    for r in metrics["range_bw"]:
        for width, w in r["by_window"].items():
            if w["min_met"] is None:
                continue
            lines.append(
                f"range-bw {r['group']} {r['min_kbps']}:{r['max_kbps']} KB/s, {width} s windows:"
                f" min met in {100 * w['min_met']:.1f} %, largest excess over max"
                f" {w['max_excess_kbps']:.0f} KB/s"
            )
    eff = metrics.get("efficiency")
    if eff and eff["eta"] is not None:
        lines.append(
            f"efficiency eta = {eff['eta']:.3f} (bytes vs scheduler 'none'; by IOs"
            f" {eff['eta_ios']:.3f}, by disk busy time {eff['eta_util']:.3f})"
        )
    return lines
