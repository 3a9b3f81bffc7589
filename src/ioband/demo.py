"""``ioband demo``: three real client processes share an NBD export by weight 40/20/10.

It makes a temporary backing file, starts the daemon in-process with an embedded configuration,
runs three clients (fio's nbd engine when installed, else the built-in load generator) for a
fixed time, shows a live per-group table as the shares converge, prints the measured shares
against the weights, writes a plot, and removes everything it made (Ctrl-C included).
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
IO_LIMIT = 16  # below the clients' 3 x 32 outstanding: ioband holds requests and decides
EXPORT = "demo"


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


def snapshot(daemon: EmbeddedDaemon) -> dict[int, int]:
    """Completed-or-issued request counts per group id of the demo device."""

    def read() -> dict[int, int]:
        dev = daemon.daemon.engine.device(EXPORT)
        return {g.id: g.ios[0] + g.ios[1] for g in dev.all_groups()}

    return daemon.call(read)


def render(counts: dict[int, int], pids: list[int], elapsed: float, seconds: float) -> Table:
    total = sum(counts.get(pid, 0) for pid in pids) or 1
    table = Table(title=f"ioband demo: {elapsed:4.1f} / {seconds:.0f} s", title_justify="left")
    for col in ("client", "pid", "weight", "weight share", "IOs", "achieved share"):
        table.add_column(col, justify="right")
    wsum = sum(WEIGHTS)
    for i, (pid, w) in enumerate(zip(pids, WEIGHTS, strict=True)):
        n = counts.get(pid, 0)
        table.add_row(f"client{i + 1}", str(pid), str(w), f"{w / wsum:6.1%}", f"{n:,}",
                      f"{n / total:6.1%}")  # fmt: skip
    return table


def plot(path: Path, times: list[float], shares: list[list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    wsum = sum(WEIGHTS)
    for i, w in enumerate(WEIGHTS):
        line = ax.plot(times, [s[i] * 100 for s in shares], label=f"client{i + 1} (weight {w})")
        ax.axhline(w / wsum * 100, color=line[0].get_color(), linestyle="--", linewidth=0.8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("share of I/Os in the last second (%)")
    ax.set_title("ioband demo: three NBD clients, weights 40/20/10 (dashed: target)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_demo(seconds: float = 20.0, plot_path: Path | None = Path("ioband-demo.png"),
             console: Console | None = None) -> int:  # fmt: skip
    console = console or Console()
    tmp = Path(tempfile.mkdtemp(prefix="ioband-demo-"))
    clients: list[subprocess.Popen] = []
    try:
        image = tmp / "disk.img"
        write_image(image)
        sock = str(tmp / "nbd.sock")
        config = load_config(
            {
                "nbd": {"unix_socket": sock},
                "device": [{"name": EXPORT, "direct": True, "table":
                            f"0 {SIZE // 512} ioband {image} demo 0 {IO_LIMIT} pid weight 0 :1"}],
            }
        )  # fmt: skip
        tool = "fio" if shutil.which("fio") else "the built-in load generator"
        console.print(f"backing file {image} ({SIZE >> 20} MiB), NBD socket {sock}")
        console.print(
            f"three clients ({tool}), 4 KiB random reads at depth {DEPTH}, {seconds:.0f} s"
        )
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
            times: list[float] = []
            shares: list[list[float]] = []
            history: list[dict[int, int]] = [snapshot(daemon)]
            with Live(render(history[0], pids, 0, seconds), console=console,
                      refresh_per_second=4, transient=False) as live:  # fmt: skip
                while any(p.poll() is None for p in clients):
                    time.sleep(0.5)
                    counts = snapshot(daemon)
                    history.append(counts)
                    elapsed = time.monotonic() - start
                    window = history[max(0, len(history) - 3)]  # the last second
                    delta = [counts.get(p, 0) - window.get(p, 0) for p in pids]
                    total = sum(delta) or 1
                    if elapsed <= seconds:  # not the tail, while the clients wind down
                        times.append(elapsed)
                        shares.append([d / total for d in delta])
                    live.update(render(counts, pids, min(elapsed, seconds), seconds))
            final = history[-1]
        total = sum(final.get(p, 0) for p in pids) or 1
        wsum = sum(WEIGHTS)
        console.print("\nmeasured I/O shares against the weights:")
        worst = 0.0
        for i, (pid, w) in enumerate(zip(pids, WEIGHTS, strict=True)):
            share = final.get(pid, 0) / total
            worst = max(worst, abs(share - w / wsum) / (w / wsum))
            console.print(f"  client{i + 1}  weight {w}/{wsum} = {w / wsum:6.1%}"
                          f"   achieved {share:6.1%}  ({final.get(pid, 0):,} IOs)")  # fmt: skip
        console.print(f"  largest relative error: {worst:.1%}")
        if plot_path is not None and times:
            plot(plot_path, times, shares)
            console.print(f"plot written to {plot_path}")
        return 0
    finally:
        for proc in clients:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)
