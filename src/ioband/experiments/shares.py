"""What the weight experiments share: per-group shares under each scheduler, tables and plots."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ioband.experiments.base import LABELS, Table, ms, num, pct
from ioband.experiments.plotting import COLORS, grouped_bars
from ioband.sim import Result
from ioband.sim.metrics import counts, group_infos, shares, whole_windows


def groups_of(result: Result) -> list[str]:
    """Group keys of the first weight pool, in table order."""
    assert result.metrics is not None
    pools = result.metrics["pools"]
    return list(pools[0]["overall"]["weight_share"]) if pools else []


def scheduler_summary(result: Result) -> dict[str, Any]:
    """Whole-run shares, windowed errors, Jain, eta and latency of one run."""
    assert result.metrics is not None
    m = result.metrics
    pool = m["pools"][0]
    o = pool["overall"]
    unit_key = "byte_share" if pool["unit"] == "bytes" else "io_share"
    windows = {}
    for width, w in pool["by_window"].items():
        windows[width] = {
            "windows": w["windows"],
            "max_rel_error_mean": w["max_rel_error"]["mean"],
            "max_rel_error_worst": w["max_rel_error"]["max"],
            "jain_mean": w["jain"]["mean"],
            "jain_min": w["jain"]["min"],
        }
    eff = m["efficiency"]
    lat: dict[str, float | None] = {}
    for g in m["groups"]:
        p99s = [m["latency"][w]["p99"] for w in g["workloads"] if m["latency"][w]["p99"]]
        lat[g["key"]] = max(p99s) if p99s else None
    return {
        "unit": pool["unit"],
        "ios": {g["key"]: g["ios"] for g in m["groups"]},
        "bytes": {g["key"]: g["bytes"] for g in m["groups"]},
        "weight_share": o["weight_share"],
        "share": o[unit_key],
        "io_share": o["io_share"],
        "byte_share": o["byte_share"],
        "rel_error": o["rel_error"],
        "max_rel_error": o["max_rel_error"],
        "jain": o["jain"],
        "windows": windows,
        "eta": eff["eta"] if eff else None,
        "eta_ios": eff["eta_ios"] if eff else None,
        "eta_util": eff["eta_util"] if eff else None,
        "disk_utilization": {d.name: d.utilization for d in result.disks.values()},
        "latency_p99": lat,
    }


def label(sch: str) -> str:
    return LABELS.get(sch, sch)


def achieved(s: Mapping[str, Any], unit: str | None) -> tuple[dict[str, float], dict[str, float]]:
    """(share, relative error) per group, of ``unit`` (``bytes``/``ios``; None: the pool's)."""
    if unit is None:
        return s["share"], s["rel_error"]
    share = s["byte_share" if unit == "bytes" else "io_share"]
    ws = s["weight_share"]
    return share, {k: abs(share[k] - ws[k]) / ws[k] for k in ws if ws[k]}


def share_table(
    title: str,
    summaries: Mapping[str, dict[str, Any]],
    labels: Mapping[str, str],
    unit: str | None = None,
    errors: bool = True,
) -> Table:
    """One row per group: its weight share and, per scheduler, the share it achieved (and its
    error relative to the weight share)."""
    first = next(iter(summaries.values()))
    shown = unit or first["unit"]
    cols = ["group", f"weight share of {'bytes' if shown == 'bytes' else 'IOs'}"]
    if not errors:
        cols[1] = "weight share"
    cols += [f"{label(sch)}: share{' (error)' if errors else ''}" for sch in summaries]
    rows = []
    for key, target in first["weight_share"].items():
        row = [labels.get(key, key), pct(target)]
        for s in summaries.values():
            share, err = achieved(s, unit)
            row.append(
                f"{pct(share.get(key))} ({pct(err.get(key))})" if errors else pct(share.get(key))
            )
        rows.append(row)
    return Table(title, cols, rows)


def summary_table(title: str, summaries: Mapping[str, dict[str, Any]]) -> Table:
    cols = [
        "scheduler",
        "error, run",
        "error, 1 s mean",
        "1 s worst",
        "10 s worst",
        "Jain 1 s min",
        "eta bytes",
        "eta disk time",
        "p99 ms (worst)",
    ]
    rows = []
    for sch, s in summaries.items():
        w1 = s["windows"].get("1", {})
        w10 = s["windows"].get("10", {})
        worst_p99 = max((v for v in s["latency_p99"].values() if v is not None), default=None)
        rows.append(
            [
                label(sch),
                pct(s["max_rel_error"]),
                pct(w1.get("max_rel_error_mean")),
                pct(w1.get("max_rel_error_worst")),
                pct(w10.get("max_rel_error_worst")),
                num(w1.get("jain_min"), ".4f"),
                num(s["eta"], ".3f") if sch != "none" else "(baseline)",
                num(s["eta_util"], ".3f") if sch != "none" else "(baseline)",
                ms(worst_p99),
            ]
        )
    return Table(title, cols, rows)


def share_series(result: Result, width: float, unit: str) -> dict[str, list[float]]:
    """Per group, its share of the pool in each window (groups active in the whole run)."""
    infos = [i for i in group_infos(result) if i.weight is not None]
    n = whole_windows(result.duration, width)
    per = {i.key: counts(i, width, n)[1 if unit == "bytes" else 0] for i in infos}
    out: dict[str, list[float]] = {k: [] for k in per}
    for k in range(n):
        s = shares({key: float(v[k]) for key, v in per.items()})
        for key in per:
            out[key].append(s[key])
    return out


def draw_share_bars(
    ax: Any,
    summaries: Mapping[str, dict[str, Any]],
    labels: Mapping[str, str],
    unit: str,
    share_unit: str | None = None,
    targets: bool = True,
) -> None:
    first = next(iter(summaries.values()))
    keys = list(first["weight_share"])
    series = {
        label(sch): [100 * achieved(s, share_unit)[0][k] for k in keys]
        for sch, s in summaries.items()
    }
    colors = {label(sch): COLORS[sch] for sch in summaries if sch in COLORS}
    grouped_bars(
        ax,
        [labels.get(k, k) for k in keys],
        series,
        colors=colors,
        targets=[100 * first["weight_share"][k] for k in keys] if targets else None,
    )
    top = max(max(v) for v in series.values())
    ax.set_ylim(0, top * 1.3)
    ax.set_ylabel(f"share of {unit} (%)")
    ax.set_title(f"achieved share of {unit} per group (whole run)")
    ax.legend(loc="upper center", ncol=4)


def draw_share_timeline(
    ax: Any,
    series: Mapping[str, list[float]],
    targets: Mapping[str, float],
    labels: Mapping[str, str],
    width: float,
    title: str,
    unit: str,
) -> None:
    for i, (key, values) in enumerate(series.items()):
        xs = [(k + 0.5) * width for k in range(len(values))]
        line = ax.plot(xs, [100 * v for v in values], marker=".", label=labels.get(key, key))
        ax.axhline(100 * targets[key], color=line[0].get_color(), linestyle="--", linewidth=0.9)
        del i
    top = max((max(v) for v in series.values() if v), default=0.5)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel(f"share of {unit} per {width:g} s window (%)")
    ax.set_title(title + " (dashed: weight share)")
    ax.set_ylim(0, 100 * top * 1.45)
    ax.legend(loc="upper center", ncol=2)
