"""The one grammar of ioband: table lines, messages and parameter values, and the output lines.

Every entry point (simulator, CLI, configuration file, control socket, cgroup interface) parses
through here, so the accepted forms and the error texts are the same everywhere. Error texts start
with the original's ``ti->error`` string (``Invalid io_limit``, ...) and go on to name the field
and the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ioband.core.cint import INT_MAX, SHORT_MAX, strict_strtol, strtol
from ioband.errors import InvalidArgument

TARGET = "ioband"
NAME_MAX = 31  # IOBAND_NAME_MAX
ID_ANY = -1  # IOBAND_ID_ANY: the default group
POLICY_PARAM_START = 6
DELIMS = "=:,"  # POLICY_PARAM_DELIM
WEIGHT_MIN, WEIGHT_MAX_VALUE = 1, SHORT_MAX
BW_MAX = INT_MAX // 2

GROUP_TYPES = ("none", "pgrp", "pid", "node", "cpuset", "cgroup", "user", "uid", "gid", "client")
POLICIES = ("default", "weight", "weight-iosize", "range-bw")
MESSAGES = (
    "reset", "type", "attach", "detach", "policy", "io_throttle", "io_limit",
    "weight", "token", "carryover", "range-bw", "min-bw", "max-bw",
)  # fmt: skip

UNRECOGNISED = "Unrecognised band message received."


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


def parse_group_param(text: str, error: str = "Invalid ioband group parameter") -> tuple[int, str]:
    """``ID<delim>VALUE`` -> (id, value). No ID (``:V``), ``-1:V`` or no delimiter at all: the
    default group."""
    pos = next((i for i, ch in enumerate(text) if ch in DELIMS), -1)
    if pos < 0:
        return ID_ANY, text
    value, end = strtol(text)
    if end != pos:
        raise InvalidArgument(
            f"{error}: {text!r}: the text before {text[pos]!r} must be a group id (an integer)"
        )
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


def _delimited(word: str) -> bool:
    """The default-group argument is the first word that starts with a delimiter."""
    return word[:1] != "" and word[0] in DELIMS


def parse_group_id(text: str | None, what: str) -> int:
    """A group id for ``attach``/``detach``: an integer in 0..INT_MAX."""
    gid = strict_strtol(text) if text is not None else None
    if gid is None or not 0 <= gid <= INT_MAX:
        raise InvalidArgument(f"{what}: invalid id:{text} (ids are 0..{INT_MAX})")
    return gid


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
        raise InvalidArgument(f"{UNRECOGNISED} (unknown message {argv[0]!r})")
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
    gid: int,
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
