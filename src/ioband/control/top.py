"""``ioband top``: a live view of every group's IOPS, MiB/s, share against its weight and latency,
and of every device's dispatch window and the backing store's measured service latency, read
through the control socket's ``stats`` op and refreshed every ``--interval`` seconds."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from ioband.control.client import SOCKET_ENV, Unreachable, call, socket_path
from ioband.errors import EXIT_STATUS, IobandError

Key = tuple[str, int | str]  # (device, group id or cgroup path)


def _groups(snap: dict[str, Any]) -> dict[Key, tuple[dict[str, Any], dict[str, Any]]]:
    return {(d["name"], g["id"]): (d, g) for d in snap["devices"] for g in d["groups"]}


def window_text(dev: dict[str, Any]) -> str:
    """``3 (adaptive)`` or ``192 (fixed)``; ``-`` from a daemon that does not report it."""
    window = dev.get("window")
    if window is None:
        return "-"
    return f"{window} ({'adaptive' if dev.get('adaptive') else 'fixed'})"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_devices(cur: dict[str, Any]) -> Table:
    """Per device: its device group, policy, dispatch window and what the window was decided
    from (the store's service latency and queue, measured only when the window is adaptive)."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, caption_justify="left",
                  caption="svc ms: mean service latency of the store (dispatch to completion),"
                  " store q: requests it holds waiting (estimated)")  # fmt: skip
    for col in ("device", "dg", "policy", "window", "svc ms", "store q", "in flight"):
        table.add_column(col, justify="left" if col in ("device", "policy") else "right")
    for dev in cur["devices"]:
        table.add_row(dev["name"], dev["device_group"], dev["policy"], window_text(dev),
                      _number(dev.get("latency_ms"), 2), _number(dev.get("store_queue"), 1),
                      str(dev["inflight"]))  # fmt: skip
    return table


def render(prev: dict[str, Any], cur: dict[str, Any]) -> Group | Table:
    """One frame: the groups' rates over the time between the two snapshots, then the
    devices' windows as of the second."""
    seconds = max((cur["now_ms"] - prev["now_ms"]) / 1000, 1e-9)
    before = _groups(prev)
    rows = []
    for key, (dev, g) in _groups(cur).items():
        old = before.get(key, (None, None))[1]
        d_ios = [g["ios"][i] - (old["ios"][i] if old else 0) for i in (0, 1)]
        d_bytes = [g["bytes"][i] - (old["bytes"][i] if old else 0) for i in (0, 1)]
        d_ticks = [g["ticks_ms"][i] - (old["ticks_ms"][i] if old else 0) for i in (0, 1)]
        rows.append((dev, g, sum(d_ios), sum(d_bytes), sum(d_ticks)))
    # shares are taken within a device group (the pool the weights divide), among the groups
    # that did I/O in the interval (an idle group's weight is shared out, as in dm-ioband)
    weights: dict[str, int] = {}
    done: dict[str, float] = {}
    for dev, g, ios, nbytes, _ in rows:
        pool = dev["device_group"]
        weights[pool] = weights.get(pool, 0) + (g.get("weight", 0) if ios else 0)
        done[pool] = done.get(pool, 0) + (nbytes if dev["policy"] == "weight-iosize" else ios)
    table = Table(title=f"ioband top — every {seconds:.1f}s", title_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False)  # fmt: skip
    for col in ("device", "group", "weight/bw", "target", "share", "IOPS", "MiB/s", "lat ms",
                "held"):  # fmt: skip
        table.add_column(col, justify="left" if col == "device" else "right")
    for dev, g, ios, nbytes, ticks in rows:
        pool = dev["device_group"]
        gid = "default" if g["id"] == -1 else g.get("name", str(g["id"]))
        if "weight" in g:
            setting = str(g["weight"])
            total = weights[pool]
            target = f"{100 * g['weight'] / total:.1f}%" if total and ios else "idle"
            work = nbytes if dev["policy"] == "weight-iosize" else ios
            share = f"{100 * work / done[pool]:.1f}%" if done[pool] else "-"
        else:
            setting, target, share = f"{g['min_bw']}:{g['max_bw']} KB/s", "-", "-"
        latency = f"{ticks / ios:.2f}" if ios else "-"
        table.add_row(dev["name"], gid, setting, target, share, f"{ios / seconds:.0f}",
                      f"{nbytes / seconds / (1 << 20):.2f}", latency, str(g["held"]))  # fmt: skip
    if not rows:
        table.caption = "No devices found"
        return table
    return Group(table, render_devices(cur))


def cmd_top(args: argparse.Namespace) -> int:
    path = socket_path(args.socket)
    if args.interval <= 0:
        print("ioband top: --interval must be above 0 (EINVAL)", file=sys.stderr)
        return EXIT_STATUS["EINVAL"]
    try:
        prev = call(path, "stats")
        if args.once:
            time.sleep(args.interval)
            console = Console()
            if not console.is_terminal:  # scripts and pipes: wide enough for every column
                console = Console(width=max(console.width, 140))
            console.print(render(prev, call(path, "stats")))
            return 0
        with Live(render(prev, prev), auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(args.interval)
                cur = call(path, "stats")
                live.update(render(prev, cur), refresh=True)
                prev = cur
    except KeyboardInterrupt:
        return 0
    except Unreachable as err:
        print(f"ioband top: {err}", file=sys.stderr)
        return 1
    except IobandError as err:
        print(f"ioband top: {err.describe()}", file=sys.stderr)
        return EXIT_STATUS.get(err.errno_name, 1)


def add_top(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("top", help="live view of every group's IOPS, MiB/s, share and latency",
                       description="A live table of every group of every device: IOPS, MiB/s, "
                       "its share of its device group against its weight's share, mean latency "
                       "and held requests, over the last interval; then every device's dispatch "
                       "window (adaptive or fixed) and the store's measured service latency. "
                       "Ctrl-C quits.")  # fmt: skip
    p.add_argument("--socket", metavar="PATH",
                   help=f"the daemon's control socket (default ${SOCKET_ENV}, else "
                   "/run/ioband/control.sock)")  # fmt: skip
    p.add_argument("--interval", metavar="S", type=float, default=1.0,
                   help="seconds between frames (default 1)")  # fmt: skip
    p.add_argument("--once", action="store_true",
                   help="print one frame (over one interval) and exit")  # fmt: skip
    p.set_defaults(func=cmd_top)
