"""The blkio-cgroup files over the engine: ``blkio.id``, ``blkio.devices``, ``blkio.settings``,
``blkio.stats`` (dm-ioband-interface.md §6), with flat groups (PRODUCT.md §3).

A cgroup is named by its id (its directory's inode) and whether it is the root cgroup, whose
group on every device is the default group. Only devices of group type ``cgroup`` take part.
A refused write raises an IobandError (EACCES, ENODEV, EINVAL) and changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ioband.cgroup.proc import Hierarchy
from ioband.core.engine import Engine
from ioband.core.grammar import GroupKey, MclockParams, key_text, parse_range, parse_weight
from ioband.core.model import Device, Group
from ioband.errors import AccessDenied, InvalidArgument, IobandError, NoSuchDevice, NotFound

IO_FILES = ("io.weight", "io.max", "io.stat")  # cgroup v2's names and formats
FILES = ("id", "devices", "settings", "stats", *IO_FILES)
NOT_ON_ROOT = ("io.weight", "io.max")  # as in cgroup v2 (CFTYPE_NOT_ON_ROOT)
IO_WEIGHT_MIN, IO_WEIGHT_MAX, IO_WEIGHT_DEFAULT = 1, 10000, 100  # CGROUP_WEIGHT_*
IO_MAX_KEYS = ("rbps", "wbps", "riops", "wiops")


# -- naming cgroups ------------------------------------------------------------------------------
def cgroup_dir(hierarchy: Hierarchy | None, path: str) -> tuple[Path, bool]:
    """(the cgroup's directory, whether it is the root cgroup) for a path relative to the
    hierarchy's root. ENOENT when there is no such cgroup; EINVAL for ``.``/``..``."""
    if hierarchy is None:
        raise NotFound("No cgroup hierarchy is mounted (daemon.cgroup_hierarchy)")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise InvalidArgument(f"Invalid cgroup {path!r}: '.' and '..' are not allowed")
    full = hierarchy.mount.joinpath(*parts)
    if not full.is_dir():
        raise NotFound(f"No cgroup {'/' + '/'.join(parts)!r} in {hierarchy.mount}")
    return full, not parts


def cgroup_ino(directory: Path) -> int:
    try:
        return os.stat(directory).st_ino
    except OSError as err:
        raise NotFound(f"No cgroup {str(directory)!r}: {err.strerror}") from None


# -- the files -----------------------------------------------------------------------------------
def _cgroup_devices(engine: Engine) -> Iterator[Device]:
    return (dev for dev in engine.devices.values() if dev.type_name == "cgroup")


def _group(dev: Device, cgid: int, root: bool, path: str | None = None) -> Group | None:
    """The cgroup's group on ``dev``: by id, else by its path (a group attached by path or by
    a rule); the default group for the root cgroup."""
    if root:
        return dev.head
    g = dev.groups.get(cgid)
    return g if g is not None or path is None else dev.groups.get(path)


def _cgroup_device(engine: Engine, name: str) -> Device:
    dev = engine.devices.get(name)
    if dev is None or dev.type_name != "cgroup":
        raise NoSuchDevice(f"{name}: no ioband device of type cgroup by that name")
    return dev


def read_id(cgid: int) -> str:
    return f"{cgid}\n"


def read_devices(engine: Engine) -> str:
    """One header per device group (creation order), then its cgroup-type members."""
    lines = []
    for dp in engine.device_groups.values():
        lines.append(f"{dp.name} policy={dp.policy_name} io_throttle={dp.io_throttle}"
                     f" io_limit={dp.io_limit}{dp.policy.show_device()}")  # fmt: skip
        lines.extend(f"  {dev.name}" for dev in dp.devices if dev.type_name == "cgroup")
    return "".join(line + "\n" for line in lines)


def write_devices(engine: Engine, root: bool, line: str, now: int = 0) -> str:
    """``<device-group-id|device-name> <message words...>``; the device the message went to."""
    if not root:
        raise AccessDenied("blkio.devices can only be written at the root cgroup")
    words = line.split()
    if not words:
        raise InvalidArgument("blkio.devices: empty write")
    target, rest = words[0], words[1:]
    dev = None
    for dp in engine.device_groups.values():
        if dp.name == target and dp.devices:
            dev = dp.devices[0]
        else:
            dev = next((d for d in dp.devices if d.name == target), None)
        if dev is not None:
            break
    if dev is None:
        raise NoSuchDevice(f"blkio.devices: no device group or device {target!r}")
    if dev.type_name != "cgroup":
        raise NoSuchDevice(f"blkio.devices: {dev.name} is of type {dev.type_name}, not cgroup")
    engine.message(dev.name, rest, now)
    return dev.name


def _per_device(engine: Engine, cgid: int, root: bool, render, path: str | None = None) -> str:
    """One line per cgroup-type device on which this cgroup has a group."""
    lines = []
    for dev in _cgroup_devices(engine):
        g = _group(dev, cgid, root, path)
        if g is not None:
            lines.append(f"{dev.name}{render(dev, g)}\n")
    return "".join(lines)


def read_settings(engine: Engine, cgid: int, root: bool, path: str | None = None) -> str:
    return _per_device(engine, cgid, root, lambda dev, g: dev.dp.policy.show_group(g), path)


def write_settings(engine: Engine, cgid: int, root: bool, line: str, now: int = 0,
                   path: str | None = None) -> str:  # fmt: skip
    """``<dev> <value>``: attach-or-update this cgroup's group (root: the default group; a
    group attached by the cgroup's ``path`` or by a rule is the one updated); ``<dev>``: detach
    it. Returns the device name."""
    words = line.split()
    if len(words) not in (1, 2):
        raise InvalidArgument(f"blkio.settings: expected '<device> [<value>]', got {line!r}")
    dev = _cgroup_device(engine, words[0])
    g = None if root else _group(dev, cgid, False, path)
    if len(words) == 1:
        if root:
            raise InvalidArgument("blkio.settings: the root cgroup's group cannot be detached")
        if g is None:
            raise InvalidArgument(f"blkio.settings: this cgroup has no group on {dev.name}")
        engine.message(dev.name, ["detach", key_text(g.id)], now)
        return dev.name
    value = words[1]
    cmd = "range-bw" if dev.dp.policy_name == "range-bw" else "weight"
    if cmd == "range-bw":
        parse_range(value, "blkio.settings: Invalid range-bw (MIN:MAX)")
    else:
        parse_weight(value, "blkio.settings: Invalid weight")
    if root:
        engine.message(dev.name, [cmd, f":{value}"], now)
        return dev.name
    _set_on_group(engine, dev, cgid, g, cmd, value, now)
    return dev.name


def _set_on_group(engine: Engine, dev: Device, cgid: int, g: Group | None, cmd: str,
                  value: object, now: int) -> None:  # fmt: skip
    """``cmd KEY:value`` on the cgroup's group ``g``; where it has none, a group is attached
    for it first, and detached again if the message is refused (nothing changed)."""
    key = g.id if g is not None else cgid
    if g is None:
        engine.message(dev.name, ["attach", str(cgid)], now)
    try:
        engine.message(dev.name, [cmd, f"{key_text(key)}:{value}"], now)
    except IobandError:
        if g is None:
            engine.message(dev.name, ["detach", str(cgid)], now)
        raise


def _stat_numbers(engine: Engine, g: Group) -> str:
    return engine.group_status(g, "diskstats").split(" ", 2)[2]  # without the group id


def read_stats(engine: Engine, cgid: int, root: bool, path: str | None = None) -> str:
    return _per_device(engine, cgid, root, lambda dev, g: " " + _stat_numbers(engine, g), path)


# -- the cgroup v2 files: io.weight, io.max, io.stat ---------------------------------------------
# The kernel's formats, with the device named by its ioband name instead of MAJ:MIN.
def _weight_devices(engine: Engine) -> Iterator[Device]:
    """The cgroup-type devices whose device group runs a weight policy (io.weight's devices)."""
    return (dev for dev in _cgroup_devices(engine) if dev.dp.policy.family == "weight")


def _io_weight(text: str) -> int:
    value = int(text) if text.isdigit() else None
    if value is None or not IO_WEIGHT_MIN <= value <= IO_WEIGHT_MAX:
        raise InvalidArgument(
            f"io.weight: weight {text!r} is not an integer in {IO_WEIGHT_MIN}..{IO_WEIGHT_MAX}"
        )
    return value


def read_io_weight(engine: Engine, cgid: int, path: str | None, default: int | None) -> str:
    """``default N`` (the value last written, else the kernel's 100), then ``DEVICE N`` for each
    weight-policy device where the cgroup's group has another weight."""
    lines = [f"default {default if default is not None else IO_WEIGHT_DEFAULT}"]
    for dev in _weight_devices(engine):
        g = _group(dev, cgid, False, path)
        if g is not None and g.weight != default:
            lines.append(f"{dev.name} {g.weight}")
    return "".join(line + "\n" for line in lines)


def write_io_weight(engine: Engine, cgid: int, path: str | None, line: str,
                    defaults: dict[int, int], now: int = 0) -> None:  # fmt: skip
    """``N`` or ``default N``: the cgroup's weight on every weight-policy device where it has no
    weight of its own (a group is attached where it has none); ``DEVICE N``: on that device;
    ``DEVICE default``: back to the default (without a default written: the group is detached,
    and the cgroup shares the device's default group again)."""
    words = line.split()
    if len(words) == 1:
        words = ["default", words[0]]
    if len(words) != 2:
        raise InvalidArgument(
            "io.weight: expected 'default N', 'N', '<device> N' or '<device> default'"
            f" (N in {IO_WEIGHT_MIN}..{IO_WEIGHT_MAX}), got {line.strip()!r}"
        )
    target, value = words
    if target == "default":
        weight = _io_weight(value)
        old = defaults.get(cgid)
        for dev in list(_weight_devices(engine)):
            g = _group(dev, cgid, False, path)
            if g is None or (old is not None and g.weight == old):
                _set_on_group(engine, dev, cgid, g, "weight", weight, now)
        defaults[cgid] = weight
        return
    dev = _cgroup_device(engine, target)
    if dev.dp.policy.family != "weight":
        raise InvalidArgument(f"io.weight: {dev.name} runs {dev.dp.policy_name}, which has no"
                              " weights (its groups are set through blkio.settings)")  # fmt: skip
    g = _group(dev, cgid, False, path)
    if value == "default":
        default = defaults.get(cgid)
        if default is not None:
            _set_on_group(engine, dev, cgid, g, "weight", default, now)
        elif g is not None:
            engine.message(dev.name, ["detach", key_text(g.id)], now)
        return
    _set_on_group(engine, dev, cgid, g, "weight", _io_weight(value), now)


def _cap_devices(engine: Engine) -> Iterator[Device]:
    """The cgroup-type devices whose device group runs the mclock policy (io.max's devices)."""
    return (dev for dev in _cgroup_devices(engine) if dev.dp.policy_name == "mclock")


def read_io_max(engine: Engine, cgid: int, path: str | None) -> str:
    """``DEVICE rbps=N wbps=N riops=N wiops=N`` (``max`` where there is no cap) for each mclock
    device where the cgroup's group has a cap; nothing else, as the kernel shows."""
    lines = []
    for dev in _cap_devices(engine):
        g = _group(dev, cgid, False, path)
        params = dev.dp.policy.carried_value(g) if g is not None else None
        caps = params.caps if isinstance(params, MclockParams) else {}
        if caps:
            values = " ".join(
                f"{key}={caps[key].rate if key in caps else 'max'}" for key in IO_MAX_KEYS
            )
            lines.append(f"{dev.name} {values}\n")
    return "".join(lines)


def write_io_max(engine: Engine, cgid: int, path: str | None, line: str, now: int = 0) -> None:
    """``DEVICE rbps=N|max wbps=... riops=... wiops=...``: checked as the kernel does (EINVAL,
    ENODEV), then the caps of the cgroup's group on that device (mclock: only the keys named
    change, ``max`` removes one; a group is attached where the cgroup has none). A device
    running another policy has no caps: refused, nothing changed."""
    words = line.split()
    if not words:
        raise InvalidArgument("io.max: expected '<device> rbps=N wbps=N riops=N wiops=N'")
    dev = _cgroup_device(engine, words[0])
    items = []
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep or key not in IO_MAX_KEYS:
            raise InvalidArgument(f"io.max: {word!r}: expected KEY=VALUE with KEY one of"
                                  f" {', '.join(IO_MAX_KEYS)}")  # fmt: skip
        if value != "max" and not value.isdigit():
            raise InvalidArgument(f"io.max: {key}={value!r}: the value is an integer or 'max'")
        items.append(f"{key}={'max' if value in ('max', '0') else value}")
    if dev.dp.policy_name != "mclock":
        raise IobandError(
            f"io.max: {dev.name} runs {dev.dp.policy_name}, which has no per-group caps (the"
            " mclock policy has them: 'policy mclock'); nothing was changed",
            errno_name="EOPNOTSUPP",
        )
    if not items:
        return  # the kernel accepts a device alone and changes nothing
    _set_on_group(engine, dev, cgid, _group(dev, cgid, False, path), "cap", ",".join(items), now)


def read_io_stat(engine: Engine, cgid: int, root: bool, path: str | None) -> str:
    """``DEVICE rbytes= wbytes= rios= wios= dbytes= dios=`` for each device where the cgroup
    has a group (the root: the default groups). ioband schedules no discards: d* are 0."""

    def render(dev: Device, g: Group) -> str:
        return (f" rbytes={g.sectors[0] * 512} wbytes={g.sectors[1] * 512} rios={g.ios[0]}"
                f" wios={g.ios[1]} dbytes=0 dios=0")  # fmt: skip

    return _per_device(engine, cgid, root, render, path)


def write_stats(engine: Engine, cgid: int, root: bool, line: str) -> None:
    """``<dev>``: zero this cgroup's counters there (nothing to do without a group)."""
    words = line.split()
    if len(words) != 1:
        raise InvalidArgument(f"blkio.stats: expected one device name, got {line!r}")
    dev = _cgroup_device(engine, words[0])
    g = _group(dev, cgid, root)
    if g is not None:
        g.reset_stats()


# -- removed cgroups -----------------------------------------------------------------------------
class CgroupWatcher:
    """Finds the groups of cgroup-type devices whose cgroup was removed.

    An id is watched once it has been seen as a live cgroup (a settings write, or a scan of the
    hierarchy); when its directory is gone, ``gone()`` reports it. Ids that never were a live
    cgroup (``attach 2`` by hand) are left alone.
    """

    def __init__(self, hierarchy: Hierarchy) -> None:
        self.hierarchy = hierarchy
        self.known: dict[int, Path] = {}  # cgroup id -> its directory

    def remember(self, cgid: int, directory: Path) -> None:
        self.known[cgid] = directory

    def _alive(self, cgid: int) -> bool:
        path = self.known[cgid]
        try:
            return os.stat(path).st_ino == cgid
        except OSError:
            return False

    def _scan(self) -> dict[int, Path]:
        found = {}
        for top, _, _ in os.walk(self.hierarchy.mount):
            try:
                found[os.stat(top).st_ino] = Path(top)
            except OSError:
                continue
        return found

    def gone(self, engine: Engine) -> list[tuple[str, GroupKey]]:
        """(device, key) pairs to detach now. A group attached by path stays when its cgroup
        goes (the path keeps its value for a cgroup re-created there); one that a rule attached
        goes with its cgroup (the rule attaches the next one)."""
        by_rule = sorted(
            (dev.name, key)
            for dev in _cgroup_devices(engine)
            for key, g in dev.groups.items()
            if isinstance(key, str) and g.by_rule
            and not (self.hierarchy.mount / key).is_dir()
        )  # fmt: skip
        attached = {
            (dev.name, gid)
            for dev in _cgroup_devices(engine)
            for gid in dev.groups
            if isinstance(gid, int)
        }
        ids = {gid for _, gid in attached}
        if any(gid not in self.known for gid in ids):
            scanned = self._scan()
            for gid in ids:
                if gid not in self.known and gid in scanned:
                    self.known[gid] = scanned[gid]
        self.known = {gid: path for gid, path in self.known.items() if gid in ids}
        dead = {gid for gid in self.known if not self._alive(gid)}
        for gid in dead:
            del self.known[gid]
        return [*sorted((name, gid) for name, gid in attached if gid in dead), *by_rule]
