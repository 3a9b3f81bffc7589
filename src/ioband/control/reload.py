"""Hitless reload: what a new configuration file changes, worked out without touching the daemon.

A reload used to remove and re-create every device whose entry changed, which reset the
connections of its clients, the run-time settings made with ``ioband message`` and the counters.
:func:`plan_reload` instead compares three things and returns a :class:`Plan` of dm-ioband
messages (the pieces a ``dmsetup reload`` + ``resume`` of a new table carries) that the daemon
applies on its loop, between two requests, without closing anything:

* the **old file** (the configuration the daemon runs with),
* the **new file**,
* the **running state** (the devices as the engine has them now, as the state file saves them:
  :class:`ioband.control.state.DeviceState`).

The merge rule (three-way, setting by setting)
----------------------------------------------
The old and the new file are each built on a scratch engine (tables, then ``messages``), so
that defaults, a shared device group and the messages list are resolved the way the daemon
resolves them; the *effective* settings are compared: ``io_throttle``, ``io_limit``, ``policy``,
``token`` and ``carryover`` (device-group wide), the group ``type``, and each group's attachment
and its weight (or ``min:max`` under range-bw), the default group's included.

* A setting the new file changes relative to the old file takes the new file's value.
* A setting the new file does not change keeps its running value, so that changes made with
  ``ioband message`` (or ``ioband cgroup``) survive a reload that does not touch them, and so do
  the counters (no message of a plan resets them; ``reset`` in a ``messages`` list only acts
  when the device is created).
* A ``policy`` switch resets every group's parameters (dm-ioband's semantics), so it is applied
  first and then ``token``, ``carryover`` and every group's value of the device group are set
  from the new file. A group ``type`` change needs every group detached first (dm-ioband refuses
  it otherwise): the device's groups are then the new file's.
* A group the file keeps but that was detached at run time stays detached (its attachment is a
  setting the file did not change); a group attached at run time stays attached.
* Devices: new in the file → created (one already running, created at run time, is kept); no
  longer in the file → removed; removed at run time and still in the file → stays removed.

Whether a change of a device's other fields applies in place or needs the device re-created is
:data:`FIELD_RULES` (one line per field). Re-creation closes the device's connections; the plan
says why. The plan is dry-run on a scratch copy of the running state, so a file whose changes
cannot be applied is refused as a whole (:class:`ConfigError` naming the device and key) and
nothing changes.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ioband.control.config import Config, ConfigError, DeviceConfig
from ioband.control.state import DeviceState
from ioband.core.engine import DEFAULT_NR_REQUESTS, BackingInfo, Engine
from ioband.core.grammar import (
    CAP_KEYS,
    ID_ANY,
    GroupKey,
    MclockParams,
    format_caps,
    key_order,
    key_text,
)
from ioband.errors import IobandError


class Rule(enum.Enum):
    MERGE = "merge"  # diffed setting by setting into engine messages (table, messages)
    IN_PLACE = "in place"  # applied to the running device (see Daemon.set_option)
    RECREATE = "re-create"  # the device is removed and created again (connections close)


@dataclass(frozen=True)
class FieldRule:
    """How a change of one ``[[device]]`` field is applied: for an NBD export, for a FUSE
    mount, and why (logged when the device has to be re-created)."""

    export: Rule
    mount: Rule
    why: str


#: Every ``[[device]]`` field but ``name``. A field missing here is re-created (safe default),
#: with a reason naming this table. An IN_PLACE field of an export is handed to
#: ``Daemon.set_option``, which sets the attribute of the same name on the export (read when a
#: client connects) unless it has its own handling (read_only, control).
FIELD_RULES: dict[str, FieldRule] = {
    "table": FieldRule(Rule.MERGE, Rule.MERGE, "diffed into messages"),
    "messages": FieldRule(Rule.MERGE, Rule.MERGE, "diffed into messages"),
    "read_only": FieldRule(
        Rule.IN_PLACE, Rule.RECREATE, "a FUSE worker mounts read-only or read-write"
    ),
    "control": FieldRule(
        Rule.IN_PLACE,
        Rule.RECREATE,
        "a FUSE worker is started with or without its admission channel",
    ),
    "direct": FieldRule(
        Rule.RECREATE, Rule.RECREATE, "the backing store is opened with or without O_DIRECT"
    ),
    "mountpoint": FieldRule(Rule.RECREATE, Rule.RECREATE, "the FUSE mount moves"),
    "writeback_cache": FieldRule(Rule.RECREATE, Rule.RECREATE, "a FUSE mount option"),
    "write_behind": FieldRule(Rule.RECREATE, Rule.RECREATE, "a FUSE worker option"),
    "allow": FieldRule(Rule.IN_PLACE, Rule.IN_PLACE, "checked when a client connects"),
    "allow_ro": FieldRule(Rule.IN_PLACE, Rule.IN_PLACE, "checked when a client connects"),
    "rules": FieldRule(Rule.IN_PLACE, Rule.IN_PLACE, "matched when a new submitter does I/O"),
    "cluster": FieldRule(Rule.IN_PLACE, Rule.IN_PLACE, "read by the cluster agent each exchange"),
}

#: The daemon-wide settings a reload applies; every other ``Config`` field (sockets, ``hz``,
#: ``io_threads``, ``cgroup_hierarchy``, ``state_file``, ``metrics``, and any field added later)
#: is read once at start: a change is logged as needing a restart.
RELOADED_CONFIG_FIELDS = frozenset({"devices", "source", "admin_group"})


@dataclass(frozen=True)
class Settings:
    """A device's effective settings, as an engine holds them once its table and messages ran.
    ``token``/``carryover``: what the user set (0: the default) under the weight policies;
    under range-bw ``token`` is the table's display-only pool and ``carryover`` None.
    ``groups``: group id (-1: the default group) → weight, or (min, max) under range-bw.
    ``io_limit`` is the effective limit (derived from the queue for ``io_limit 0``);
    ``adaptive``: the table said ``io_limit 0`` (the window adapts, the table shows 0)."""

    backing: str
    length: int
    device_group: str
    io_throttle: int
    io_limit: int
    policy: str
    family: str
    token: int
    carryover: int | None
    type: str
    groups: Mapping[GroupKey, object]
    adaptive: bool = False

    @property
    def io_limit_word(self) -> int:
        """io_limit as a table or a message says it: 0 for an adaptive window."""
        return 0 if self.adaptive else self.io_limit


def settings_of(engine: Engine, name: str) -> Settings:
    dev = engine.device(name)
    dp = dev.dp
    policy = dp.policy
    if hasattr(policy, "token_set"):
        token, carryover = policy.token_set, policy.carryover_set
    elif hasattr(policy, "token_bucket"):
        token, carryover = policy.token_bucket * policy.carryover, None
    else:  # mclock: no tokens
        token, carryover = 0, None
    groups = {g.id: policy.carried_value(g) for g in dev.all_groups() if not g.by_rule}
    return Settings(
        dev.backing,
        dev.length,
        dp.name,
        dp.io_throttle,
        dp.io_limit,
        dp.policy_name,
        policy.family,
        token,
        carryover,
        dev.type_name,
        groups,
        dp.adaptive is not None,
    )


def lenient_resolver(path: str) -> BackingInfo:
    """For scratch engines: a backing store that is gone (or not checked yet) still resolves;
    whether it can be opened is checked where a device is really created."""
    from ioband.nbd.backing import resolve

    return resolve(path) or BackingInfo(path, DEFAULT_NR_REQUESTS)


# -- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One engine message for a running device, and why it is sent."""

    device: str
    words: tuple[str, ...]
    why: str

    def __str__(self) -> str:
        return f"{self.device}: {' '.join(self.words)} ({self.why})"


@dataclass(frozen=True)
class OptionChange:
    """An IN_PLACE field of a running device changes."""

    device: str
    field: str
    old: object
    new: object

    def __str__(self) -> str:
        return f"{self.device}: {self.field} {self.old!r} -> {self.new!r}"


@dataclass
class Plan:
    remove: list[str] = field(default_factory=list)  # no longer in the file
    recreate: dict[str, list[str]] = field(default_factory=dict)  # name -> reasons
    create: list[str] = field(default_factory=list)  # new in the file (or not running)
    steps: list[Step] = field(default_factory=list)  # messages, in the order to apply them
    options: list[OptionChange] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what is left as it runs, and why
    restart: list[str] = field(default_factory=list)  # daemon settings for the next start

    def to_json(self) -> dict[str, object]:
        return {
            "removed": list(self.remove),
            "recreated": {n: list(r) for n, r in self.recreate.items()},
            "created": list(self.create),
            "messages": [
                {"device": s.device, "message": " ".join(s.words), "why": s.why} for s in self.steps
            ],
            "options": [
                {"device": o.device, "field": o.field, "old": o.old, "new": o.new}
                for o in self.options
            ],
            "notes": list(self.notes),
            "restart": list(self.restart),
        }

    def lines(self) -> list[str]:
        """What the plan does, one line each, in the order it is applied (the log and
        ``ioband reload``)."""
        out = [f"remove {n} (no longer in the file)" for n in self.remove]
        out += [f"re-create {n}: {'; '.join(r)}" for n, r in self.recreate.items()]
        out += [f"message {s}" for s in self.steps]
        out += [f"set {o}" for o in self.options]
        out += [f"create {n}" for n in self.create]
        out += [f"note: {n}" for n in self.notes]
        out += [f"restart needed: {f} changed (read once at start)" for f in self.restart]
        return out or ["nothing to change"]


def _build(config: Config, *, strict: bool) -> tuple[Engine, dict[str, int]]:
    """``config``'s devices on a scratch engine, in file order (so that a shared device group
    resolves as in the daemon). ``strict``: a table or message that is refused raises
    ConfigError naming it; otherwise (the old file) the device is left out."""
    engine = Engine(hz=config.hz, resolver=lenient_resolver)
    index: dict[str, int] = {}
    for i, dev in enumerate(config.devices):
        where = f"device[{i}]"
        try:
            try:
                engine.create(dev.name, dev.table)
            except IobandError as err:
                raise ConfigError.of(config.source, f"{where}.table", err) from None
            for j, message in enumerate(dev.messages):
                try:
                    engine.message(dev.name, message)
                except IobandError as err:
                    key = f"{where}.messages[{j}]"
                    raise ConfigError.of(config.source, key, err, f"{message!r}: ") from None
        except ConfigError:
            if dev.name in engine.devices:
                engine.remove(dev.name)
            if strict:
                raise
            continue
        index[dev.name] = i
    return engine, index


def running_engine(running: Sequence[DeviceState], hz: int) -> Engine:
    """A scratch copy of the running devices' settings (their saved tables and messages)."""
    engine = Engine(hz=hz, resolver=lenient_resolver)
    for dev in running:
        engine.create(dev.name, dev.table)
        for message in dev.messages:
            engine.message(dev.name, message)
    return engine


def _value_words(family: str, gid: GroupKey, value: object) -> list[tuple[str, ...]]:
    """The messages that set a group's value (mclock: several, the limit lifted first so that
    a reservation above the old limit is accepted)."""
    who = "" if gid == ID_ANY else key_text(gid)
    if family == "range-bw":
        lo, hi = value  # type: ignore[misc]
        return [("range-bw", f"{who}:{lo}:{hi}")]
    if isinstance(value, MclockParams):
        caps = ",".join(f"{key}=max" for key in CAP_KEYS if key not in value.caps)
        given = format_caps(value.caps)
        return [
            ("limit", f"{who}:0"),
            ("reservation", f"{who}:{value.reservation}"),
            ("weight", f"{who}:{value.weight}"),
            ("limit", f"{who}:{value.limit}"),
            ("cap", f"{who}:{','.join(x for x in (given, caps) if x)}"),
            ("parent", f"{who}:{'none' if value.parent is None else value.parent}"),
        ]
    return [("weight", f"{who}:{value}")]


def _group_name(gid: GroupKey) -> str:
    return "the default group" if gid == ID_ANY else f"group {key_text(gid)}"


class _Planner:
    """Fills a Plan: dry-runs every step on ``sim`` (the scratch copy of the running state), so
    that the running values it reads are those after the steps before it."""

    def __init__(self, plan: Plan, sim: Engine, new: Config, index: dict[str, int]) -> None:
        self.plan = plan
        self.sim = sim
        self.new = new
        self.index = index

    def send(self, device: str, words: tuple[str, ...], why: str) -> None:
        try:
            self.sim.message(device, list(words))
        except IobandError as err:
            key = f"device[{self.index[device]}]"
            raise ConfigError(
                self.new.source,
                key,
                f"{device}: {' '.join(words)!r} cannot be"
                f" applied to the running device: {err.describe()}",
            ) from None
        self.plan.steps.append(Step(device, words, why))

    def run(self, name: str) -> Settings:
        return settings_of(self.sim, name)


def plan_reload(
    old: Config, new: Config, running: Sequence[DeviceState], removed: Iterable[str] = ()
) -> Plan:
    """The plan that takes the running devices from ``old`` to ``new`` by the merge rule of
    this module's docstring. Raises ConfigError (naming the device and key) when ``new`` has a
    device that cannot be built, or a change that cannot be applied; nothing is changed then
    (this function changes nothing anyway: it works on scratch engines)."""
    plan = Plan()
    plan.restart = [
        f.name
        for f in dataclasses.fields(Config)
        if f.name not in RELOADED_CONFIG_FIELDS and getattr(new, f.name) != getattr(old, f.name)
    ]
    b_engine, index = _build(new, strict=True)  # every device of the new file is valid
    a_engine, _ = _build(old, strict=False)
    before = {d.name: d for d in old.devices}
    after = {d.name: d for d in new.devices}
    live = {d.name: d for d in running}
    removed = set(removed)
    plan.remove = [n for n in before if n not in after and n in live]
    in_place: list[str] = []
    for name, dev in after.items():
        if name not in before:
            if name in live:
                plan.notes.append(
                    f"{name} is new in the file but already running (created at"
                    " run time): the running device is kept"
                )
            else:
                plan.create.append(name)
            continue
        if name not in live:
            if name in removed:
                plan.notes.append(f"{name} was removed at run time: it stays removed")
            elif dev != before[name]:
                plan.create.append(name)  # it did not start; the file changed it: try again
            continue
        reasons = _recreate_reasons(before[name], dev, live[name], a_engine, b_engine)
        if reasons:
            plan.recreate[name] = reasons
        else:
            in_place.append(name)

    sim = running_engine(running, old.hz)
    for name in (*plan.remove, *plan.recreate):
        sim.remove(name)
    planner = _Planner(plan, sim, new, index)
    switched: set[str] = set()
    for name in in_place:
        base = settings_of(a_engine, name) if name in a_engine.devices else None
        _plan_device_group(planner, name, base, settings_of(b_engine, name), switched)
    for name in in_place:
        base = settings_of(a_engine, name) if name in a_engine.devices else None
        reset = planner.run(name).device_group in switched
        _plan_groups(planner, name, base, settings_of(b_engine, name), reset)
        _plan_options(plan, name, before[name], after[name], live[name])
    return plan


def _changed(base: object, new: object, attr: str) -> bool:
    return base is None or getattr(base, attr) != getattr(new, attr)


def _recreate_reasons(
    old: DeviceConfig, new: DeviceConfig, live: DeviceState, a_engine: Engine, b_engine: Engine
) -> list[str]:
    """Why the device cannot take the new file in place (empty: it can)."""
    reasons = []
    mount = new.mountpoint is not None or live.mountpoint is not None
    for f in dataclasses.fields(DeviceConfig):
        value = getattr(new, f.name)
        if f.name == "name" or getattr(old, f.name) == value:
            continue
        if getattr(live, f.name, object()) == value:
            continue  # already so (set at run time)
        rule = FIELD_RULES.get(f.name)
        if rule is None:
            reasons.append(
                f"{f.name} changed and has no reload rule (control/reload.py FIELD_RULES)"
            )
        elif (rule.mount if mount else rule.export) is Rule.RECREATE:
            reasons.append(f"{f.name} changed: {rule.why}")
    base = settings_of(a_engine, old.name) if old.name in a_engine.devices else None
    want = settings_of(b_engine, new.name)
    for attr, why in (
        ("backing", "the backing store changed"),
        ("length", "the device length changed (clients negotiated the size)"),
        (
            "device_group",
            "the device-group id changed (a device cannot move between bandwidth pools)",
        ),
    ):
        if _changed(base, want, attr) and getattr(live_settings(live), attr) != getattr(want, attr):
            reasons.append(
                f"table: {why}: {getattr(live_settings(live), attr)!r} -> {getattr(want, attr)!r}"
            )
    return reasons


def live_settings(live: DeviceState) -> Settings:
    """Backing, length and device-group id of a running device (from its saved table)."""
    words = live.table.split()
    return Settings(words[3], int(words[1]), words[4], 0, 0, "", "", 0, None, "", {})


def _plan_device_group(
    p: _Planner, name: str, base: Settings | None, want: Settings, switched: set[str]
) -> None:
    """policy (first: it resets the groups' parameters), io_throttle/io_limit, token,
    carryover: device-group wide; a device group met again through another device is a no-op."""
    run = p.run(name)
    if _changed(base, want, "policy") and run.policy != want.policy:
        p.send(
            name, ("policy", want.policy), f"the file changed policy {run.policy} -> {want.policy}"
        )
        switched.add(run.device_group)
    throttle = want.io_throttle if _changed(base, want, "io_throttle") else run.io_throttle
    # io_limit: pinned at N or adaptive (0, with a derived effective value); either changes it
    limit_src = run
    if _changed(base, want, "io_limit") or _changed(base, want, "adaptive"):
        limit_src = want
    order = [
        ("io_throttle", throttle, run.io_throttle, throttle != run.io_throttle),
        ("io_limit", limit_src.io_limit_word, run.io_limit_word,
         (limit_src.io_limit, limit_src.adaptive) != (run.io_limit, run.adaptive)),
    ]  # fmt: skip
    if throttle > run.io_limit:  # the limit must grow first (io_throttle <= io_limit)
        order.reverse()
    for word, value, now, differs in order:
        if differs:
            p.send(name, (word, str(value)), f"the file changed {word} {now} -> {value}")
    run = p.run(name)
    reset = run.device_group in switched
    if run.family != "weight" or want.family != "weight":
        if (reset or _changed(base, want, "token")) and run.token != want.token:
            p.plan.notes.append(
                f"{name}: token {run.token} -> {want.token} not applied: the running policy is"
                f" {run.policy} (a range-bw token_base only shows in the table, and no message"
                " changes it)"
            )
        return
    for word in ("token", "carryover"):
        value = getattr(want, word)
        if (reset or _changed(base, want, word)) and getattr(run, word) != value:
            why = "after the policy switch" if reset else "the file changed it"
            p.send(name, (word, str(value)), f"{why}: {getattr(run, word)} -> {value}")


def _plan_groups(
    p: _Planner, name: str, base: Settings | None, want: Settings, reset: bool
) -> None:
    """The group type, then detaches, attaches and each group's value. ``reset``: the device
    group's policy was switched, so every value comes from the new file."""
    run = p.run(name)
    attach_all = False
    if _changed(base, want, "type") and run.type != want.type:
        for gid in sorted((g for g in run.groups if g != ID_ANY), key=key_order):
            why = "the group type changes" + (
                "" if base and gid in base.groups else " (a group attached at run time)"
            )
            p.send(name, ("detach", key_text(gid)), why)
        p.send(name, ("type", want.type), f"the file changed type {run.type} -> {want.type}")
        reset = attach_all = True
    old_groups = set(base.groups) if base is not None else set()
    for gid in sorted(old_groups - set(want.groups), key=key_order):
        if gid in p.run(name).groups:
            p.send(name, ("detach", key_text(gid)), "the file detached it")
    kept = []
    for gid in sorted(want.groups, key=key_order):  # every group first: parents may come later
        if gid not in p.run(name).groups:
            if gid in old_groups and not attach_all:  # the file kept it; detached at run time
                p.plan.notes.append(
                    f"{name}: group {key_text(gid)} was detached at run time: it stays detached"
                )
                continue
            p.send(
                name,
                ("attach", key_text(gid)),
                "the file lists it after the type change" if attach_all else "the file attached it",
            )
        kept.append(gid)
    parents: list[tuple[GroupKey, tuple[str, ...], str]] = []
    for gid in kept:
        value = want.groups[gid]
        current = p.run(name).groups
        file_changed = reset or gid not in old_groups or base.groups[gid] != value
        if not file_changed or current[gid] == value:
            continue
        family = p.run(name).family
        if family != want.family:
            p.plan.notes.append(
                f"{name}: {_group_name(gid)}: the running policy is"
                f" {p.run(name).policy} (set at run time), the file's value"
                f" {value!r} is for {want.policy}: not applied"
            )
            continue
        why = f"{'after the policy switch' if reset else 'the file changed it'}: "
        why += f"{_group_name(gid)} {current[gid]!r} -> {value!r}"
        for words in _value_words(family, gid, value):
            if words[0] == "parent":
                parents.append((gid, words, why))
            else:
                p.send(name, words, why)
    # Parents last, and those that change through the root first: a new parent may be attached
    # after its child, and moving two groups under each other in turn would make a cycle.
    for gid, words, why in parents:
        running = p.run(name).groups[gid]
        moves = isinstance(running, MclockParams) and running.parent is not None
        if moves and words[1] != f"{key_text(gid)}:{running.parent}":
            p.send(name, ("parent", f"{key_text(gid)}:none"), why)
    for gid, words, why in parents:
        running = p.run(name).groups[gid]
        at_root = isinstance(running, MclockParams) and running.parent is None
        if not (at_root and words[1].endswith(":none")):
            p.send(name, words, why)


def _plan_options(
    plan: Plan, name: str, old: DeviceConfig, new: DeviceConfig, live: DeviceState
) -> None:
    for f in dataclasses.fields(DeviceConfig):
        rule = FIELD_RULES.get(f.name)
        if rule is None or rule.export is not Rule.IN_PLACE:
            continue
        value = getattr(new, f.name)
        running = getattr(live, f.name, getattr(old, f.name))
        if getattr(old, f.name) != value and running != value:
            plan.options.append(OptionChange(name, f.name, running, value))


@dataclass
class Outcome:
    """What a reload did: the plan applied, or why the new file was refused (nothing changed)."""

    plan: Plan | None = None
    refused: str | None = None  # the error's message
    errno_name: str = "EINVAL"

    def __bool__(self) -> bool:
        return self.refused is None

    def to_json(self) -> dict[str, object]:
        if self.refused is not None:
            return {"applied": False, "refused": self.refused}
        assert self.plan is not None
        return {"applied": True, "summary": self.plan.lines(), **self.plan.to_json()}
