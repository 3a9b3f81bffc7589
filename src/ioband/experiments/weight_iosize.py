"""weight-iosize: 4 KiB against 64 KiB readers; byte shares follow the weights."""

from __future__ import annotations

from ioband.experiments.base import (
    Context,
    Outcome,
    builtin,
    pct,
    retable,
    run_under,
    scenario_data,
)
from ioband.experiments.plotting import draw
from ioband.experiments.shares import (
    draw_share_bars,
    scheduler_summary,
    share_table,
    summary_table,
)
from ioband.sim import run as simulate
from ioband.sim.metrics import compute

NAME = "weight-iosize"
TITLE = "weight-iosize: 4 KiB vs 64 KiB random readers, weights 60:40 of bytes"
LABELS = {"ioband1": "ioband1 :60, 4 KiB", "ioband2": "ioband2 :40, 64 KiB"}
IO_FAIR = "ioband (weight)"


def run(ctx: Context) -> Outcome:
    sc = builtin("weight-iosize", ctx, 20, 3)
    results = run_under(sc)
    # The same devices under the plain `weight` policy: one token per request, whatever its size.
    per_io = simulate(retable(sc, " weight-iosize ", " weight "))
    per_io.metrics = compute(per_io, results["none"])
    summaries = {sch: scheduler_summary(r) for sch, r in results.items()}
    summaries = {
        "ioband": summaries["ioband"],
        IO_FAIR: scheduler_summary(per_io),
        "sfq": summaries["sfq"],
        "none": summaries["none"],
    }
    io, sfq, fair = summaries["ioband"], summaries["sfq"], summaries[IO_FAIR]
    out = Outcome(data=scenario_data(sc, summaries))
    out.tables = [
        share_table("byte shares (error relative to the 60/40 weight share)",
                    summaries, LABELS, unit="bytes"),
        share_table("request (I/O) shares of the same runs", summaries, LABELS, unit="ios",
                    errors=False),
        summary_table("share error (bytes), Jain, efficiency, latency",
                      {k: v for k, v in summaries.items() if k != IO_FAIR}),
    ]  # fmt: skip
    out.check_error("ioband weight-iosize: byte shares within 5 % of 60/40", io, 0.05)
    out.check_error("SFQ(D) with byte cost: byte shares within 2 % of 60/40", sfq, 0.02)
    out.check(
        "ioband efficiency by disk time >= 0.95 (SSD)",
        io["eta_util"] is not None and io["eta_util"] >= 0.95,
        f"eta (disk time) {io['eta_util']:.3f}",
    )
    small, large = "ioband1", "ioband2"
    out.summary = (
        f"weight-iosize charges one token per sector, so bytes rather than requests follow the "
        f"weights: the 4 KiB readers get {pct(io['byte_share'][small])} of the bytes and the "
        f"64 KiB readers {pct(io['byte_share'][large])} (weights 60/40; "
        f"{pct(io['io_share'][small])} of the requests are the small ones). Under the plain "
        f"weight policy the same set-up shares requests 60/40 "
        f"({pct(fair['io_share'][small])} / {pct(fair['io_share'][large])}), which hands the "
        f"large requests {pct(fair['byte_share'][large])} of the bytes. SFQ(D) charged by size "
        f"gives {pct(sfq['byte_share'][small])} / {pct(sfq['byte_share'][large])}. Efficiency "
        f"by bytes looks poor (eta {io['eta']:.3f}) only because control changes the mix: "
        f"60 % of the bytes now come as 4 KiB requests, which cost the SSD more time per byte; "
        f"by disk busy time eta = {io['eta_util']:.3f}."
    )
    out.published = ""

    def fig(axes: list) -> None:
        draw_share_bars(axes[0], summaries, LABELS, "bytes", share_unit="bytes")
        axes[0].set_title("share of bytes per device (weights 60/40 of bytes)")
        draw_share_bars(axes[1], summaries, LABELS, "requests", share_unit="ios", targets=False)
        axes[1].set_title("share of requests per device (same runs)")
        for ax in axes:
            ax.legend(loc="upper center", ncol=3)

    out.figures = [(f"{NAME}.png", lambda path: draw(path, fig))]
    return out
