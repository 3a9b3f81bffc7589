"""range-bw: min/max bands (KB/s) on a disk that can and one that cannot serve the sum of mins."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ioband.experiments.base import SCHEDULERS, Context, Outcome, Table, builtin, num, pct
from ioband.experiments.base import run_under as run_all
from ioband.experiments.plotting import PALETTE, draw
from ioband.sim import Result
from ioband.sim.metrics import KB, counts, group_infos, whole_windows

NAME = "range-bw-bands"
TITLE = "range-bw bands: minimums met when their sum fits the disk, maximums held"
LABELS = {"ioband1": "ioband1 5000:6000", "ioband1:1000": "uid 1000 10000:12000",
          "ioband2": "ioband2 900:1000", "ioband3": "ioband3 200:300"}  # fmt: skip
SHORT = {"ioband1": "ioband1", "ioband1:1000": "uid 1000", "ioband2": "ioband2",
         "ioband3": "ioband3"}  # fmt: skip
CASES = {"fits": 8000, "short": 3000}  # SSD 4 KiB IOPS: 32 000 and 12 000 KB/s


def series(result: Result, width: float = 1.0) -> dict[str, list[float]]:
    """KB/s per window, per range-bw group."""
    n = whole_windows(result.duration, width)
    out = {}
    for info in group_infos(result):
        if info.band is not None:
            out[info.key] = [b / KB / width for b in counts(info, width, n)[1]]
    return out


def case_data(results: dict[str, Result], capacity_kbps: float) -> dict[str, Any]:
    io = results["ioband"]
    assert io.metrics is not None
    groups = {}
    for g in io.metrics["range_bw"]:
        w = g["by_window"]["1"]
        block = next(
            gi["bytes"] // gi["ios"] for gi in io.metrics["groups"] if gi["key"] == g["group"]
        )
        groups[g["group"]] = {
            "min_kbps": g["min_kbps"],
            "max_kbps": g["max_kbps"],
            "kbps_mean": w["kbps"]["mean"],
            "kbps_min": w["kbps"]["min"],
            "kbps_max": w["kbps"]["max"],
            "min_met": w["min_met"],
            "windows": w["windows"],
            "windows_over_max": w["windows_over_max"],
            "max_excess_kbps": w["max_excess_kbps"],
            "batch_kb": block / KB,  # one request: what may cross the max in a period
            "per_scheduler_kbps": {
                sch: next(x["bytes"] for x in r.metrics["groups"] if x["key"] == g["group"])
                / KB
                / r.duration
                for sch, r in results.items()
                if r.metrics is not None
            },
        }
    eff = io.metrics["efficiency"]
    return {
        "capacity_kbps": capacity_kbps,
        "sum_min_kbps": sum(g["min_kbps"] for g in groups.values()),
        "groups": groups,
        "eta": eff["eta"] if eff else None,
        "ioband_kbps_per_second": series(io),
    }


def run(ctx: Context) -> Outcome:
    base = builtin("range-bw", ctx, 20, 3)
    cases: dict[str, Any] = {}
    for case, iops in CASES.items():
        disk = replace(base.disks[0], params={**base.disks[0].params, "iops": iops})
        sc = replace(base, disks=(disk,))
        cases[case] = case_data(run_all(sc, SCHEDULERS), iops * 4)
    out = Outcome(data={"scenario": base.name, "duration": base.duration, "cases": cases})
    for case, title in (
        ("fits", "sum of mins 16 100 KB/s fits the disk (32 000 KB/s)"),
        ("short", "sum of mins 16 100 KB/s does not fit the disk (12 000 KB/s)"),
    ):
        c = cases[case]
        rows = []
        for key, g in c["groups"].items():
            rows.append(
                [
                    LABELS.get(key, key),
                    num(g["kbps_mean"]),
                    f"{num(g['kbps_min'])} - {num(g['kbps_max'])}",
                    pct(g["min_met"]),
                    f"{g['windows_over_max']}/{g['windows']}",
                    num(g["max_excess_kbps"], ".1f"),
                    num(g["per_scheduler_kbps"]["sfq"]),
                    num(g["per_scheduler_kbps"]["none"]),
                ]
            )
        out.tables.append(
            Table(
                f"{title}: KB/s per 1 s window under ioband (eta {c['eta']:.3f})",
                ["group (band KB/s)", "mean", "min - max", "min met", "windows over max",
                 "largest excess", "SFQ(D) mean", "no control mean"],
                rows,
            )
        )  # fmt: skip
    fits = cases["fits"]["groups"]
    worst_met = min(g["min_met"] for g in fits.values())
    out.check(
        "sum of mins fits: every min met in >= 99 % of 1 s windows",
        worst_met >= 0.99,
        f"worst group meets its min in {pct(worst_met)} of windows",
    )
    over = {k: (g["max_excess_kbps"], g["batch_kb"]) for k, g in fits.items()}
    out.check(
        "sum of mins fits: no max exceeded by more than one period's batch (one request)",
        all(x <= b + 1e-9 for x, b in over.values()),
        "largest excess " + ", ".join(f"{SHORT[k]} {x:.1f} KB/s" for k, (x, _) in over.items()),
    )
    short = cases["short"]["groups"]
    big = [k for k, g in short.items() if g["min_met"] < 0.99]
    out.summary = (
        f"On a disk that can serve the sum of the minimums, every group gets at least its min in "
        f"{pct(worst_met)} of the 1 s windows and is held at its max: the four groups run at "
        f"{' / '.join(num(g['kbps_mean']) for g in fits.values())} KB/s against maxima of "
        f"6000 / 12000 / 1000 / 300. The only excess is the one request that crosses the max "
        f"in each 1 s period (range-bw charges a request before it stops the group), e.g. "
        f"ioband3 at {num(fits['ioband3']['kbps_max'])} KB/s. Efficiency "
        f"eta = {cases['fits']['eta']:.3f} is the caps at work (sum of the maxima 19 300 KB/s). "
        f"When the disk cannot serve the sum of the minimums (12 000 KB/s), the shortage is not "
        f"spread over everyone: ioband2 and ioband3 still reach their *maximum*, while "
        f"{' and '.join(SHORT[k] for k in big)} get "
        f"{' and '.join(pct(short[k]['kbps_mean'] / short[k]['min_kbps']) for k in big)} of "
        f"their min (the dm-ioband documentation warns that the sum of mins must fit). "
        f"eta = {cases['short']['eta']:.3f} here is the workload's limit: once ioband2/3 sleep "
        f"at their max, the 24 remaining processes (iodepth 1) cannot fill the SSD's 32 slots. "
        f"SFQ(D) (weights = the mins, no caps) is no band controller: with D = 32 and only 36 "
        f"requests outstanding it can reorder just 4 of them, so it ends close to no control "
        f"(ioband3 at {num(fits['ioband3']['per_scheduler_kbps']['sfq'])} KB/s against a max "
        f"of 300)."
    )
    out.published = (
        "The documentation's bands (-1:5000:6000, 1000:10000:12000, -1:900:1000, -1:200:300 "
        "KB/s; dm-ioband-interface.md section 7.1) and its warning that the sum of the minimums "
        "must not exceed what the device can do; no measurements were published."
    )

    def panel(ax: Any, case: str, title: str) -> None:
        c = cases[case]
        for i, (key, values) in enumerate(c["ioband_kbps_per_second"].items()):
            g = c["groups"][key]
            color = PALETTE[i % len(PALETTE)]
            xs = [k + 0.5 for k in range(len(values))]
            ax.plot(xs, values, marker=".", color=color, label=LABELS.get(key, key))
            ax.axhspan(g["min_kbps"], g["max_kbps"], color=color, alpha=0.15)
        ax.set_yscale("log")
        ax.set_xlabel("virtual time (s)")
        ax.set_ylabel("KB/s per 1 s window (log scale)")
        ax.set_title(title)
        ax.set_ylim(100, 60000)
        ax.legend(loc="upper center", ncol=2, title="shaded: the group's band (min..max)")

    def fig(axes: list) -> None:
        panel(axes[0], "fits", "ioband: sum of mins fits (disk 32 000 KB/s)")
        panel(axes[1], "short", "ioband: sum of mins does not fit (disk 12 000 KB/s)")

    out.figures = [(f"{NAME}.png", lambda path: draw(path, fig))]
    return out
