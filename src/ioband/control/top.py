"""``ioband top``: a live view of every group's IOPS, MiB/s, share against its weight and latency,
and of every device's dispatch window and the backing store's measured service latency, read
through the control socket's ``stats`` op and refreshed every ``--interval`` seconds."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ioband.control.client import SOCKET_ENV, Unreachable, call, socket_path
from ioband.control.metrics import group_label
from ioband.core.histogram import counts_from_sparse, percentile
from ioband.errors import EXIT_STATUS, IobandError

Key = tuple[str, int | str]  # (device, group id or cgroup path)
PERCENTILES = (("p50", 0.50), ("p99", 0.99))


def _groups(snap: dict[str, Any]) -> dict[Key, tuple[dict[str, Any], dict[str, Any]]]:
    return {(d["name"], g["id"]): (d, g) for d in snap["devices"] for g in d["groups"]}


def window_text(dev: dict[str, Any]) -> str:
    """``3 (adaptive)``, ``192 (fixed)`` or ``192 (open: 1 group)``; ``-`` from a
    daemon that does not report it."""
    window = dev.get("window")
    if window is None:
        return "-"
    if dev.get("alone"):  # one group has the store alone: the adaptive window is open
        return f"{window} (open: 1 group)"
    return f"{window} ({'adaptive' if dev.get('adaptive') else 'fixed'})"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _interval_latency(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    """Mean and percentiles (ms) of the requests that completed between two snapshots of one
    histogram (``Histogram.sparse()``); None where nothing completed or the daemon has none."""
    empty = {"mean": None, **{name: None for name, _ in PERCENTILES}, "count": 0}
    if not new:
        return empty
    counts = counts_from_sparse(new)
    count, sum_ns = new["count"], new["sum_ns"]
    if old and old["count"] <= count:  # else the group's counters were reset: take all
        for i, n in enumerate(counts_from_sparse(old)):
            counts[i] -= n
        count -= old["count"]
        sum_ns -= old["sum_ns"]
    if count <= 0:
        return empty
    out: dict[str, Any] = {"mean": round(sum_ns / count / 1e6, 4), "count": count}
    for name, q in PERCENTILES:
        us = percentile(counts, q)
        out[name] = None if us is None else round(us / 1000, 4)
    return out


def frame(prev: dict[str, Any], cur: dict[str, Any]) -> dict[str, Any]:
    """One frame as data (what ``top --json`` prints): every group's rates, share, latency and
    hold time over the interval between the two snapshots, and every device's window."""
    seconds = max((cur["now_ms"] - prev["now_ms"]) / 1000, 1e-9)
    before = _groups(prev)
    rows = []
    for key, (dev, g) in _groups(cur).items():
        old = before.get(key, (None, None))[1]
        d_ios = [g["ios"][i] - (old["ios"][i] if old else 0) for i in (0, 1)]
        d_bytes = [g["bytes"][i] - (old["bytes"][i] if old else 0) for i in (0, 1)]
        rows.append((dev, g, old, sum(d_ios), sum(d_bytes)))
    # shares are taken within a device group (the pool the weights divide), among the groups
    # that did I/O in the interval (an idle group's weight is shared out, as in dm-ioband)
    weights: dict[str, int] = {}
    done: dict[str, float] = {}
    for dev, g, _, ios, nbytes in rows:
        pool = dev["device_group"]
        weights[pool] = weights.get(pool, 0) + (g.get("weight", 0) if ios else 0)
        done[pool] = done.get(pool, 0) + (nbytes if dev["policy"] == "weight-iosize" else ios)
    devices: dict[str, dict[str, Any]] = {}
    for dev in cur["devices"]:
        devices[dev["name"]] = {
            "name": dev["name"], "device_group": dev["device_group"], "policy": dev["policy"],
            "window": dev.get("window"), "adaptive": dev.get("adaptive"),
            "service_latency_ms": dev.get("latency_ms"), "store_queue": dev.get("store_queue"),
            "inflight": dev["inflight"], "cluster": dev.get("cluster"), "groups": [],
        }  # fmt: skip
    for dev, g, old, ios, nbytes in rows:
        pool = dev["device_group"]
        item: dict[str, Any] = {"id": g["id"], "group": group_label(g)}
        if "weight" in g:
            total = weights[pool]
            work = nbytes if dev["policy"] == "weight-iosize" else ios
            item["weight"] = g["weight"]
            item["target_pct"] = round(100 * g["weight"] / total, 2) if total and ios else None
            item["share_pct"] = round(100 * work / done[pool], 2) if done[pool] else None
        else:
            item["min_bw"], item["max_bw"] = g["min_bw"], g["max_bw"]
        item["iops"] = round(ios / seconds, 2)
        item["bytes_per_second"] = round(nbytes / seconds, 1)
        item["latency_ms"] = _interval_latency(old and old.get("latency"), g.get("latency"))
        item["hold_ms"] = _interval_latency(old and old.get("hold"), g.get("hold"))
        item["held"] = g["held"]
        devices[dev["name"]]["groups"].append(item)
    return {"interval_seconds": round(seconds, 3), "devices": list(devices.values())}


def _device_title(dev: dict[str, Any]) -> str:
    """The device's line above its groups: device group, policy, dispatch window and what the
    window was decided from (the store's service latency and queue, measured when adaptive)."""
    parts = [f"[b]{dev['name']}[/b]", f"dg {dev['device_group']}", dev["policy"],
             f"win {window_text(dev)}", f"inflight {dev['inflight']}"]  # fmt: skip
    if dev.get("service_latency_ms") is not None:
        parts.append(f"svc {_number(dev['service_latency_ms'], 2)}ms")
    if dev.get("store_queue") is not None:
        parts.append(f"store q {_number(dev['store_queue'], 1)}")
    cluster = dev.get("cluster")
    if cluster is not None:  # a cluster-wide device: its part of the cluster, or local control
        if cluster["local_control"]:
            parts.append("cluster [b]local[/b] (Redis unreachable)")
        else:
            parts.append(f"cluster {cluster['peers']} peer(s) share {100 * cluster['share']:.0f}%")
    return "  ".join(parts)


# The group's name goes last, like top's COMMAND: the numbers keep their width and a long cgroup
# path folds onto more lines instead of being cut.
COLUMNS = ("weight", "target", "share", "IOPS", "MiB/s", "p50ms", "p99ms", "holdms", "held",
           "group")  # fmt: skip


def render(prev: dict[str, Any], cur: dict[str, Any]) -> Group | Table:
    """One frame for a terminal, compact enough for 80 columns: per device a title line, then
    its groups. ``p50``/``p99 ms``: latency from arrival at ioband to completion (held, queued
    and served); ``hold ms``: the mean time held before dispatch; ``held``: held now."""
    data = frame(prev, cur)
    title = f"ioband top — every {data['interval_seconds']:.1f}s"
    if not data["devices"]:
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
        table.caption = "No devices found"
        return table
    parts: list[Any] = [title]
    for dev in data["devices"]:
        if len(parts) > 1:
            parts.append(Text(""))
        parts.append(Text.from_markup(_device_title(dev)))  # as wide as the screen, not the table
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1),
                      collapse_padding=True)  # fmt: skip
        for col in COLUMNS[:-1]:
            table.add_column(col, justify="right", no_wrap=True)
        table.add_column(COLUMNS[-1], justify="left", overflow="fold", min_width=8)
        for g in dev["groups"]:
            if "weight" in g:
                setting = str(g["weight"])
                target = "idle" if g["target_pct"] is None else f"{g['target_pct']:.1f}%"
                share = "-" if g["share_pct"] is None else f"{g['share_pct']:.1f}%"
            else:
                setting, target, share = f"{g['min_bw']}:{g['max_bw']}", "-", "-"
            lat, hold = g["latency_ms"], g["hold_ms"]
            table.add_row(setting, target, share, f"{g['iops']:.0f}",
                          f"{g['bytes_per_second'] / (1 << 20):.2f}", _number(lat["p50"], 2),
                          _number(lat["p99"], 2), _number(hold["mean"], 2), str(g["held"]),
                          g["group"])  # fmt: skip
        parts.append(table)
    parts.append("weight: min:max KB/s for range-bw. p50/p99ms: latency from arrival at ioband"
                 " to completion. holdms: mean time held before dispatch.")  # fmt: skip
    return Group(*parts)


def _json_error(errno_name: str, message: str) -> str:
    """A refusal as the other commands print it with ``--json``."""
    return json.dumps({"ok": False, "command": "top",
                       "error": {"errno": errno_name, "message": message}})  # fmt: skip


def cmd_top(args: argparse.Namespace) -> int:
    path = socket_path(args.socket)
    if args.interval <= 0:
        print("ioband top: --interval must be above 0 (EINVAL)", file=sys.stderr)
        return EXIT_STATUS["EINVAL"]
    try:
        prev = call(path, "stats")
        if args.json:  # one JSON object per interval, one per line (JSON Lines)
            while True:
                time.sleep(args.interval)
                cur = call(path, "stats")
                print(json.dumps(frame(prev, cur)), flush=True)
                if args.once:
                    return 0
                prev = cur
        if args.once:
            time.sleep(args.interval)
            console = Console()
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
        if args.json:
            print(_json_error("EHOSTUNREACH", str(err)))
        return 1
    except IobandError as err:
        print(f"ioband top: {err.describe()}", file=sys.stderr)
        if args.json:
            print(_json_error(err.errno_name, err.describe()))
        return EXIT_STATUS.get(err.errno_name, 1)


def add_top(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("top", help="live view of every group's IOPS, MiB/s, share and latency",
                       description="A live table of every group of every device: IOPS, MiB/s, "
                       "its share of its device group against its weight's share, latency "
                       "percentiles from arrival at ioband to completion, the mean time held "
                       "and held requests, over the last interval; above each device's groups, "
                       "its dispatch window (adaptive or fixed) and the store's measured service "
                       "latency. "
                       "Ctrl-C quits.")  # fmt: skip
    p.add_argument("--socket", metavar="PATH",
                   help=f"the daemon's control socket (default ${SOCKET_ENV}, else "
                   "/run/ioband/control.sock)")  # fmt: skip
    p.add_argument("--interval", metavar="S", type=float, default=1.0,
                   help="seconds between frames (default 1)")  # fmt: skip
    p.add_argument("--once", action="store_true",
                   help="print one frame (over one interval) and exit")  # fmt: skip
    p.add_argument(
        "--json",
        action="store_true",
        help="print each frame as one JSON object per line (with --once: one)",
    )
    p.set_defaults(func=cmd_top)
