"""The daemon's persistent state: the devices as they are now, saved after every change.

The file is JSON::

    {"format": "ioband-state", "version": 1,
     "devices": [{"name": ..., "table": ..., "messages": [...], "direct": false,
                  "read_only": false, "control": true, "mountpoint": null,
                  "writeback_cache": false, "write_behind": true,
                  "rules": [{"cgroup": "machine.slice/*.scope", "weight": 200}]}, ...],
     "removed": ["names of configured devices removed at run time"]}

``table`` is the engine's current table line with the backing path the device was created with,
so that ``create`` rebuilds it (weights, groups, io_throttle, io_limit, token and policy are all
in the table; a group attached by cgroup path is written ``/<path>:<value>``, and groups that a
rule attached are not in it: ``rules``, the device's ``[[device.rule]]`` tables as the
configuration writes them, attach them again). Under the weight policies the table's token
word is the token the user set (0 when left at its default, so that a later ``io_limit`` change
recomputes it as before the restart), and a ``carryover`` the user set, which no table shows,
is kept as a message.

Saving is atomic: a temporary file is written and fsynced, the current file is hard-linked to
``<file>.prev``, the temporary file renamed over it and the directory fsynced. A file that does
not parse is refused (it is moved aside to ``<file>.corrupt``) and ``<file>.prev``, the
previous good state, is used instead.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field

from ioband.control.config import DEVICE_KEYS
from ioband.core.grammar import Rule, parse_rule, parse_table
from ioband.errors import InvalidArgument

#: A saved device's fields: the configuration's ``[[device]]`` keys, its rules kept as a list.
_DEVICE_FIELDS = {*(k for k in DEVICE_KEYS if k != "rule"), "rules"}

FORMAT = "ioband-state"
VERSION = 1


class StateError(InvalidArgument):
    """A state file that cannot be used."""


@dataclass(frozen=True)
class DeviceState:
    name: str
    table: str
    messages: tuple[str, ...] = ()
    direct: bool = False
    read_only: bool = False
    control: bool = True
    mountpoint: str | None = None
    writeback_cache: bool = False
    write_behind: bool = True
    allow: tuple[str, ...] = ()
    allow_ro: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()


_LISTS = ("messages", "allow", "allow_ro")  # kept as tuples, saved as JSON arrays


@dataclass
class State:
    devices: list[DeviceState] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "devices": [
                        {
                            **vars(d),
                            **{k: list(getattr(d, k)) for k in _LISTS},
                            "rules": [r.fields() for r in d.rules],
                        }
                        for d in self.devices
                    ],
                    "removed": sorted(set(self.removed)),
                },
                indent=1,
            )
            + "\n"
        )


def parse(text: str, path: str) -> State:
    try:
        data = json.loads(text)
    except ValueError as err:
        raise StateError(f"{path}: not a complete ioband state file ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateError(f"{path}: not an ioband state file")
    if data.get("version") != VERSION:
        raise StateError(f"{path}: unsupported state version {data.get('version')!r}")
    devices, removed = data.get("devices"), data.get("removed", [])
    if not isinstance(devices, list) or not isinstance(removed, list):
        raise StateError(f"{path}: 'devices' and 'removed' must be lists")
    out = State(removed=[])
    for i, item in enumerate(devices):
        ok = (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and isinstance(item.get("table"), str)
            and all(
                isinstance(item.get(k, True), bool)
                for k in ("direct", "read_only", "control", "writeback_cache", "write_behind")
            )
            and isinstance(item.get("mountpoint", ""), str | None)
            and all(isinstance(item.get(k, []), list) for k in _LISTS)
            and all(isinstance(m, str) for k in _LISTS for m in item.get(k, []))
            and set(item) <= _DEVICE_FIELDS
        )
        if not ok:
            raise StateError(f"{path}: devices[{i}] is malformed")
        rules = _rules(item, f"{path}: devices[{i}]")
        lists = {k: tuple(item.get(k, [])) for k in _LISTS}
        out.devices.append(DeviceState(**{**item, **lists, "rules": rules}))
    for name in removed:
        if not isinstance(name, str):
            raise StateError(f"{path}: 'removed' must list device names")
        out.removed.append(name)
    return out


def _rules(item: dict, where: str) -> tuple[Rule, ...]:
    raw = item.get("rules", [])
    if not raw:
        return ()
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise StateError(f"{where}.rules must be a list of tables")
    try:
        gtype = parse_table(item["table"]).type
        return tuple(parse_rule(r, f"{where}.rules[{j}]", gtype) for j, r in enumerate(raw))
    except InvalidArgument as err:
        raise StateError(str(err)) from None


def _read(path: str) -> State | None:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise StateError(f"{path}: cannot read: {err}") from None
    return parse(text, path)


def remove_stale_temporaries(path: str) -> list[str]:
    """Delete ``<path>.tmp.<pid>`` files whose writer is gone (a daemon killed while saving):
    they are never read, and would pile up. Returns the names removed."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = os.path.basename(path) + ".tmp."
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix) :]
        if not name.startswith(prefix) or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and os.path.exists(f"/proc/{pid}"):
            continue  # a live process (another daemon's save in progress)
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
            removed.append(name)
    return removed


def load(path: str) -> tuple[State | None, list[str]]:
    """The saved state (None: there is none) and the problems met on the way (to be logged).
    A corrupt file is moved to ``<path>.corrupt`` and the previous good state used; when that
    is unusable too, StateError. Temporary files left by a killed daemon are removed."""
    problems: list[str] = [f"removed {name}, left by an interrupted save"
                           for name in remove_stale_temporaries(path)]  # fmt: skip
    refused = False
    try:
        state = _read(path)
    except StateError as err:
        refused = True
        problems.append(f"refused state file {err}; moved to {path}.corrupt")
        with contextlib.suppress(OSError):
            os.replace(path, path + ".corrupt")
        state = None
    else:
        if state is not None:
            return state, problems
    prev = path + ".prev"
    try:
        state = _read(prev)
    except StateError as err:
        raise StateError(f"{err} (and {path} is missing or refused)") from None
    if state is not None and refused:
        problems.append(f"using the previous good state {prev}")
    elif state is not None:
        problems.append(f"{path} is missing; using the previous good state {prev}")
    return state, problems


def save(path: str, state: State) -> None:
    """Write atomically; the current file becomes ``<path>.prev``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(state.to_json())
        f.flush()
        os.fsync(f.fileno())
    prev = path + ".prev"
    if os.path.exists(path):  # else keep the .prev there is (the current file was refused)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(prev)
        os.link(path, prev)
    os.replace(tmp, path)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
