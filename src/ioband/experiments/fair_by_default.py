"""Fair by default (issue 12): weights at default settings, on a parallel and two serial stores.

dm-ioband arbitrates only the requests it holds. With the faithful ``io_limit`` (192 for a file,
3 x nr_requests / 2) and realistic client depths it may hold nothing, and the store's own queue
decides. ``io_limit 0`` (the default) now runs the adaptive dispatch window
(``ioband.core.window``): the engine keeps in flight only what the store needs and holds the rest,
where the weights apply. This experiment puts three groups at weights 40/20/10 (uid groups of one
ioband device, every table with the default ``io_throttle 0`` and ``io_limit 0``) on three device
models, under three settings:

- **no control**: the FIFO pass-through (``scheduler none``), the baseline of eta;
- **faithful**: the same table with ``io_limit 192`` pinned (dm-ioband's fixed limit);
- **adaptive**: the default table (``io_limit 0``).

Models: the SSD model (32 requests in parallel), the HDD model (one head, FIFO), and a serial
throttle-like store (the ``fixed`` model with queue depth 1 at 1,500 IOPS, like the throttled loop
device of issue 12). Depth mixes: one client per group at depths 4/4/4 and 1/8/32 (the mixes of
the real-I/O test ``tests/test_fair_by_default.py``); ``CLIENTS`` clients per group at 4/4/4
(every group able to use its share of the SSD's 32 slots) and 1/4/32; and an equal-weight pair,
one QD1 client against one QD32 client, the case that needs anticipation (idling for a shallow
synchronous client).
"""

from __future__ import annotations

from typing import Any

from ioband.experiments.base import (
    Context,
    Outcome,
    Table,
    by_workload,
    num,
    pct,
    scenario,
    share_summary,
)
from ioband.experiments.plotting import COLORS, PALETTE, draw
from ioband.sim import Result, Scenario
from ioband.sim import run as simulate
from ioband.sim.metrics import efficiency

NAME = "fair-by-default"
TITLE = "Fair by default: weights 40/20/10 at default settings on an SSD, an HDD and a throttle"

#: Device models: (key, label, disk parameters, full duration, quick duration).
MODELS: tuple[tuple[str, str, dict[str, Any], float, float], ...] = (
    ("ssd", "SSD (32 parallel, 8,000 IOPS)",
     {"model": "ssd", "iops": 8000, "bandwidth": "250MiB", "queue_depth": 32}, 30, 10),
    ("hdd", "HDD (7,200 rpm, FIFO)", {"model": "hdd"}, 120, 30),
    ("throttle", "throttle (serial, 1,500 IOPS)",
     {"model": "fixed", "queue_depth": 1, "service_time": 1 / 1500}, 30, 10),
)  # fmt: skip
#: Clients (processes) per group in the multi-client mixes.
CLIENTS = 8
UIDS = (1000, 2000, 3000)
WEIGHTS = (40, 20, 10)
#: Cases: (key, label, weights, (processes, iodepth) per group).
CASES: tuple[tuple[str, str, tuple[int, ...], tuple[tuple[int, int], ...]], ...] = (
    ("4/4/4", "4/4/4 (one client each)", WEIGHTS, ((1, 4),) * 3),
    ("8x4/4/4", f"4/4/4 ({CLIENTS} clients each)", WEIGHTS, ((CLIENTS, 4),) * 3),
    ("8x1/4/32", f"1/4/32 ({CLIENTS} clients each)", WEIGHTS,
     ((CLIENTS, 1), (CLIENTS, 4), (CLIENTS, 32))),
    ("1/8/32", "1/8/32 (one client each)", WEIGHTS, ((1, 1), (1, 8), (1, 32))),
    ("1v32", "1 vs 32, equal weights (one client each)", (10, 10), ((1, 1), (1, 32))),
)  # fmt: skip
#: Settings: (key, label, scheduler, io_limit in the table).
SETTINGS = (
    ("none", "no control", "none", 0),
    ("faithful", "faithful (io_limit 192)", "ioband", 192),
    ("adaptive", "adaptive (default)", "ioband", 0),
    ("mclock", "mclock, adaptive (default)", "ioband", 0),
)
SERIAL = ("hdd", "throttle")  # one request at a time: a QD1 client can be given half


def table_line(weights: tuple[int, ...], io_limit: int, policy: str = "weight") -> str:
    """One ioband device, uid groups; ``io_throttle 0`` (default) and the given io_limit;
    the weight policy, or mclock with the same weights (no reservation, no limit)."""
    if policy == "mclock":
        groups = " ".join(f"{uid}:0:{w}:0" for uid, w in zip(UIDS, weights))
        return f"0 83886080 ioband sda1 1 0 {io_limit} user mclock iops :0:100:0 {groups}"
    groups = " ".join(f"{uid}:{w}" for uid, w in zip(UIDS, weights))
    return f"0 83886080 ioband sda1 1 0 {io_limit} user weight 0 :100 {groups}"


def build(ctx: Context, model: str, case: str, io_limit: int, policy: str = "weight") -> Scenario:
    _, _, disk, full, quick = next(m for m in MODELS if m[0] == model)
    _, _, weights, groups = next(c for c in CASES if c[0] == case)
    workloads = [
        {"name": f"g{i + 1}", "device": "ioband1", "uid": UIDS[i], "processes": procs,
         "iodepth": depth, "pattern": "randread", "direct": True}
        for i, (procs, depth) in enumerate(groups)
    ]  # fmt: skip
    return scenario(
        f"fair-{model}-{case.replace('/', '-')}",
        duration=ctx.dur(full, quick),
        seed=ctx.seed,
        disks=[{"name": "sda", **disk}],
        devices=[
            {"name": "ioband1", "disk": "sda", "table": table_line(weights, io_limit, policy)}
        ],
        workloads=workloads,
        windows=[1.0],
    )


def first_second(result: Result) -> float:
    """IOs completed in the first 1 s timeline bucket."""
    return float(sum(w.timeline_ios[0] for w in result.workloads if w.timeline_ios))


def measure(result: Result, base: Result, weights: tuple[int, ...]) -> dict[str, Any]:
    ios = by_workload(result)
    summary = share_summary(ios, {f"g{i + 1}": float(w) for i, w in enumerate(weights)})
    eff = efficiency(result, base)
    head = first_second(base)
    return {
        "ios": ios,
        "share": summary["share"],
        "max_rel_error": summary["max_rel_error"],
        "jain": summary["jain"],
        "eta": eff["eta"],
        "eta_first_second": first_second(result) / head if head else None,
        "utilization": result.disks["sda"].utilization,
        "iops": sum(ios.values()) / result.duration,
    }


def run_all(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model, *_ in MODELS:
        rows: dict[str, Any] = {}
        for case, _, weights, _ in CASES:
            base = simulate(build(ctx, model, case, 0).with_overrides(scheduler="none"))
            row = {}
            for key, _, sch, limit in SETTINGS:
                policy = "mclock" if key == "mclock" else "weight"
                r = base if sch == "none" else simulate(build(ctx, model, case, limit, policy))
                row[key] = measure(r, base, weights)
            rows[case] = row
        out[model] = rows
    return out


def shares_text(d: dict[str, Any]) -> str:
    return " / ".join(f"{100 * s:.1f}" for s in d["share"].values())


def run(ctx: Context) -> Outcome:
    data = run_all(ctx)
    durations = {m: ctx.dur(full, quick) for m, _, _, full, quick in MODELS}
    out = Outcome(
        data={
            "clients_per_group": CLIENTS,
            "durations": durations,
            "weights": {c: list(w) for c, _, w, _ in CASES},
            "models": {m: dict(p) for m, _, p, _, _ in MODELS},
            "results": data,
        }
    )
    for case, case_label, weights, groups in CASES:
        target = " : ".join(str(w) for w in weights)
        depths = "/".join(f"{p}x{d}" for p, d in groups)
        rows = []
        for model, model_label, *_ in MODELS:
            for key, set_label, *_ in SETTINGS:
                d = data[model][case][key]
                rows.append([
                    model_label if key == "none" else "",
                    set_label,
                    shares_text(d),
                    pct(d["max_rel_error"]),
                    "(baseline)" if key == "none" else num(d["eta"], ".3f"),
                    "-" if key == "none" else num(d["eta_first_second"], ".2f"),
                    pct(d["utilization"]),
                ])  # fmt: skip
        out.tables.append(
            Table(
                f"{case_label}: weights {target}, clients x depth {depths}; shares of IOs (%), "
                f"max relative error vs the weight shares, eta vs no control",
                ["model", "setting", "shares (%)", "max error", "eta", "eta 1st s", "disk busy"],
                rows,
            )
        )

    for model, *_ in MODELS:
        d = data[model]["8x4/4/4"]["adaptive"]
        out.check(
            f"adaptive default, 4/4/4 with {CLIENTS} clients per group on the {model} model: "
            f"shares within 10 % (relative) of 4:2:1 with eta >= 0.95",
            d["max_rel_error"] <= 0.10 and d["eta"] >= 0.95,
            f"shares {shares_text(d)} %, max error {pct(d['max_rel_error'])}, eta {d['eta']:.3f}",
        )
    for model in SERIAL:
        d = data[model]["4/4/4"]["adaptive"]
        out.check(
            f"adaptive default, 4/4/4 with one client per group on the {model} model: shares "
            f"within 10 % (relative) of 4:2:1 with eta >= 0.95",
            d["max_rel_error"] <= 0.10 and d["eta"] >= 0.95,
            f"shares {shares_text(d)} %, max error {pct(d['max_rel_error'])}, eta {d['eta']:.3f}",
        )
    for model in SERIAL:
        d = data[model]["1v32"]["adaptive"]
        out.check(
            f"adaptive default, one QD1 client against one QD32 client at equal weights on the "
            f"{model} model: the QD1 client gets >= 40 % with eta >= 0.95 (anticipation)",
            d["share"]["g1"] >= 0.40 and d["eta"] >= 0.95,
            f"QD1 client {pct(d['share']['g1'])} (eta {d['eta']:.3f}); faithful "
            f"{pct(data[model]['1v32']['faithful']['share']['g1'])}, no control "
            f"{pct(data[model]['1v32']['none']['share']['g1'])}",
        )
    # Issue 12's 1/8/32 target: met on some models and seeds, not all; reported, not checked.
    open_targets = []
    for model in SERIAL:
        row = [f"1/8/32, one client per group, {model}", "within 10 % of 4:2:1, eta >= 0.95"]
        for key in ("adaptive", "mclock"):
            d = data[model]["1/8/32"][key]
            row.append(f"{shares_text(d)} %, error {pct(d['max_rel_error'])}, eta {d['eta']:.3f}")
        open_targets.append(row)
    out.tables.append(
        Table("1/8/32 with one client each (reported, not checked: the QD1 group depends on "
              "the window settling at one and on anticipation)",
              ["case", "target", "weight, adaptive default", "mclock, adaptive default"],
              open_targets)
    )  # fmt: skip
    d = data["ssd"]["8x1/4/32"]["mclock"]
    out.check(
        "mclock (default): where the heaviest group cannot use its share (1/4/32 with "
        f"{CLIENTS} clients on the SSD), the others use it: eta >= 0.95",
        d["eta"] >= 0.95,
        f"eta {d['eta']:.3f} (weight policy: {data['ssd']['8x1/4/32']['adaptive']['eta']:.3f}), "
        f"shares {shares_text(d)} %",
    )
    nones = [data[m]["4/4/4"]["none"]["max_rel_error"] for m, *_ in MODELS]
    out.check(
        "no control ignores the weights: 4/4/4 shares follow the depths (error >= 50 %)",
        min(nones) >= 0.5,
        "max error " + " / ".join(pct(e) for e in nones) + " (SSD / HDD / throttle)",
    )

    def s(model: str, case: str, key: str) -> dict[str, Any]:
        return data[model][case][key]

    ad8 = {m: s(m, "8x4/4/4", "adaptive") for m, *_ in MODELS}
    ad1 = {m: s(m, "4/4/4", "adaptive") for m, *_ in MODELS}
    out.summary = (
        "Three uid groups of one ioband device at weights 40/20/10, every table at the "
        "defaults (io_throttle 0, io_limit 0: the adaptive window), against the FIFO "
        "pass-through (no control) and the same table with dm-ioband's io_limit 192 pinned "
        "(faithful), all reading 4 KiB blocks at random. Runs last "
        + ", ".join(f"{durations[m]:g} s ({m})" for m, *_ in MODELS)
        + f". With {CLIENTS} clients of depth 4 in every group (32 requests each, so each group "
        f"could fill the SSD's 32 slots alone) the adaptive default gives "
        f"{shares_text(ad8['ssd'])} % on the SSD (eta {ad8['ssd']['eta']:.3f}; "
        f"{ad8['ssd']['eta_first_second']:.2f} in the first second, while the window grows "
        f"from 8), {shares_text(ad8['hdd'])} % on the HDD (eta {ad8['hdd']['eta']:.3f}) and "
        f"{shares_text(ad8['throttle'])} % on the throttle (eta "
        f"{ad8['throttle']['eta']:.3f}); no control gives a third each. With one client of "
        f"depth 4 per group (the mix of the real-I/O test) it gives "
        f"{shares_text(ad1['hdd'])} % on the HDD and {shares_text(ad1['throttle'])} % on the "
        f"throttle: the window, which twelve requests never fill, comes down to twice what "
        f"the clients keep in flight and from there by probes to the store's one or two, so "
        f"requests are held and the weights apply. On the SSD "
        f"twelve requests cannot use its 32 slots: no share is owed there, no control serves "
        f"everything and ioband (either setting) costs throughput (eta "
        f"{ad1['ssd']['eta']:.3f}). The faithful limit is not the whole story in the "
        f"simulator: the weight policy's token epochs already hold the requests of groups that "
        f"used their tokens, so faithful reaches "
        f"{shares_text(s('throttle', '8x4/4/4', 'faithful'))} % on the throttle with "
        f"{CLIENTS} clients per group. Where the heaviest group cannot "
        f"use its share (1/4/32 with {CLIENTS} clients: the weight-40 group has {CLIENTS} "
        f"requests for a 32-slot SSD) both ioband settings keep the shares and lose the "
        f"throughput (eta {s('ssd', '8x1/4/32', 'faithful')['eta']:.3f} faithful, "
        f"{s('ssd', '8x1/4/32', 'adaptive')['eta']:.3f} adaptive): the token policy does not "
        f"give a group's unused share to the others while that group has requests in flight; "
        f"mclock does (eta {s('ssd', '8x1/4/32', 'mclock')['eta']:.3f}, the weight-40 group "
        f"gets all it asks for: {shares_text(s('ssd', '8x1/4/32', 'mclock'))} %). "
        f"One QD1 client against one QD32 client at equal weights gets "
        f"{pct(s('hdd', '1v32', 'adaptive')['share']['g1'])} on the HDD and "
        f"{pct(s('throttle', '1v32', 'adaptive')['share']['g1'])} on the throttle under the "
        f"adaptive default (faithful {pct(s('throttle', '1v32', 'faithful')['share']['g1'])}, "
        f"no control {pct(s('throttle', '1v32', 'none')['share']['g1'])}): when the QD1 "
        f"client's request completes and it is still owed tokens, the engine keeps a slot for "
        f"its next request for a few of its think times (anticipation), instead of giving the "
        f"store to the deep client in between. 1/8/32 with one client each gives the QD1 "
        f"client (weight 40) {pct(s('hdd', '1/8/32', 'adaptive')['share']['g1'])} on the HDD "
        f"and {pct(s('throttle', '1/8/32', 'adaptive')['share']['g1'])} on the throttle "
        f"(mclock {pct(s('hdd', '1/8/32', 'mclock')['share']['g1'])} and "
        f"{pct(s('throttle', '1/8/32', 'mclock')['share']['g1'])}), against 57 %: it is "
        f"given its share only while the window is at one and it is judged owed when its "
        f"request completes; the window's probes up (and, on the HDD, the noise of a disk at "
        f"140 IOPS) keep it at two part of the time."
    )
    out.published = (
        "Issue 12 (wave2-background.md section 1), measured on a 1,500-IOPS throttled loop "
        "device with clients keeping 24 requests outstanding: weights 4:2:1 came out 34/35/31 "
        "at the default io_limit 192, 58/29/13 with io_limit 8; for two devices in one device "
        "group, io_limit 4 gave an exact 80/20 (8 gave 73/27, 16 gave 59/41). The throttle "
        "model here has the same rate; the simulator's faithful engine already holds requests "
        "of groups that used their tokens, so it does better than that measurement."
    )

    def fig(axes: list) -> None:
        colors = {"none": COLORS["none"], "faithful": PALETTE[1], "adaptive": COLORS["ioband"],
                  "mclock": PALETTE[2]}  # fmt: skip
        xs = list(range(len(CASES)))
        width = 0.8 / len(SETTINGS)
        for ax, (model, model_label, *_) in zip(axes, MODELS):
            for i, (key, set_label, *_) in enumerate(SETTINGS):
                errs = [100 * data[model][c][key]["max_rel_error"] for c, *_ in CASES]
                pos = [x + (i - (len(SETTINGS) - 1) / 2) * width for x in xs]
                ax.bar(pos, errs, width * 0.95, color=colors[key], label=set_label)
                if key != "none":
                    for x, c, err in zip(pos, CASES, errs):
                        e = data[model][c[0]][key]["eta"]
                        ax.text(x, min(err, 170) + 3, f"{e:.2f}", rotation=90, ha="center",
                                va="bottom", fontsize=6)  # fmt: skip
            ax.axhline(10, color="black", linestyle=":", linewidth=1, label="10 % error")
            ax.set_xticks(xs, [c for c, *_ in CASES])
            ax.set_ylim(0, 220)
            ax.set_xlabel("client depths (1v32: equal weights)")
            ax.set_ylabel("max relative share error (%); above bars: eta")
            ax.set_title(model_label)
            ax.legend(loc="upper center", ncol=2, fontsize=7)

    out.figures = [(f"{NAME}.png", lambda path: draw(path, fig, ncols=3, width=13.5))]
    return out
