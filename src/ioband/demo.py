"""``ioband demo``: three real client processes share an NBD export by weight 40/20/10, first
with the scheduler bypassed, then with it on.

It makes a temporary backing file, starts the daemon in-process with an embedded configuration
(the default ``io_limit 0``: the dispatch window adapts to the store), runs three clients (fio's
nbd engine when installed, else the built-in load generator) for a fixed time, and halfway
through turns the export's ``control`` on (as a reload does): the first half shows how the
backing store splits the I/O on its own, the second how ioband splits it by weight. A live
table follows both, the summary prints the two splits side by side, a plot shows both phases,
and everything it made is removed (Ctrl-C included).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from ioband.control.config import load_config
from ioband.control.embedded import EmbeddedDaemon

WEIGHTS = (40, 20, 10)
SIZE = 256 << 20
DEPTH = 32
EXPORT = "demo"
PHASES = ("no control", "ioband")
SAMPLE = 0.25  # seconds between samples
SETTLE = 1.0  # seconds left out at the start of each phase (clients starting, window adapting)

Counts = dict[int, int]  # requests answered per client pid


def client_argv(sock: str, seconds: float, index: int) -> list[str]:
    uri = f"nbd+unix:///{EXPORT}?socket={sock}"
    if shutil.which("fio"):
        # --thread: the job runs in the process we started, so its pid is the one we attach
        return ["fio", f"--name=client{index}", "--ioengine=nbd", f"--uri={uri}", "--thread",
                "--rw=randread", "--bs=4k", f"--iodepth={DEPTH}", "--time_based",
                f"--runtime={seconds:.0f}", f"--size={SIZE}", "--output=/dev/null"]  # fmt: skip
    return [sys.executable, "-m", "ioband.nbd.loadgen", sock, EXPORT, str(seconds)]


def write_image(path: Path) -> None:
    """Real blocks, read with O_DIRECT: the disk is the bottleneck and ioband holds what it
    cannot take, as on a real server (a sparse, page-cached file answers every read at once,
    so there would be nothing to arbitrate)."""
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(SIZE >> 20):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    with open(path, "rb") as f:  # drop what the writes left in the page cache
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def snapshot(daemon: EmbeddedDaemon) -> tuple[Counts, str]:
    """Requests answered per client pid, and the device's dispatch window. They are counted
    by the NBD connections, scheduled or not: the engine never sees the uncontrolled phase's."""

    def read() -> tuple[Counts, str]:
        d = daemon.daemon
        counts: Counts = {}
        for conn in d.exports[EXPORT].connections:
            counts[conn.owner.pid] = counts.get(conn.owner.pid, 0) + conn.answered
        dp = d.engine.device(EXPORT).dp
        adaptive = getattr(dp, "adaptive", None)
        if adaptive is None:
            window = f"window {getattr(dp, 'window', dp.io_limit)} (fixed)"
        else:
            window = (f"window {dp.window} (adaptive), store service latency "
                      f"{adaptive.latency_ms():.2f} ms")  # fmt: skip
        return counts, window

    return daemon.call(read)


def split(before: Counts, after: Counts, pids: list[int]) -> list[float]:
    """Each client's share of the requests answered between two samples."""
    delta = [max(0, after.get(p, 0) - before.get(p, 0)) for p in pids]
    total = sum(delta)
    return [d / total if total else 0.0 for d in delta]


class Phases:
    """The samples of a run, and each phase's measured split (its first ``settle`` seconds
    left out)."""

    def __init__(self, half: float, seconds: float) -> None:
        self.half = half
        self.seconds = seconds
        self.settle = min(SETTLE, half / 4)
        self.samples: list[tuple[float, Counts]] = []

    def add(self, elapsed: float, counts: Counts) -> None:
        self.samples.append((elapsed, counts))

    def split(self, phase: int, pids: list[int]) -> tuple[list[float], float] | None:
        """The phase's shares so far, and its requests per second."""
        begin = (0.0, self.half)[phase] + self.settle
        end = (self.half, self.seconds)[phase]
        inside = [(t, c) for t, c in self.samples if begin <= t <= end + SAMPLE / 2]
        if len(inside) < 2:
            return None
        (t0, before), (t1, after) = inside[0], inside[-1]
        done = sum(max(0, after.get(p, 0) - before.get(p, 0)) for p in pids)
        return split(before, after, pids), done / (t1 - t0)


def render(phases: Phases, pids: list[int], elapsed: float, window: str) -> Table:
    phase = "scheduler bypassed (control = false)" if elapsed < phases.half else (
        "ioband scheduling by weight")  # fmt: skip
    table = Table(title=f"ioband demo: {elapsed:4.1f} / {phases.seconds:.0f} s — {phase}",
                  title_justify="left", caption=window, caption_justify="left")  # fmt: skip
    for col in ("client", "pid", "weight", "target", *(f"{p} share" for p in PHASES)):
        table.add_column(col, justify="right")
    wsum = sum(WEIGHTS)
    splits = [phases.split(i, pids) for i in range(len(PHASES))]
    for i, (pid, w) in enumerate(zip(pids, WEIGHTS, strict=True)):
        cells = [f"{s[0][i]:6.1%}" if s else "-" for s in splits]
        table.add_row(f"client{i + 1}", str(pid), str(w), f"{w / wsum:6.1%}", *cells)
    return table


def plot(path: Path, times: list[float], shares: list[list[float]], half: float) -> None:
    """Raises ``PlotsUnavailable`` without matplotlib (the optional extra ``ioband[plot]``)."""
    from ioband.experiments.plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=100)
    wsum = sum(WEIGHTS)
    for i, w in enumerate(WEIGHTS):
        line = ax.plot(times, [s[i] * 100 for s in shares], label=f"client{i + 1} (weight {w})")
        ax.axhline(w / wsum * 100, color=line[0].get_color(), linestyle="--", linewidth=0.8)
    ax.axvline(half, color="black", linewidth=1)
    ax.text(half / 2, 97, "no control (scheduler bypassed)", ha="center", va="top",
            fontsize="small")  # fmt: skip
    ax.text(half * 1.5, 97, "ioband on (weights)", ha="center", va="top", fontsize="small")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("share of I/Os in the last second (%)")
    ax.set_title("ioband demo: three NBD clients, weights 40/20/10 (dashed: target)")
    ax.set_xlim(0, max(times[-1], 2 * half))
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right", bbox_to_anchor=(1, 0.92), fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_demo(seconds: float = 20.0, plot_path: Path | None = Path("ioband-demo.png"),
             console: Console | None = None) -> int:  # fmt: skip
    console = console or Console()
    tmp = Path(tempfile.mkdtemp(prefix="ioband-demo-"))
    clients: list[subprocess.Popen] = []
    half = seconds / 2
    try:
        image = tmp / "disk.img"
        write_image(image)
        sock = str(tmp / "nbd.sock")
        config = load_config(
            {
                "nbd": {"unix_socket": sock},
                # io_limit 0 (the default): ioband measures how many requests the store needs
                # in flight; control = false: the first phase bypasses the scheduler
                "device": [{"name": EXPORT, "direct": True, "control": False, "table":
                            f"0 {SIZE // 512} ioband {image} demo 0 0 pid weight 0 :1"}],
            }
        )  # fmt: skip
        tool = "fio" if shutil.which("fio") else "the built-in load generator"
        console.print(f"backing file {image} ({SIZE >> 20} MiB), NBD socket {sock}")
        console.print(f"three clients ({tool}), 4 KiB random reads at depth {DEPTH}, "
                      f"{seconds:.0f} s: {half:.0f} s with the scheduler bypassed, then "
                      f"{seconds - half:.0f} s with ioband on")  # fmt: skip
        with EmbeddedDaemon(config) as daemon:
            engine = daemon.daemon.engine
            for i, w in enumerate(WEIGHTS):
                argv = client_argv(sock, seconds, i + 1)
                quiet = subprocess.DEVNULL
                proc = subprocess.Popen(argv, stdout=quiet, stderr=quiet)
                clients.append(proc)
                for message in (f"attach {proc.pid}", f"weight {proc.pid}:{w}"):
                    daemon.call(lambda m=message: engine.message(EXPORT, m))
            pids = [p.pid for p in clients]
            start = time.monotonic()
            phases = Phases(half, seconds)
            counts, window = snapshot(daemon)
            phases.add(0.0, counts)
            times: list[float] = []
            shares: list[list[float]] = []
            controlled = False
            with Live(render(phases, pids, 0, window), console=console,
                      refresh_per_second=4, transient=False) as live:  # fmt: skip
                while any(p.poll() is None for p in clients):
                    time.sleep(SAMPLE)
                    elapsed = time.monotonic() - start
                    if elapsed > seconds:  # the tail, while the clients wind down
                        continue
                    if not controlled and elapsed >= half:  # as a reload turning control on
                        daemon.call(lambda: daemon.daemon.set_option(EXPORT, "control", True))
                        controlled = True
                    counts, window = snapshot(daemon)
                    phases.add(elapsed, counts)
                    last = phases.samples[max(0, len(phases.samples) - 1 - int(1 / SAMPLE))]
                    times.append(elapsed)
                    shares.append(split(last[1], counts, pids))
                    live.update(render(phases, pids, elapsed, window))
        wsum = sum(WEIGHTS)
        splits = [phases.split(i, pids) for i in range(len(PHASES))]
        console.print(f"\nmeasured I/O shares against the weights (each phase's first "
                      f"{phases.settle:.1f} s left out):")  # fmt: skip
        console.print(f"  {'weight':>23}   {'no control':>10}   {'ioband':>10}")
        for i, w in enumerate(WEIGHTS):
            cells = [f"{s[0][i]:10.1%}" if s else f"{'-':>10}" for s in splits]
            console.print(f"  client{i + 1}  {w:2}/{wsum} = {w / wsum:6.1%}   "
                          + "   ".join(cells))  # fmt: skip
        errors = []
        for s in splits:
            worst = max((abs(s[0][i] - w / wsum) / (w / wsum) for i, w in enumerate(WEIGHTS)),
                        default=0.0) if s else None  # fmt: skip
            errors.append(f"{worst:10.1%}" if worst is not None else f"{'-':>10}")
        console.print(f"  {'largest relative error':<23}   " + "   ".join(errors))
        rates = [f"{s[1]:10,.0f}" if s else f"{'-':>10}" for s in splits]
        console.print(f"  {'requests/s (all three)':<23}   " + "   ".join(rates))
        console.print(f"  {window}")
        if plot_path is not None and times:
            from ioband.experiments.plotting import PlotsUnavailable

            try:
                plot(plot_path, times, shares, half)
                console.print(f"plot written to {plot_path}")
            except PlotsUnavailable as err:
                console.print(f"no plot: {err}", markup=False)
        return 0
    finally:
        for proc in clients:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)
