"""C integer semantics the original relies on: base-0 strtol parsing and truncating division."""

from __future__ import annotations

from typing import Final

INT_MAX: Final = 2**31 - 1
SHORT_MAX: Final = 32767
LONG_MAX: Final = 2**63 - 1

_DIGITS: Final = "0123456789abcdef"


def cdiv(a: int, b: int) -> int:
    """C division: truncates toward zero (Python's ``//`` floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _scan(s: str, pos: int) -> tuple[int | None, int]:
    """Parse an optionally signed base-0 integer at ``pos``; return (value or None, end)."""
    neg = False
    i = pos
    if i < len(s) and s[i] == "-":
        neg = True
        i += 1
    base = 10
    if s.startswith(("0x", "0X"), i) and i + 2 < len(s) and s[i + 2].lower() in _DIGITS:
        base = 16
        i += 2
    elif s.startswith("0", i):
        base = 8
    start = i
    value = 0
    while i < len(s):
        d = _DIGITS.find(s[i].lower())
        if d < 0 or d >= base:
            break
        value = value * base + d
        i += 1
    if i == start:
        return None, pos
    return (-value if neg else value), i


def strtol(s: str) -> tuple[int | None, int]:
    """Lenient C ``simple_strtol(s, &end, 0)``: the longest integer prefix and where it ends."""
    return _scan(s, 0)


def strict_strtol(s: str) -> int | None:
    """Kernel ``strict_strtol(s, 0)``: the whole string must be one integer (a trailing newline
    is tolerated). Returns None when it is not."""
    if s.endswith("\n"):
        s = s[:-1]
    value, end = _scan(s, 0)
    if value is None or end != len(s) or abs(value) > LONG_MAX:
        return None
    return value
