"""Scenario files: TOML loading and validation.

Every error names the key (``workload[1].block_size``) and the rule, and is a ``ScenarioError``
(an ``IobandError``, EINVAL). Validation covers the simulator's own keys; the table lines and
messages are the engine's business and are checked by it when the simulation starts.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ioband.errors import IobandError
from ioband.sim import catalog
from ioband.sim.disk import MODELS, ModelParamError, Param
from ioband.sim.units import parse_duration, parse_size

PATTERNS = ("read", "write", "randread", "randwrite", "rw", "randrw")
SCHEDULERS = ("ioband", "none", "sfq")  # the faithful core, FIFO pass-through, SFQ(D)
DEFAULT_WINDOWS = (1.0, 10.0)
MIXED = ("rw", "randrw")
STATUS_FORMATS = ("legacy", "diskstats")
SECTOR = 512


class ScenarioError(IobandError):
    """An invalid scenario: ``key`` is where (``device[0].table``), ``source`` the file."""

    errno_name = "EINVAL"

    def __init__(self, rule: str, *, key: str | None = None, source: str | None = None) -> None:
        self.rule = rule
        self.key = key
        self.source = source
        parts = [p for p in (source, key) if p]
        super().__init__(": ".join([*parts, rule]))

    def with_source(self, source: str) -> ScenarioError:
        return ScenarioError(self.rule, key=self.key, source=source)


# ---------------------------------------------------------------------------------------------
# The validated model


@dataclass(frozen=True)
class DiskSpec:
    name: str
    model: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class MessageSpec:
    """A ``dmsetup message`` to send at virtual time ``at``; ``key`` is e.g. ``messages[1]``."""

    text: str
    at: float = 0.0
    key: str = ""


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    table: str
    disk: str | None = None  # the `disk` key, if given
    messages: tuple[MessageSpec, ...] = ()

    @property
    def length(self) -> int | None:
        """The table's length field in sectors, or None if it cannot be read."""
        return table_length(self.table)

    @property
    def backing(self) -> str | None:
        """The table's device field (the backing device name), or None."""
        return table_backing(self.table)


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    device: str
    pattern: str
    processes: int = 1
    iodepth: int = 1
    block_size: int = 4096
    read_fraction: float = 1.0  # fraction of reads: 1 for read patterns, 0 for writes
    direct: bool = False
    writeback: bool = False
    uid: int = 0
    gid: int = 0
    cgroup: int = 0
    pid: int | None = None  # first pid; processes get pid, pid+1, ...
    pgrp: int | None = None  # default: each process is its own group leader
    client: int | None = None
    start: float = 0.0
    stop: float | None = None  # None: until the end of the simulation
    think_time: float = 0.0
    rate: float | None = None  # bytes per second per process (a cap), None: no cap
    rate_iops: float | None = None  # requests per second per process (a cap)
    offset: int = 0  # the workload's region of its device: [offset, offset + size)
    size: int | None = None  # None: to the end of the device
    # On/off phases (start, stop) in seconds, sorted and disjoint; () means one phase start..stop.
    phases: tuple[tuple[float, float | None], ...] = ()

    @property
    def random(self) -> bool:
        return self.pattern.startswith("rand")

    @property
    def on_phases(self) -> tuple[tuple[float, float | None], ...]:
        """The phases during which the workload submits (``start``..``stop`` if none given)."""
        return self.phases or ((self.start, self.stop),)

    @property
    def interval(self) -> float:
        """Least seconds between two submissions of one process (its ``rate`` caps), or 0."""
        gap = 0.0
        if self.rate:
            gap = self.block_size / self.rate
        if self.rate_iops:
            gap = max(gap, 1.0 / self.rate_iops)
        return gap


@dataclass(frozen=True)
class Scenario:
    name: str
    duration: float
    disks: tuple[DiskSpec, ...]
    devices: tuple[DeviceSpec, ...]
    workloads: tuple[WorkloadSpec, ...]
    description: str = ""
    seed: int = 0
    hz: int = 1000
    interval: float = 1.0  # width of the timeline buckets in the result
    status_format: str = "legacy"
    scheduler: str = "ioband"  # ioband | none | sfq
    sfq_depth: int | None = None  # SFQ(D)'s D; None: the disk's queue depth
    windows: tuple[float, ...] = DEFAULT_WINDOWS  # metric windows, seconds
    efficiency: bool = True  # metrics: also run with scheduler "none" to compute efficiency
    source: str = field(default="<scenario>", compare=False)

    def with_overrides(
        self,
        *,
        duration: float | None = None,
        seed: int | None = None,
        status_format: str | None = None,
        scheduler: str | None = None,
        sfq_depth: int | None = None,
    ) -> Scenario:
        """A copy with some [simulation] values replaced (validated like the file's)."""
        changes: dict[str, Any] = {}
        if duration is not None:
            changes["duration"] = _positive_duration(duration, "duration")
        if seed is not None:
            changes["seed"] = _integer(seed, "seed", minimum=0)
        if status_format is not None:
            changes["status_format"] = _choice(status_format, "status_format", STATUS_FORMATS)
        if scheduler is not None:
            changes["scheduler"] = _choice(scheduler, "scheduler", SCHEDULERS)
        if sfq_depth is not None:
            changes["sfq_depth"] = _integer(sfq_depth, "sfq_depth", minimum=1, maximum=65536)
        return replace(self, **changes)

    def device(self, name: str) -> DeviceSpec:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)

    def disk(self, name: str) -> DiskSpec:
        for d in self.disks:
            if d.name == name:
                return d
        raise KeyError(name)

    def resolve(self, backing: str) -> DiskSpec | None:
        """The disk a table's device field names: a disk (``sda``, ``/dev/sda``) or one of its
        partitions (``sda1``, ``nvme0n1p2``)."""
        return resolve_backing(backing, self.disks)


# ---------------------------------------------------------------------------------------------
# Table-line helpers (only the fields the simulator needs; the engine parses the rest)


def table_length(table: str) -> int | None:
    words = table.split(maxsplit=2)
    if len(words) < 2:
        return None
    try:
        return int(words[1], 0)
    except ValueError:
        return None


def table_backing(table: str) -> str | None:
    words = table.split(maxsplit=4)
    return words[3] if len(words) >= 4 else None


def _strip_dev(name: str) -> str:
    return name.removeprefix("/dev/").removeprefix("mapper/")


def resolve_backing(backing: str, disks: tuple[DiskSpec, ...] | list[DiskSpec]) -> DiskSpec | None:
    name = _strip_dev(backing)
    best = None
    for d in disks:
        if name == d.name:
            return d
        rest = name[len(d.name) :] if name.startswith(d.name) else None
        if (
            rest
            and re.fullmatch(r"p?[0-9]+", rest)
            and (best is None or len(d.name) > len(best.name))
        ):
            best = d
    return best


# ---------------------------------------------------------------------------------------------
# Loading


def load_scenario(source: str | Path | Mapping[str, Any], *, name: str | None = None) -> Scenario:
    """A validated scenario from a dict, a TOML file path, a built-in name, or TOML text.

    A ``str`` is tried as an existing file, then as a built-in scenario name, then as TOML text
    (if it looks like TOML: it contains a newline or ``=``).
    """
    if isinstance(source, Mapping):
        return parse_scenario(source, name=name or "scenario", source="<scenario>")
    if isinstance(source, Path):
        return _load_file(source, name)
    path = Path(source)
    if "\n" not in source and path.is_file():
        return _load_file(path, name)
    if catalog.is_builtin(source):
        return load_builtin(source)
    if "\n" in source or "=" in source:
        return parse_toml(source, name=name or "scenario", source="<scenario>")
    raise _not_found(source)


def open_scenario(ref: str) -> Scenario:
    """What the command line accepts: a file path or a built-in scenario name."""
    path = Path(ref)
    if path.is_file():
        return _load_file(path, None)
    if catalog.is_builtin(ref):
        return load_builtin(ref)
    if path.exists():
        raise ScenarioError("not a regular file", source=ref)
    raise _not_found(ref)


def load_builtin(name: str) -> Scenario:
    name = catalog.canonical(name)
    return parse_toml(catalog.read_text(name), name=name, source=f"built-in scenario {name!r}")


def parse_toml(text: str, *, name: str = "scenario", source: str = "<scenario>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"invalid TOML: {exc}", source=source) from None
    return parse_scenario(data, name=name, source=source)


def _load_file(path: Path, name: str | None) -> Scenario:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ScenarioError(f"cannot read: {reason}", source=str(path)) from None
    return parse_toml(text, name=name or path.stem, source=str(path))


def _not_found(ref: str) -> ScenarioError:
    names = ", ".join(catalog.names()) or "none"
    return ScenarioError(
        f"no such file, and not a built-in scenario (built-ins: {names}; see `ioband sim --list`)",
        source=ref,
    )


def parse_scenario(
    data: Mapping[str, Any], *, name: str = "scenario", source: str = "<scenario>"
) -> Scenario:
    """Validate an already-parsed TOML document."""
    try:
        return replace(_parse(data, name), source=source)
    except ScenarioError as exc:
        raise exc.with_source(source) from None


# ---------------------------------------------------------------------------------------------
# Validation


TOP_KEYS = ("name", "description", "simulation", "metrics", "disk", "device", "workload")
SIM_KEYS = ("duration", "seed", "hz", "interval", "status_format", "scheduler", "sfq_depth")
METRICS_KEYS = ("windows", "efficiency")
PHASE_KEYS = ("start", "stop")
DEVICE_KEYS = ("name", "disk", "table", "messages")
MESSAGE_KEYS = ("at", "message")
WORKLOAD_KEYS = (
    "name", "device", "pattern", "processes", "iodepth", "block_size", "read_fraction", "direct",
    "writeback", "uid", "gid", "cgroup", "pid", "pgrp", "client", "start", "stop", "think_time",
    "rate", "rate_iops", "offset", "size", "phase",
)  # fmt: skip


def _parse(data: Mapping[str, Any], default_name: str) -> Scenario:
    _check_keys(data, TOP_KEYS, "")
    name = _string(data.get("name", default_name), "name")
    description = _string(data.get("description", ""), "description", empty=True)

    sim = _table(data, "simulation", required=True)
    _check_keys(sim, SIM_KEYS, "simulation.")
    if "duration" not in sim:
        raise ScenarioError(
            "missing required key (virtual seconds to simulate)", key="simulation.duration"
        )
    duration = _positive_duration(sim["duration"], "simulation.duration")
    seed = _integer(sim.get("seed", 0), "simulation.seed", minimum=0)
    hz = _integer(sim.get("hz", 1000), "simulation.hz", minimum=50, maximum=1_000_000)
    interval = _positive_duration(sim.get("interval", 1.0), "simulation.interval")
    status_format = _choice(
        sim.get("status_format", "legacy"), "simulation.status_format", STATUS_FORMATS
    )
    scheduler = _choice(sim.get("scheduler", "ioband"), "simulation.scheduler", SCHEDULERS)
    sfq_depth = (
        _integer(sim["sfq_depth"], "simulation.sfq_depth", minimum=1, maximum=65536)
        if "sfq_depth" in sim
        else None
    )
    if sfq_depth is not None and scheduler != "sfq":
        raise ScenarioError(
            f'only with scheduler = "sfq" (scheduler is {scheduler!r})', key="simulation.sfq_depth"
        )
    windows, efficiency = _parse_metrics(_table(data, "metrics"), duration)

    disks = tuple(_parse_disk(item, f"disk[{i}]") for i, item in enumerate(_array(data, "disk")))
    _unique([d.name for d in disks], "disk")

    devices = tuple(
        _parse_device(item, f"device[{i}]", disks) for i, item in enumerate(_array(data, "device"))
    )
    _unique([d.name for d in devices], "device")

    workloads = tuple(
        _parse_workload(item, f"workload[{i}]", devices)
        for i, item in enumerate(_array(data, "workload"))
    )
    _unique([w.name for w in workloads], "workload")
    _check_pids(workloads)

    return Scenario(
        name=name,
        description=description,
        duration=duration,
        seed=seed,
        hz=hz,
        interval=interval,
        status_format=status_format,
        scheduler=scheduler,
        sfq_depth=sfq_depth,
        windows=windows,
        efficiency=efficiency,
        disks=disks,
        devices=devices,
        workloads=workloads,
    )


def _parse_metrics(item: Mapping[str, Any], duration: float) -> tuple[tuple[float, ...], bool]:
    _check_keys(item, METRICS_KEYS, "metrics.")
    raw = item.get("windows", list(DEFAULT_WINDOWS))
    if not isinstance(raw, list) or not raw:
        raise ScenarioError(
            "must be a non-empty array of window lengths in seconds, e.g. [1, 10]",
            key="metrics.windows",
        )
    windows = tuple(_positive_duration(w, f"metrics.windows[{i}]") for i, w in enumerate(raw))
    if len(set(windows)) != len(windows):
        raise ScenarioError("window lengths must be distinct", key="metrics.windows")
    efficiency = _boolean(item.get("efficiency", True), "metrics.efficiency")
    return windows, efficiency


def _parse_disk(item: Any, where: str) -> DiskSpec:
    item = _as_table(item, where)
    name = _name(item, where)
    model = _string(item.get("model", "ssd"), f"{where}.model")
    if model not in MODELS:
        raise ScenarioError(
            f"unknown model {model!r} (known: {', '.join(sorted(MODELS))})", key=f"{where}.model"
        )
    cls = MODELS[model]
    _check_keys(item, ("name", "model", *cls.PARAMS), f"{where}.", what=f"a {model!r} disk")
    params: dict[str, Any] = {}
    for key, spec in cls.PARAMS.items():
        if key in item:
            params[key] = _model_param(item[key], spec, f"{where}.{key}")
        elif spec.required:
            raise ScenarioError(f"missing required key ({spec.help})", key=f"{where}.{key}")
        else:
            params[key] = spec.default
    try:
        cls.check(params)
    except ModelParamError as exc:
        raise ScenarioError(exc.rule, key=f"{where}.{exc.key}") from None
    return DiskSpec(name=name, model=model, params=params)


def _model_param(value: Any, spec: Param, key: str) -> Any:
    if spec.kind == "count":
        out = _integer(value, key, minimum=1 if spec.positive else 0)
    elif spec.kind in ("size", "rate"):
        try:
            out = parse_size(value)
        except ValueError as exc:
            raise ScenarioError(str(exc), key=key) from None
    elif spec.kind == "seconds":
        out = _duration(value, key)
    elif spec.kind == "number":
        out = _number(value, key)
    elif spec.kind == "choice":
        return _choice(value, key, spec.choices)
    else:  # pragma: no cover - a model declared an unknown kind
        raise AssertionError(f"unknown parameter kind {spec.kind!r}")
    if spec.positive and out <= 0:
        raise ScenarioError(f"must be greater than 0 (got {value!r})", key=key)
    if out < 0:
        raise ScenarioError(f"must not be negative (got {value!r})", key=key)
    return out


def _parse_device(item: Any, where: str, disks: tuple[DiskSpec, ...]) -> DeviceSpec:
    item = _as_table(item, where)
    _check_keys(item, DEVICE_KEYS, f"{where}.")
    name = _name(item, where)
    if len(name) > 127 or "/" in name or any(c.isspace() for c in name):
        raise ScenarioError(
            "a device name is at most 127 characters, without '/' or spaces", key=f"{where}.name"
        )
    if "table" not in item:
        raise ScenarioError(
            "missing required key (the dmsetup table line, "
            'e.g. "0 2097152 ioband sda 1 0 0 none weight 0 :40")',
            key=f"{where}.table",
        )
    table = _string(item["table"], f"{where}.table")
    if "\n" in table.strip():
        raise ScenarioError(
            "one table line only (one ioband target per device)", key=f"{where}.table"
        )
    table = table.strip()

    disk = None
    if "disk" in item:
        disk = _string(item["disk"], f"{where}.disk")
        if not any(d.name == disk for d in disks):
            raise ScenarioError(f"no disk named {disk!r} ({_declared(disks)})", key=f"{where}.disk")
        backing = table_backing(table)
        resolved = resolve_backing(backing, disks) if backing else None
        if resolved is not None and resolved.name != disk:
            raise ScenarioError(
                f"the table's device {backing!r} is on disk {resolved.name!r}, not {disk!r}",
                key=f"{where}.disk",
            )

    length = table_length(table)
    if length is not None and length <= 0:
        raise ScenarioError(
            f"the length field must be positive (got {length})", key=f"{where}.table"
        )

    raw = item.get("messages", [])
    if not isinstance(raw, list):
        raise ScenarioError("must be an array of message strings", key=f"{where}.messages")
    messages = tuple(
        _parse_message(m, f"messages[{i}]", f"{where}.messages[{i}]") for i, m in enumerate(raw)
    )
    return DeviceSpec(name=name, table=table, disk=disk, messages=messages)


def _parse_message(item: Any, key: str, where: str) -> MessageSpec:
    if isinstance(item, str):
        text, at = item, 0.0
    elif isinstance(item, Mapping):
        _check_keys(item, MESSAGE_KEYS, f"{where}.")
        if "message" not in item:
            raise ScenarioError("missing required key", key=f"{where}.message")
        text = _string(item["message"], f"{where}.message")
        at = _duration(item.get("at", 0.0), f"{where}.at")
    else:
        raise ScenarioError(
            'must be a message string ("weight 40") or a table {at = SECONDS, message = "..."}',
            key=where,
        )
    if not text.split():
        raise ScenarioError("empty message", key=where)
    return MessageSpec(text=text.strip(), at=at, key=key)


def _parse_workload(item: Any, where: str, devices: tuple[DeviceSpec, ...]) -> WorkloadSpec:
    item = _as_table(item, where)
    _check_keys(item, WORKLOAD_KEYS, f"{where}.")
    name = _name(item, where)
    if "device" not in item:
        raise ScenarioError(
            "missing required key (the ioband device it uses)", key=f"{where}.device"
        )
    device = _string(item["device"], f"{where}.device")
    dev = next((d for d in devices if d.name == device), None)
    if dev is None:
        raise ScenarioError(
            f"no device named {device!r} ({_declared(devices)})", key=f"{where}.device"
        )
    if "pattern" not in item:
        raise ScenarioError(
            f"missing required key (one of {', '.join(PATTERNS)})", key=f"{where}.pattern"
        )
    pattern = _choice(item["pattern"], f"{where}.pattern", PATTERNS)

    processes = _integer(
        item.get("processes", 1), f"{where}.processes", minimum=1, maximum=1_000_000
    )
    iodepth = _integer(item.get("iodepth", 1), f"{where}.iodepth", minimum=1, maximum=65536)
    try:
        block_size = parse_size(item.get("block_size", 4096))
    except ValueError as exc:
        raise ScenarioError(str(exc), key=f"{where}.block_size") from None
    if block_size <= 0 or block_size % SECTOR:
        raise ScenarioError(
            f"must be a positive multiple of {SECTOR} bytes (got {block_size})",
            key=f"{where}.block_size",
        )
    length = dev.length
    if length is not None and block_size > length * SECTOR:
        raise ScenarioError(
            f"{block_size} bytes is larger than device {device!r} ({length * SECTOR} bytes)",
            key=f"{where}.block_size",
        )

    if pattern in MIXED:
        read_fraction = _number(item.get("read_fraction", 0.5), f"{where}.read_fraction")
        if not 0.0 <= read_fraction <= 1.0:
            raise ScenarioError(
                f"must be between 0 and 1 (got {read_fraction})", key=f"{where}.read_fraction"
            )
    elif "read_fraction" in item:
        raise ScenarioError(
            f"only for the mixed patterns {' and '.join(MIXED)} (pattern is {pattern!r})",
            key=f"{where}.read_fraction",
        )
    else:
        read_fraction = 0.0 if pattern.endswith("write") else 1.0

    direct = _boolean(item.get("direct", False), f"{where}.direct")
    writeback = _boolean(item.get("writeback", False), f"{where}.writeback")
    if writeback and (direct or read_fraction == 1.0):
        raise ScenarioError(
            "writeback (writes issued by a flusher thread) needs buffered writes: "
            "a pattern with writes and direct = false",
            key=f"{where}.writeback",
        )

    ids: dict[str, Any] = {}
    for key in ("uid", "gid", "cgroup"):
        ids[key] = _integer(item.get(key, 0), f"{where}.{key}", minimum=0)
    for key in ("pid", "pgrp", "client"):
        ids[key] = (
            _integer(item[key], f"{where}.{key}", minimum=1 if key != "client" else 0)
            if key in item
            else None
        )

    phases: tuple[tuple[float, float | None], ...] = ()
    if "phase" in item:
        for key in ("start", "stop"):
            if key in item:
                raise ScenarioError(
                    "give either start/stop or [[workload.phase]] tables, not both",
                    key=f"{where}.{key}",
                )
        phases = _parse_phases(item["phase"], f"{where}.phase")
        start, stop = phases[0][0], phases[-1][1]
    else:
        start = _duration(item.get("start", 0.0), f"{where}.start")
        stop = _duration(item["stop"], f"{where}.stop") if "stop" in item else None
        if stop is not None and stop <= start:
            raise ScenarioError(f"must be after start ({start} s)", key=f"{where}.stop")
    think_time = _duration(item.get("think_time", 0.0), f"{where}.think_time")
    rate = _optional_rate(item, "rate", where, size=True)
    rate_iops = _optional_rate(item, "rate_iops", where, size=False)

    device_bytes = length * SECTOR if length is not None else None
    offset = _sectors(item.get("offset", 0), f"{where}.offset")
    if device_bytes is not None and offset + block_size > device_bytes:
        raise ScenarioError(
            f"the region must hold one block: offset {offset} + block_size {block_size} is "
            f"beyond device {device!r} ({device_bytes} bytes)",
            key=f"{where}.offset",
        )
    size = None
    if "size" in item:
        size = _sectors(item["size"], f"{where}.size")
        if size < block_size:
            raise ScenarioError(
                f"must be at least block_size ({block_size} bytes; got {size})", key=f"{where}.size"
            )
        if device_bytes is not None and offset + size > device_bytes:
            raise ScenarioError(
                f"offset + size = {offset + size} is beyond device {device!r} "
                f"({device_bytes} bytes)",
                key=f"{where}.size",
            )

    return WorkloadSpec(
        name=name,
        device=device,
        pattern=pattern,
        processes=processes,
        iodepth=iodepth,
        block_size=block_size,
        read_fraction=read_fraction,
        direct=direct,
        writeback=writeback,
        start=start,
        stop=stop,
        think_time=think_time,
        rate=rate,
        rate_iops=rate_iops,
        offset=offset,
        size=size,
        phases=phases,
        **ids,
    )


def _parse_phases(raw: Any, where: str) -> tuple[tuple[float, float | None], ...]:
    if not isinstance(raw, list) or not raw:
        raise ScenarioError(
            "must be one or more [[workload.phase]] tables with start and stop (seconds)",
            key=where,
        )
    phases: list[tuple[float, float | None]] = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        item = _as_table(item, at)
        _check_keys(item, PHASE_KEYS, f"{at}.")
        if "start" not in item:
            raise ScenarioError("missing required key (seconds)", key=f"{at}.start")
        start = _duration(item["start"], f"{at}.start")
        stop = _duration(item["stop"], f"{at}.stop") if "stop" in item else None
        if stop is not None and stop <= start:
            raise ScenarioError(f"must be after start ({start} s)", key=f"{at}.stop")
        if phases:
            prev = phases[-1][1]
            if prev is None:
                raise ScenarioError(
                    "only the last phase may leave out stop (it runs to the end)",
                    key=f"{where}[{i - 1}].stop",
                )
            if start < prev:
                raise ScenarioError(
                    f"phases must be in time order and not overlap (the previous one stops at "
                    f"{prev} s)",
                    key=f"{at}.start",
                )
        phases.append((start, stop))
    return tuple(phases)


def _optional_rate(item: Mapping[str, Any], key: str, where: str, *, size: bool) -> float | None:
    if key not in item:
        return None
    value = item[key]
    if size:
        try:
            out = float(parse_size(value))
        except ValueError as exc:
            raise ScenarioError(f"{exc} per second", key=f"{where}.{key}") from None
    else:
        out = _number(value, f"{where}.{key}")
    if out <= 0:
        raise ScenarioError(f"must be greater than 0 (got {value!r})", key=f"{where}.{key}")
    return out


def _sectors(value: Any, key: str) -> int:
    try:
        out = parse_size(value)
    except ValueError as exc:
        raise ScenarioError(str(exc), key=key) from None
    if out % SECTOR:
        raise ScenarioError(f"must be a multiple of {SECTOR} bytes (got {out})", key=key)
    return out


def _check_pids(workloads: tuple[WorkloadSpec, ...]) -> None:
    taken: list[tuple[int, int, str]] = []
    for i, w in enumerate(workloads):
        if w.pid is None:
            continue
        lo, hi = w.pid, w.pid + w.processes - 1
        for a, b, other in taken:
            if lo <= b and a <= hi:
                raise ScenarioError(
                    f"pids {lo}..{hi} overlap those of workload {other!r} ({a}..{b})",
                    key=f"workload[{i}].pid",
                )
        taken.append((lo, hi, w.name))


# ---------------------------------------------------------------------------------------------
# Small validators


def _check_keys(
    table: Mapping[str, Any], known: tuple[str, ...], prefix: str, *, what: str = ""
) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"
            scope = f" for {what}" if what else ""
            raise ScenarioError(f"unknown key{scope}{hint}", key=f"{prefix}{key}")


def _table(data: Mapping[str, Any], key: str, *, required: bool = False) -> Mapping[str, Any]:
    if key not in data:
        if required:
            raise ScenarioError(f"missing required table [{key}]", key=key)
        return {}
    value = data[key]
    if not isinstance(value, Mapping):
        raise ScenarioError(f"must be a table ([{key}])", key=key)
    return value


def _array(data: Mapping[str, Any], key: str) -> list[Any]:
    if key not in data:
        raise ScenarioError(f"at least one [[{key}]] is required", key=key)
    value = data[key]
    if not isinstance(value, list):
        raise ScenarioError(f"must be an array of tables: write [[{key}]], not [{key}]", key=key)
    if not value:
        raise ScenarioError(f"at least one [[{key}]] is required", key=key)
    return value


def _as_table(item: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(item, Mapping):
        raise ScenarioError("must be a table", key=where)
    return item


def _name(item: Mapping[str, Any], where: str) -> str:
    if "name" not in item:
        raise ScenarioError("missing required key", key=f"{where}.name")
    return _string(item["name"], f"{where}.name")


def _string(value: Any, key: str, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ScenarioError(f"must be a string (got {value!r})", key=key)
    if not empty and not value.strip():
        raise ScenarioError("must not be empty", key=key)
    return value


def _integer(
    value: Any, key: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ScenarioError(f"must be an integer (got {value!r})", key=key)
    if minimum is not None and value < minimum:
        raise ScenarioError(f"must be at least {minimum} (got {value})", key=key)
    if maximum is not None and value > maximum:
        raise ScenarioError(f"must be at most {maximum} (got {value})", key=key)
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"must be a number (got {value!r})", key=key)
    if not math.isfinite(value):
        raise ScenarioError(f"must be finite (got {value!r})", key=key)
    return float(value)


def _boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ScenarioError(f"must be true or false (got {value!r})", key=key)
    return value


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ScenarioError(f"must be one of {', '.join(choices)} (got {value!r})", key=key)
    return value


def _duration(value: Any, key: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ScenarioError(str(exc), key=key) from None


def _positive_duration(value: Any, key: str) -> float:
    seconds = _duration(value, key)
    if seconds <= 0:
        raise ScenarioError(f"must be greater than 0 (got {value!r})", key=key)
    return seconds


def _unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise ScenarioError(f"duplicate {what} name {n!r}", key=f"{what}[{i}].name")
        seen.add(n)


def _declared(items: tuple[Any, ...]) -> str:
    return "declared: " + ", ".join(repr(i.name) for i in items) if items else "none declared"
