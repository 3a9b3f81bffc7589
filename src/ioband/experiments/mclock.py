"""mclock: reservations met while weights share the rest; limits held; a cap's burst, then the cap.

The same three 4 KiB random readers on a 20,000 IOPS SSD under three policies: ``mclock``
(reservation, weight, limit, caps), ``weight`` (shares only) and ``range-bw`` (KB/s bands), each
set to express the same intent as far as it can. Everything is counted per 1 s window after a
warm-up window.
"""

from __future__ import annotations

from typing import Any

from ioband.experiments.base import Context, Outcome, Table, num, pct, scenario, ssd
from ioband.experiments.plotting import COLORS, PALETTE, draw
from ioband.sim import run as simulate

NAME = "mclock"
TITLE = "mclock: reservation + weights, limits, a cap with its burst; beside weight and range-bw"
IOPS = 20000
KB = 4  # KiB per request: range-bw bands are in KB/s

# Intent of case 1: g1 is guaranteed 30 % (6,000 IOPS); g2 and g3 share the rest 1:4.
RESERVE_TABLES = {
    "mclock": "mclock iops :0:1:0 1001:6000:1:0 1002:0:1:0 1003:0:4:0",
    "weight": "weight 0 :1 1001:1 1002:1 1003:4",
    "range-bw": f"range-bw 0 :0:0 1001:{6000 * KB}:0 1002:0:0 1003:0:0",
}
# Intent of case 2: g1 reserved 6,000; g2 limited to 1,500 IOPS; g3 capped at 2,500 IOPS with a
# burst of 500 requests, idle for the first 3 s (its bucket fills), then busy.
LIMIT, CAP, BURST, G3_START = 1500, 2500, 500, 3.0
CAP_TABLES = {
    "mclock": (
        f"mclock iops :0:1:0 1001:6000:1:0 1002:0:1:{LIMIT}"
        f" 1003:0:4:0:riops={CAP},riops_burst={BURST}"
    ),
    "weight": "weight 0 :1 1001:1 1002:1 1003:4",
    "range-bw": f"range-bw 0 :0:0 1001:{6000 * KB}:0 1002:0:{LIMIT * KB} 1003:0:{CAP * KB}",
}


def build(ctx: Context, policy_args: str, g3_start: float = 0.0) -> Any:
    duration = ctx.dur(8.0, 5.0)
    return scenario(
        "mclock",
        duration=duration,
        seed=ctx.seed,
        disks=[ssd(iops=IOPS, bandwidth="500MiB", queue_depth=32)],
        devices=[{"name": "d", "disk": "sda",
                  "table": f"0 20971520 ioband sda 1 0 0 user {policy_args}"}],
        workloads=[{"name": f"g{i}", "device": "d", "uid": 1000 + i, "iodepth": 64,
                    "pattern": "randread", "direct": True,
                    **({"start": g3_start} if i == 3 and g3_start else {})}
                   for i in (1, 2, 3)],
        windows=[1.0],
    )  # fmt: skip


def timelines(sc: Any) -> dict[str, list[int]]:
    result = simulate(sc.with_overrides(scheduler="ioband"))
    return {w.name: list(w.timeline_ios) for w in result.workloads}


def reserve_case(ctx: Context) -> dict[str, Any]:
    out = {}
    for policy, args in RESERVE_TABLES.items():
        tl = timelines(build(ctx, args))
        windows = list(zip(tl["g1"], tl["g2"], tl["g3"], strict=True))[1:]  # after warm-up
        met = sum(1 for a, _, _ in windows if a >= 6000 * 0.99) / len(windows)
        ratio_err = max(abs(c / max(1, b) / 4 - 1) for _, b, c in windows)
        total = [sum(w) for w in windows]
        out[policy] = {
            "reservation_met": met,
            "g1_share": sum(a for a, _, _ in windows) / sum(total),
            "g2_g3_ratio_error": ratio_err,
            "iops": sum(total) / len(total),
            "timeline": tl,
        }
    return out


def cap_case(ctx: Context) -> dict[str, Any]:
    out = {}
    start = int(G3_START)
    for policy, args in CAP_TABLES.items():
        tl = timelines(build(ctx, args, G3_START))
        g2 = tl["g2"][1:]
        g3 = tl["g3"][start:]  # from the window it starts in
        out[policy] = {
            "g2_max": max(g2),
            "g2_mean": sum(g2) / len(g2),
            "g3_first": g3[0],
            "g3_after": max(g3[1:]),
            "g3_steady": sum(g3[1:]) / len(g3[1:]),
            "reservation_met": sum(1 for a in tl["g1"][1:] if a >= 6000 * 0.99) / len(tl["g1"][1:]),
            "timeline": tl,
        }
    return out


def run(ctx: Context) -> Outcome:
    data = {"reserve": reserve_case(ctx), "caps": cap_case(ctx)}
    out = Outcome(data=data)
    res, caps = data["reserve"], data["caps"]
    out.tables.append(
        Table(
            "case 1: g1 reserved 30 % (6,000 IOPS) with weight 1, g2 and g3 weights 1 and 4 "
            "(per 1 s window after a warm-up second)",
            ["policy", "windows with g1 >= its reservation", "g1 share",
             "g3:g2 vs 4:1 (worst window)", "total IOPS"],
            [[p, pct(r["reservation_met"]), pct(r["g1_share"]), pct(r["g2_g3_ratio_error"], 2),
              num(r["iops"])] for p, r in res.items()],
        )
    )  # fmt: skip
    out.tables.append(
        Table(
            f"case 2: g2 limited to {LIMIT:,} IOPS; g3 capped at {CAP:,} IOPS with a burst of "
            f"{BURST} requests, idle until {G3_START:g} s (range-bw: the same as max-bw in KB/s; "
            "weight: no way to say it)",
            ["policy", "g2 worst window", "g2 mean", "g3 first window", "g3 worst window after",
             "g3 mean after", "g1 reservation met"],
            [[p, num(r["g2_max"]), num(r["g2_mean"]), num(r["g3_first"]), num(r["g3_after"]),
              num(r["g3_steady"]), pct(r["reservation_met"])] for p, r in caps.items()],
        )
    )  # fmt: skip
    m, mc = res["mclock"], caps["mclock"]
    out.check(
        "mclock: the reservation is met in >= 99 % of windows",
        m["reservation_met"] >= 0.99 and mc["reservation_met"] >= 0.99,
        f"{pct(m['reservation_met'])} (case 1), {pct(mc['reservation_met'])} (case 2)",
    )
    out.check(
        "mclock: the rest is shared 1:4 within 2 % in every window",
        m["g2_g3_ratio_error"] <= 0.02,
        f"worst window {pct(m['g2_g3_ratio_error'], 2)}",
    )
    slack = LIMIT * 2 / 1000 + 1  # two jiffies of the limit (README: the limit's rounding)
    out.check(
        "mclock: the limit is never exceeded (beyond its two-jiffy rounding)",
        mc["g2_max"] <= LIMIT + slack,
        f"worst window {mc['g2_max']:,} against {LIMIT:,}",
    )
    out.check(
        "mclock: the cap allows its burst once, then holds (every window <= rate + burst)",
        mc["g3_first"] <= CAP + BURST
        and mc["g3_after"] <= CAP + BURST
        and abs(mc["g3_steady"] - CAP) <= 0.01 * CAP,
        f"first window {mc['g3_first']:,}, then at most {mc['g3_after']:,}, "
        f"mean {mc['g3_steady']:,.0f} (cap {CAP:,}, burst {BURST})",
    )
    w, rb = res["weight"], res["range-bw"]
    out.summary = (
        f"One SSD ({IOPS:,} IOPS), three 4 KiB random readers 64 deep. Case 1 asks for a "
        f"guaranteed 30 % for g1 and the rest 1:4 between g2 and g3. mclock meets the "
        f"reservation in {pct(m['reservation_met'])} of the 1 s windows (g1 "
        f"{pct(m['g1_share'])}) and splits the rest 1:4 within {pct(m['g2_g3_ratio_error'], 2)}"
        f" in the worst window. `weight` can only say 1:1:4: g1 gets "
        f"{pct(w['g1_share'])} (reservation met in {pct(w['reservation_met'])} of windows). "
        f"`range-bw` can give g1 a minimum, but not weights to the others: g1 gets "
        f"{pct(rb['g1_share'])} and g3:g2 is off 4:1 by up to {pct(rb['g2_g3_ratio_error'])}. "
        f"Case 2: mclock holds g2's limit ({mc['g2_max']:,} IOPS in the worst window against "
        f"{LIMIT:,}), lets g3 use its {BURST}-request burst when it starts after idling "
        f"({mc['g3_first']:,} in its first window) and then holds its cap "
        f"({mc['g3_steady']:,.0f} IOPS on average, {mc['g3_after']:,} at most); what they leave "
        f"goes to g1 (work conserving). Under range-bw the groups without a minimum get only "
        f"what g1's band leaves, and g1's open maximum leaves almost nothing (g2 at most "
        f"{caps['range-bw']['g2_max']:,} IOPS in a window, g3 {caps['range-bw']['g3_after']:,}): "
        f"bands cannot say 'the rest by weight', and have no burst; weight cannot cap at all (g2 "
        f"{caps['weight']['g2_max']:,}, g3 {caps['weight']['g3_after']:,})."
    )
    out.published = (
        "mClock (Gulati, Merchant, Varman, OSDI 2010) and Ceph's dmClock define the "
        "reservation/weight/limit tags used here; cgroup v2 io.max the rbps/wbps/riops/wiops caps "
        "(without bursts); QEMU throttle groups the bursts (x-max for x-max-length seconds)."
    )

    def fig(axes: list) -> None:
        ax = axes[0]
        tl = res["mclock"]["timeline"]
        xs = list(range(len(tl["g1"])))
        for (name, ys), color in zip(tl.items(), PALETTE, strict=False):
            ax.plot(xs, ys, marker="o", color=color, label=f"mclock {name}")
        wl = res["weight"]["timeline"]["g1"]
        ax.plot(xs, wl, linestyle="--", color=COLORS["ioband"], label="weight g1")
        ax.axhline(6000, color="black", linestyle=":", linewidth=1, label="g1 reservation")
        ax.set_xlabel("second")
        ax.set_ylabel("IOPS in the window")
        ax.set_title("case 1: reservation 30 % + weights 1:4")
        ax.legend(loc="upper right")
        ax = axes[1]
        tl = caps["mclock"]["timeline"]
        for (name, ys), color in zip(tl.items(), PALETTE, strict=False):
            ax.plot(list(range(len(ys))), ys, marker="o", color=color, label=f"mclock {name}")
        ax.axhline(LIMIT, color=PALETTE[1], linestyle=":", linewidth=1, label="g2 limit")
        ax.axhline(CAP, color=PALETTE[2], linestyle=":", linewidth=1, label="g3 cap")
        ax.set_xlabel("second")
        ax.set_ylabel("IOPS in the window")
        ax.set_title("case 2: limit, and a cap with a burst after idling")
        ax.legend(loc="upper right")

    out.figures = [(f"{NAME}.png", lambda path: draw(path, fig))]
    return out
