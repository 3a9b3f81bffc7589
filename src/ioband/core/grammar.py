"""The one grammar of ioband: table lines, messages and parameter values, and the output lines.

Every entry point (simulator, CLI, configuration file, control socket, cgroup interface) parses
through here, so the accepted forms and the error texts are the same everywhere. Error texts start
with the original's ``ti->error`` string (``Invalid io_limit``, ...) and go on to name the field
and the rule.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import quote, unquote

from ioband.core.cint import INT_MAX, SHORT_MAX, strict_strtol, strtol
from ioband.errors import InvalidArgument

TARGET: Final = "ioband"
NAME_MAX: Final = 31  # IOBAND_NAME_MAX
ID_ANY: Final = -1  # IOBAND_ID_ANY: the default group
POLICY_PARAM_START: Final = 6
DELIMS: Final = "=:,"  # POLICY_PARAM_DELIM
WEIGHT_MIN, WEIGHT_MAX_VALUE = 1, SHORT_MAX
BW_MAX: Final = INT_MAX // 2

GROUP_TYPES = ("none", "pgrp", "pid", "node", "cpuset", "cgroup", "user", "uid", "gid", "client")
POLICIES = ("default", "weight", "weight-iosize", "range-bw", "mclock")
MESSAGES = (
    "reset", "type", "attach", "detach", "policy", "io_throttle", "io_limit",
    "weight", "token", "carryover", "range-bw", "min-bw", "max-bw",
    "reservation", "limit", "cap", "parent",
)  # fmt: skip

UNRECOGNISED: Final = "Unrecognised band message received."


def words_of(text: str | Sequence[str]) -> list[str]:
    """Whitespace-split a line (as dm and argv_split do); lists pass through."""
    return text.split() if isinstance(text, str) else list(text)


def bounded_int(text: str | None, lo: int, hi: int, what: str, error: str) -> int:
    """Strict base-0 integer in ``lo..hi``; otherwise ``error: <what> ...`` (EINVAL)."""
    value = strict_strtol(text) if text is not None else None
    if value is None:
        raise InvalidArgument(f"{error}: {what} {text!r} is not an integer")
    if not lo <= value <= hi:
        raise InvalidArgument(f"{error}: {what} {value} is not in {lo}..{hi}")
    return value


#: A group's key on a device: an id, or (type ``cgroup`` only) a cgroup path such as
#: ``machine.slice/vm1.scope`` (relative to the hierarchy's root, no leading or trailing ``/``).
GroupKey = int | str

# A path is written with a leading '/', and percent-encoded where a character would end the word
# or the key: whitespace, the delimiters '=:,' and '%' itself (urllib's quote/unquote).
_PATH_SAFE = "/@+!$&'()*;[]{}^|`<>?#\\\"~"


def normal_cgroup_path(text: str, what: str) -> str:
    """``/a/b``, ``a/b/`` and ``a//b`` are all ``a/b``; the root, ``.``, ``..`` are refused."""
    parts = [p for p in text.split("/") if p]
    if not parts:
        raise InvalidArgument(
            f"{what}: invalid cgroup path {text!r}: the root cgroup is the default group"
        )
    if any(p in (".", "..") for p in parts) or "\0" in text:
        raise InvalidArgument(
            f"{what}: invalid cgroup path {text!r}: no '.', '..' or NUL in a cgroup path"
        )
    return "/".join(parts)


def key_text(key: GroupKey) -> str:
    """A group key as tables, messages and status lines write it: the id, or ``/<path>``
    (percent-encoded), which the grammar reads back as the same key."""
    if isinstance(key, int):
        return str(key)
    return "/" + quote(key, safe=_PATH_SAFE)


def key_order(key: GroupKey) -> tuple[bool, int, str]:
    """Status and table order: ids ascending, then paths in byte order."""
    return (True, 0, key) if isinstance(key, str) else (False, key, "")


def parse_group_key(text: str, what: str, paths: bool) -> GroupKey:
    """An integer is an id; anything else is a cgroup path when ``paths`` (type ``cgroup``)."""
    value = strict_strtol(text)
    if value is not None:
        return value
    if not paths or not text:
        only = "" if paths else "; a cgroup path is a key only for type cgroup"
        raise InvalidArgument(f"{what}: invalid id:{text} (ids are 0..{INT_MAX}{only})")
    return normal_cgroup_path(unquote(text, errors="strict"), what)


def parse_group_param(
    text: str, error: str = "Invalid ioband group parameter", paths: bool = False
) -> tuple[GroupKey, str]:
    """``KEY<delim>VALUE`` -> (key, value). No KEY (``:V``), ``-1:V`` or no delimiter at all:
    the default group. ``paths``: KEY may be a cgroup path (it ends at the first delimiter)."""
    pos = next((i for i, ch in enumerate(text) if ch in DELIMS), -1)
    if pos < 0:
        return ID_ANY, text
    value, end = strtol(text)
    if end != pos:
        if paths and pos > 0:
            return parse_group_key(text[:pos], error, True), text[pos + 1 :]
        kind = "a group id (an integer) or a cgroup path" if paths else "a group id (an integer)"
        raise InvalidArgument(f"{error}: {text!r}: the text before {text[pos]!r} must be {kind}")
    return (ID_ANY if value is None else value), text[pos + 1 :]


def parse_weight(text: str | None, error: str = "Invalid weight") -> int | None:
    """A weight ``1..32767``; None (no value) means the default."""
    if text is None:
        return None
    return bounded_int(text, WEIGHT_MIN, WEIGHT_MAX_VALUE, "weight", error)


def parse_range(text: str | None, error: str = "Invalid range-bw") -> tuple[int, int]:
    """``MIN<delim>MAX`` in KB/s, ``0 <= MIN``, ``MAX <= INT_MAX/2``, MIN <= MAX unless MAX is 0
    (0 means no cap). None means ``0:0``."""
    if text is None:
        return 0, 0
    pos = next((i for i, ch in enumerate(text) if ch in DELIMS), -1)
    if pos < 0:
        raise InvalidArgument(
            f"{error}: {text!r} must be MIN:MAX in KB/s (for the default group write ':MIN:MAX'"
            " or '-1:MIN:MAX'; 'A:B' alone means group A with the single value B)"
        )
    lo = bounded_int(text[:pos], 0, BW_MAX, "min-bw", error)
    hi = bounded_int(text[pos + 1 :], 0, BW_MAX, "max-bw", error)
    if hi and lo > hi:
        raise InvalidArgument(f"{error}: min-bw {lo} is above max-bw {hi}")
    return lo, hi


def parse_range_change(cmd: str, text: str | None, lo: int, hi: int) -> tuple[int, int]:
    """A ``range-bw``, ``min-bw`` or ``max-bw`` message to a group whose band is ``lo:hi``: the
    new band (range-bw's ``set_param`` and the simulator's baselines)."""
    if cmd == "range-bw":
        return parse_range(text, "Invalid range-bw")
    if cmd == "min-bw":
        new = bounded_int(text, 0, BW_MAX, "min-bw", "Invalid min-bw")
        if hi and new > hi:
            raise InvalidArgument(f"Invalid min-bw: {new} is above max-bw {hi}")
        return new, hi
    new = bounded_int(text, 0, BW_MAX, "max-bw", "Invalid max-bw")
    if new and new < lo:
        raise InvalidArgument(f"Invalid max-bw: {new} is below min-bw {lo}")
    return lo, new


def parse_token_param(cmd: str, text: str | None) -> int:
    """A ``token`` or ``carryover`` message's value (the weight policies and the baselines)."""
    return bounded_int(text, 0, INT_MAX, cmd, f"Invalid {cmd}")


def not_a_parameter(cmd: str, policy: str) -> InvalidArgument:
    """The error of a group-parameter message that ``policy`` has no parameter for."""
    return InvalidArgument(f"{cmd}: not a parameter of the {policy} policy")


def _delimited(word: str) -> bool:
    """The default-group argument is the first word that starts with a delimiter."""
    return word[:1] != "" and word[0] in DELIMS


def parse_group_id(text: str | None, what: str, paths: bool = False) -> GroupKey:
    """A group key for ``attach``/``detach``: an integer in 0..INT_MAX, or (``paths``) a cgroup
    path."""
    key = parse_group_key(text, what, paths) if text else None
    if key is None or (isinstance(key, int) and not 0 <= key <= INT_MAX):
        raise InvalidArgument(f"{what}: invalid id:{text} (ids are 0..{INT_MAX})")
    return key


# -- rules: groups attached by themselves ------------------------------------------------------
#: The rule field each group type matches on (``[[device.rule]]``).
RULE_FIELDS = {"cgroup": "cgroup", "user": "uid", "uid": "uid", "gid": "gid"}
RULE_VALUES = ("weight", "range-bw")


@dataclass(frozen=True)
class Rule:
    """``match`` a new submitter, attach a group for it with ``value`` (first match wins).

    ``cgroup``: a glob over cgroup paths, one component per ``/`` (``*`` does not cross a
    ``/``), as fnmatch reads each component; ``uid``/``gid``: ``*``, ``N`` or ``LO-HI``."""

    field: str  # cgroup | uid | gid
    pattern: str  # as written (normalised for cgroup)
    value: str  # the group's value as the policy reads it (``200``, ``MIN:MAX``)

    def matches_path(self, path: str) -> bool:
        parts, want = path.split("/"), self.pattern.split("/")
        return len(parts) == len(want) and all(
            fnmatch.fnmatchcase(p, w) for p, w in zip(parts, want, strict=True)
        )

    def matches_id(self, value: int) -> bool:
        if self.pattern == "*":
            return True
        lo, _, hi = self.pattern.partition("-")
        return int(lo) <= value <= int(hi or lo)

    def fields(self) -> dict[str, object]:
        """The rule as the configuration and the state file write it."""
        match: object = self.pattern
        if self.field != "cgroup" and self.pattern.isdigit():
            match = int(self.pattern)
        if ":" in self.value:
            return {self.field: match, "range-bw": self.value}
        return {self.field: match, "weight": int(self.value)}

    def text(self) -> str:
        """``cgroup=machine.slice/*.scope weight=200`` (how status and the CLI show it)."""
        word = "range-bw" if ":" in self.value else "weight"
        return f"{self.field}={self.pattern} {word}={self.value}"


def parse_rule(fields: dict[str, object], what: str, gtype: str) -> Rule:
    """A rule as the configuration writes it: one match field for the device's group type and
    one value (``weight`` or ``range-bw``). ``what`` names the rule (``device[0].rule[1]``)."""
    match_field = RULE_FIELDS.get(gtype)
    if match_field is None:
        raise InvalidArgument(
            f"{what}: group type {gtype!r} has no rules (rules are for types"
            f" {', '.join(RULE_FIELDS)})"
        )
    known = ("cgroup", "uid", "gid", *RULE_VALUES)
    for key in fields:
        if key not in known:
            raise InvalidArgument(f"{what}.{key}: unknown key{did_you_mean(key, known)}")
    given = [k for k in ("cgroup", "uid", "gid") if k in fields]
    if given != [match_field]:
        have = ", ".join(given) or "none"
        raise InvalidArgument(
            f"{what}: a rule of a device of type {gtype} matches on {match_field!r}"
            f" (and only on it); given: {have}"
        )
    values = [k for k in RULE_VALUES if k in fields]
    if len(values) != 1:
        raise InvalidArgument(f"{what}: needs exactly one of weight or range-bw")
    raw_value = fields[values[0]]
    if values[0] == "weight":
        if not isinstance(raw_value, int) or isinstance(raw_value, bool):
            raise InvalidArgument(f"{what}.weight: must be an integer, got {raw_value!r}")
        value = str(parse_weight(str(raw_value), f"{what}.weight: Invalid weight"))
    else:
        if not isinstance(raw_value, str):
            raise InvalidArgument(f"{what}.range-bw: must be 'MIN:MAX', got {raw_value!r}")
        lo, hi = parse_range(raw_value, f"{what}.range-bw: Invalid range-bw")
        value = f"{lo}:{hi}"
    pattern = fields[match_field]
    if match_field == "cgroup":
        if not isinstance(pattern, str):
            raise InvalidArgument(f"{what}.cgroup: must be a glob string, got {pattern!r}")
        return Rule("cgroup", normal_cgroup_path(pattern, f"{what}.cgroup"), value)
    if isinstance(pattern, int) and not isinstance(pattern, bool):
        pattern = str(pattern)
    if not isinstance(pattern, str) or not _id_pattern(pattern):
        raise InvalidArgument(
            f"{what}.{match_field}: must be '*', an id N or a range 'LO-HI' (0..{INT_MAX}),"
            f" got {pattern!r}"
        )
    return Rule(match_field, pattern, value)


def _id_pattern(text: str) -> bool:
    if text == "*":
        return True
    lo, sep, hi = text.partition("-")
    if not lo.isdigit() or (sep and not hi.isdigit()):
        return False
    return int(lo) <= int(hi or lo) <= INT_MAX


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'weight'?)`` for a near miss, else the list of choices."""
    near = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {near[0]!r}?)" if near else f" (one of {', '.join(choices)})"


@dataclass
class TableSpec:
    """A parsed table line (syntax only; the engine and the policy check the meaning)."""

    start: int
    length: int
    device: str
    group_name: str
    io_throttle: int  # 0: default
    io_limit: int  # 0: default
    type: str
    policy: str
    token_base: str | None  # the policy's first argument, unparsed
    default_param: str | None  # the value of the ':<param>' argument, unparsed
    groups: list[str] = field(default_factory=list)  # the ``ID:VALUE`` words, checked last


def parse_table(line: str | Sequence[str]) -> TableSpec:
    words = words_of(line)
    if len(words) < 3:
        raise InvalidArgument(
            f"Invalid table line: expected '<start> <len> {TARGET} <args...>',"
            f" got {len(words)} words"
        )
    start = strict_strtol(words[0])
    if start is None or start < 0:
        raise InvalidArgument(
            f"Invalid table line: start sector {words[0]!r} is not an integer >= 0"
        )
    if start != 0:
        raise InvalidArgument(f"Gap in table: the target must start at sector 0, not {start}")
    length = strict_strtol(words[1])
    if length is None or length < 0:
        raise InvalidArgument(f"Invalid table line: length {words[1]!r} is not an integer >= 0")
    if words[2] != TARGET:
        raise InvalidArgument(f"Unknown target type {words[2]!r}: only '{TARGET}' is provided")
    argv = words[3:]
    if len(argv) < POLICY_PARAM_START:
        raise InvalidArgument(
            "Requires 6 or more arguments: <device> <device-group-id> <io_throttle> <io_limit>"
            f" <type> <policy> [<policy args>...]; got {len(argv)}"
        )
    device, name = argv[0], argv[1]
    if len(name) > NAME_MAX:
        raise InvalidArgument(
            f"Ioband device name is too long: device-group id {name!r} has {len(name)} characters,"
            f" at most {NAME_MAX}"
        )
    throttle = bounded_int(argv[2], 0, SHORT_MAX, "io_throttle", "Invalid io_throttle")
    limit = bounded_int(argv[3], 0, SHORT_MAX, "io_limit", "Invalid io_limit")
    gtype, policy = argv[4], argv[5]
    rest = argv[POLICY_PARAM_START:]
    token_base = rest[0] if rest and not _delimited(rest[0]) else None
    default_at = next((i for i, w in enumerate(rest) if _delimited(w)), None)
    stray = rest[(1 if token_base is not None else 0) : default_at]
    if stray:
        raise InvalidArgument(
            f"Invalid ioband group parameter: {stray[0]!r} comes before the ':<default>' argument;"
            " write '<token_base> :<default> <id>:<value> ...'"
        )
    default_param = rest[default_at][1:] if default_at is not None else None
    groups = rest[default_at + 1 :] if default_at is not None else []
    return TableSpec(start, length, device, name, throttle, limit, gtype, policy,
                     token_base, default_param, groups)  # fmt: skip


@dataclass(frozen=True)
class Message:
    command: str
    arg: str | None  # None only for 'reset'


def parse_message(words: str | Sequence[str]) -> Message:
    """dmsetup message words: ``reset`` alone, every other message exactly two words."""
    argv = words_of(words)
    if argv == ["reset"]:
        return Message("reset", None)
    if len(argv) != 2 or argv[0] == "reset":
        got = " ".join(argv) or "(nothing)"
        raise InvalidArgument(f"{UNRECOGNISED} ('{got}': a message is 'reset' or '<word> <value>')")
    if argv[0] not in MESSAGES:
        raise InvalidArgument(
            f"{UNRECOGNISED} (unknown message {argv[0]!r}{did_you_mean(argv[0], MESSAGES)})"
        )
    return Message(argv[0], argv[1])


def format_table(
    start: int, length: int, device: str, name: str, throttle: int, limit: int,
    gtype: str, policy: str, policy_part: str,
) -> str:  # fmt: skip
    """``<start> <len> ioband <dev> <id> <io_throttle> <io_limit> <type> <policy><policy part>``."""
    head = f"{start} {length} {TARGET} {device} {name} {throttle} {limit}"
    return f"{head} {gtype} {policy}{policy_part}"


def format_dmsetup(dm_name: str, start: int, length: int, target_string: str) -> str:
    """The whole ``dmsetup table``/``status`` line: ``NAME: <start> <len> ioband <string>``."""
    return f"{dm_name}: {start} {length} {TARGET} {target_string}"


STATUS_FORMATS = ("legacy", "diskstats")


def status_block(
    fmt: str,
    gid: int | str,
    ios: Sequence[int],
    delayed: Sequence[int],
    sectors: Sequence[int],
    ticks_ms: Sequence[int] = (0, 0),
    held: int = 0,
    io_ticks_ms: int = 0,
    time_in_queue_ms: int = 0,
) -> str:
    """One group's part of a ``status`` line. ``legacy``: id, reads, delayed reads, read
    sectors, writes, delayed writes, write sectors. ``diskstats``: the 12 columns of
    /proc/diskstats (merges are always 0: ioband never merges)."""
    if fmt == "legacy":
        return f" {gid} {ios[0]} {delayed[0]} {sectors[0]} {ios[1]} {delayed[1]} {sectors[1]}"
    if fmt == "diskstats":
        return (
            f" {gid} {ios[0]} 0 {sectors[0]} {ticks_ms[0]} {ios[1]} 0 {sectors[1]} {ticks_ms[1]}"
            f" {held} {io_ticks_ms} {time_in_queue_ms}"
        )
    raise InvalidArgument(f"Invalid status format {fmt!r}: legacy or diskstats")


# ---------------------------------------------------------------------------------------------
# The mclock policy: cost model, group parameters and io.max-style caps
# ---------------------------------------------------------------------------------------------

#: A rate or an amount: up to 2**53 (exact as a float), with an optional binary suffix.
AMOUNT_MAX: Final = 1 << 53
SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
COST_MODELS = ("iops", "bytes", "linear")
#: The cap keys of cgroup v2 ``io.max``, in the order tables show them.
CAP_KEYS = ("rbps", "wbps", "riops", "wiops")
#: A cap's default burst (bucket size) when none is given: this many seconds of its rate.
DEFAULT_BURST_SECONDS: Final = 0.1


def parse_amount(text: str | None, what: str, error: str) -> int:
    """A non-negative integer with an optional K/M/G/T suffix (powers of 1024, any case)."""
    if text is None or text == "":
        raise InvalidArgument(f"{error}: {what} is missing (an integer >= 0, suffix K/M/G/T)")
    digits, suffix = text, ""
    if text[-1].lower() in SUFFIXES and not text[-1].isdigit():
        digits, suffix = text[:-1], text[-1].lower()
    value = int(digits) if digits.isascii() and digits.isdigit() else None
    if value is None:
        raise InvalidArgument(
            f"{error}: {what} {text!r} is not an integer >= 0 (with an optional K/M/G/T suffix)"
        )
    value *= SUFFIXES[suffix]
    if value > AMOUNT_MAX:
        raise InvalidArgument(f"{error}: {what} {text!r} is above {AMOUNT_MAX}")
    return value


@dataclass(frozen=True)
class CostModel:
    """What a request costs, in the unit reservations and limits are given per second.

    ``iops``: 1 per request. ``bytes``: its length in bytes. ``linear``: ``base + per_kib x KiB``
    (iocost's and Ceph mClock's linear model), with read and write coefficients apart.
    ``time``: the store's time, in microseconds, that the group's requests have been measured
    to take (BFQ's and iocost's ground: a sequential stream costs what it occupies the store,
    not what it counts).
    """

    kind: str = "iops"
    read_base: int = 1
    read_per_kib: int = 0
    write_base: int = 1
    write_per_kib: int = 0

    def text(self) -> str:
        if self.kind != "linear":
            return self.kind
        return f"linear:{self.read_base}:{self.read_per_kib}:{self.write_base}:{self.write_per_kib}"


def parse_cost_model(text: str | None, error: str = "Invalid policy parameter") -> CostModel:
    """``iops`` | ``bytes`` | ``time`` | ``linear:BASE:PER_KIB`` |
    ``linear:RBASE:RPER_KIB:WBASE:WPER_KIB``."""
    if text is None or text == "0":
        return CostModel()
    if text in ("iops", "bytes", "time"):
        return CostModel(text)
    fields = text.split(":")
    if fields[0] != "linear":
        raise InvalidArgument(
            f"{error}: cost model {text!r} is not one of iops, bytes, time,"
            " linear:BASE:PER_KIB, linear:RBASE:RPER_KIB:WBASE:WPER_KIB"
        )
    if len(fields) not in (3, 5):
        raise InvalidArgument(
            f"{error}: cost model {text!r}: linear takes 2 (reads and writes alike) or 4 numbers"
        )
    names = ("base", "per_kib") if len(fields) == 3 else ("rbase", "rper_kib", "wbase", "wper_kib")
    nums = [bounded_int(f, 0, INT_MAX, n, error) for f, n in zip(fields[1:], names, strict=True)]
    if len(nums) == 2:
        nums = nums * 2
    if nums[0] == 0 or nums[2] == 0:
        raise InvalidArgument(f"{error}: cost model {text!r}: a base cost must be >= 1")
    return CostModel("linear", *nums)


@dataclass(frozen=True)
class Cap:
    """One io.max-style cap: ``rate`` per second with a bucket of ``burst`` (same unit)."""

    rate: int
    burst: int


def default_burst(rate: int) -> int:
    return max(1, int(rate * DEFAULT_BURST_SECONDS))


def parse_caps(
    text: str, error: str = "Invalid cap", base: dict[str, Cap] | None = None
) -> dict[str, Cap]:
    """``KEY=VALUE[,KEY=VALUE...]`` over ``base``: keys ``rbps wbps riops wiops`` (a rate per
    second; ``0`` or ``max`` removes the cap) and ``<key>_burst`` (the bucket size in bytes or
    requests; a rate given without its burst gets the default, a tenth of a second of the
    rate). Only the keys named change, as with a write to io.max. Nothing is returned unless
    all of it is valid."""
    caps = dict(base or {})
    rates: dict[str, int] = {}
    bursts: dict[str, int] = {}
    if not text:
        raise InvalidArgument(f"{error}: no KEY=VALUE given (keys {', '.join(CAP_KEYS)})")
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            raise InvalidArgument(f"{error}: {item!r} must be KEY=VALUE")
        if key in CAP_KEYS:
            rates[key] = 0 if value == "max" else parse_amount(value, key, error)
        elif key.endswith("_burst") and key[: -len("_burst")] in CAP_KEYS:
            burst = parse_amount(value, key, error)
            if burst == 0:
                raise InvalidArgument(f"{error}: {key} must be >= 1")
            bursts[key[: -len("_burst")]] = burst
        else:
            raise InvalidArgument(
                f"{error}: unknown key {key!r} (one of {', '.join(CAP_KEYS)} and <key>_burst)"
            )
    for key in bursts:
        if rates.get(key, caps[key].rate if key in caps else 0) == 0:
            raise InvalidArgument(f"{error}: {key}_burst given but {key} has no cap")
    for key in CAP_KEYS:
        if key in rates:
            rate = rates[key]
            if rate == 0:
                caps.pop(key, None)
                continue
            caps[key] = Cap(rate, bursts.get(key, default_burst(rate)))
        elif key in bursts:
            caps[key] = Cap(caps[key].rate, bursts[key])
    return caps


def format_caps(caps: dict[str, Cap]) -> str:
    """The canonical ``KEY=VALUE,...`` form (every cap with its burst); parse_caps reads it."""
    return ",".join(
        f"{key}={caps[key].rate},{key}_burst={caps[key].burst}" for key in CAP_KEYS if key in caps
    )


@dataclass(frozen=True)
class MclockParams:
    """A group's mclock parameters (``R:W:L[:CAPS]``): reservation and limit in cost units per
    second (0: none), weight 1..32767, caps as io.max."""

    reservation: int = 0
    weight: int = 100
    limit: int = 0
    caps: dict[str, Cap] = field(default_factory=dict)
    parent: int | None = None  # the id of the parent group (hierarchical weights); None: root

    def text(self) -> str:
        head = f"{self.reservation}:{self.weight}:{self.limit}"
        extra = ([f"parent={self.parent}"] if self.parent is not None else []) + (
            [format_caps(self.caps)] if self.caps else []
        )
        return f"{head}:{','.join(extra)}" if extra else head


def check_reservation_limit(reservation: int, limit: int, error: str) -> None:
    if limit and reservation > limit:
        raise InvalidArgument(
            f"{error}: reservation {reservation} is above limit {limit} (need R <= L, or L 0)"
        )


def parse_mclock_group(text: str | None, error: str) -> MclockParams:
    """``R:W:L`` or ``R:W:L:KEY=VALUE,...`` (see :func:`parse_caps`); None: the defaults."""
    if text is None:
        return MclockParams()
    fields = text.split(":", 3)
    if len(fields) < 3:
        raise InvalidArgument(
            f"{error}: {text!r} must be RESERVATION:WEIGHT:LIMIT[:CAPS] (e.g. 0:100:0)"
        )
    reservation = parse_amount(fields[0], "reservation", error)
    weight = parse_weight(fields[1], error)
    limit = parse_amount(fields[2], "limit", error)
    check_reservation_limit(reservation, limit, error)
    parent = None
    caps: dict[str, Cap] = {}
    if len(fields) == 4:
        items = fields[3].split(",")
        rest = [item for item in items if not item.startswith("parent=")]
        for item in items:
            if item.startswith("parent="):
                parent = parse_parent(item[len("parent=") :], error)
        caps = parse_caps(",".join(rest), error) if rest else {}
    return MclockParams(reservation, weight if weight is not None else 100, limit, caps, parent)


def parse_parent(text: str | None, error: str = "Invalid parent") -> int | None:
    """A parent group id (0..INT_MAX), or ``none``/``-1``: no parent."""
    if text in ("none", "-1"):
        return None
    return bounded_int(text, 0, INT_MAX, "parent", error)
