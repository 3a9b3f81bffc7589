"""Presenting a result: the human table (rich) and the share lines (the JSON document is
``results.to_json``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO

from rich import box
from rich.console import Console
from rich.table import Table

from ioband.sim.metrics import text_lines
from ioband.sim.results import Result
from ioband.sim.units import format_bytes

WEIGHT_POLICIES = ("weight", "weight-iosize", "default")
DELIMS = "=:,"
REPORT_WIDTH = 120  # when not writing to a terminal: fixed, so that output files are reproducible


# ---------------------------------------------------------------------------------------------
# Shares: what each device got against what its weights promise


@dataclass(frozen=True)
class TablePolicy:
    """The parts of a table line the share report needs."""

    device_group: str
    policy: str
    groups: dict[int, str]  # group id (-1: default group) -> value text ("40", "5000:6000")

    @property
    def weight(self) -> int | None:
        """Sum of the weights of this device's groups (weight policies), else None."""
        if self.policy not in WEIGHT_POLICIES:
            return None
        try:
            return sum(int(v, 0) for v in self.groups.values()) if self.groups else 100
        except ValueError:
            return None


def parse_table(line: str) -> TablePolicy | None:
    """Read ``<start> <len> ioband <dev> <id> <thr> <lim> <type> <policy> [args]``; None if not."""
    words = line.split()
    if len(words) < 9 or words[2] != "ioband":
        return None
    args = words[9:]
    groups: dict[int, str] = {}
    default_at = next((i for i, a in enumerate(args) if a[:1] in DELIMS and a), None)
    if default_at is None:
        groups[-1] = "100" if words[8] in WEIGHT_POLICIES else "0:0"
    else:
        groups[-1] = args[default_at][1:]
        for spec in args[default_at + 1 :]:
            cut = min((spec.find(c) for c in DELIMS if c in spec), default=-1)
            if cut <= 0:
                return None
            try:
                groups[int(spec[:cut], 0)] = spec[cut + 1 :]
            except ValueError:
                return None
    return TablePolicy(device_group=words[4], policy=words[8], groups=groups)


def share_lines(result: Result) -> list[str]:
    """One line per device: its weight share in its device group against the share it achieved
    (of IOs for ``weight``, of bytes for ``weight-iosize``). range-bw devices show their bands."""
    parsed = {name: parse_table(d.table) for name, d in result.devices.items()}
    lines = []
    width = max((len(n) for n in result.devices), default=0)
    for name, dev in result.devices.items():
        tp = parsed[name]
        if tp is None:
            continue
        members = [
            n for n, p in parsed.items() if p is not None and p.device_group == tp.device_group
        ]
        if tp.policy == "range-bw":
            bands = " ".join(f"{'' if g == -1 else g}:{v}" for g, v in tp.groups.items())
            kib = dev.bytes / 1024 / result.duration
            lines.append(f"{name:<{width}}  range-bw bands {bands} KB/s; achieved {kib:,.0f} KiB/s")
            continue
        weight = tp.weight
        total_weight = sum(parsed[n].weight or 0 for n in members)  # type: ignore[union-attr]
        if weight is None or total_weight <= 0:
            continue
        by_bytes = tp.policy == "weight-iosize"
        done = dev.bytes if by_bytes else dev.ios
        total = sum(result.devices[n].bytes if by_bytes else result.devices[n].ios for n in members)
        unit = "bytes" if by_bytes else "IOs"
        achieved = 100.0 * done / total if total else 0.0
        owed = 100.0 * weight / total_weight
        lines.append(
            f"{name:<{width}}  weight {weight}/{total_weight} = {owed:5.1f} %"
            f"   achieved {achieved:5.1f} % of {unit} ({done:,} {unit})"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# The human report


def make_console(file: IO[str] | None = None) -> Console:
    console = Console(file=file, highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console = Console(file=file, highlight=False, width=REPORT_WIDTH, color_system=None)
    return console


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def workload_table(result: Result) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for col, justify in (
        ("workload", "left"),
        ("device", "left"),
        ("procs", "right"),
        ("IOs", "right"),
        ("bytes", "right"),
        ("IOPS", "right"),
        ("MB/s", "right"),
        ("IO %", "right"),
        ("p50 ms", "right"),
        ("p99 ms", "right"),
        ("p99.9 ms", "right"),
    ):
        table.add_column(col, justify=justify, no_wrap=True)
    disk_ios: dict[str, int] = {}
    for w in result.workloads:
        disk_ios[w.disk] = disk_ios.get(w.disk, 0) + w.ios
    for w in result.workloads:
        share = 100.0 * w.ios / disk_ios[w.disk] if disk_ios[w.disk] else 0.0
        table.add_row(
            w.name,
            w.device,
            str(w.processes),
            f"{w.ios:,}",
            format_bytes(w.bytes),
            f"{w.iops:,.1f}",
            f"{w.mbps:,.2f}",
            f"{share:.1f}",
            _ms(w.latency_p50),
            _ms(w.latency_p99),
            _ms(w.latency_p999),
        )
    return table


def render(result: Result, console: Console, *, shares: bool = True) -> None:
    """Print the report: header, workloads table, disks, share lines, table and status lines."""
    sc = result.scenario
    out = console.print
    out(
        f"scenario {sc.name}: {result.duration:g} virtual s, seed {sc.seed}, hz {sc.hz}",
        markup=False,
    )
    if sc.description:
        out(" ".join(sc.description.split()), markup=False, style="dim")
    out(workload_table(result))
    for d in result.disks.values():
        out(
            f"disk {d.name} ({d.model}): {d.ios:,} IOs, {d.iops:,.1f} IOPS, {d.mbps:,.2f} MB/s, "
            f"{100 * d.utilization:.1f} % busy",
            markup=False,
        )
    if shares:
        lines = share_lines(result)
        if lines:
            out("")
            out("shares (per device group):", markup=False)
            for line in lines:
                out("  " + line, markup=False)
    if result.metrics is not None:
        lines = text_lines(result.metrics)
        if lines:
            out("")
            out("metrics (see --json for every window):", markup=False)
            for line in lines:
                out("  " + line, markup=False)
    out("")
    out("dmsetup table:", markup=False)
    for d in result.devices.values():
        out(f"{d.name}: {d.table}", markup=False, soft_wrap=True)
    out("dmsetup status:", markup=False)
    for d in result.devices.values():
        out(f"{d.name}: {d.status}", markup=False, soft_wrap=True)
