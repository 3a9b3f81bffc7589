"""Parsing of sizes ("4KiB", "500MiB", "512") and durations ("10ms", 2.5) in scenario files.

Each parser raises ``ValueError`` with the rule that was broken; the scenario loader adds the key.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

# Binary units (IEC, and the one-letter forms used by dd, fio and lsblk) and decimal (SI) units.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}
SIZE_HELP = (
    'an integer number of bytes or a number with a unit: "512", "4KiB", "500MiB", "1GiB" '
    "(KiB/MiB/GiB/TiB and K/M/G/T are powers of 1024, kB/MB/GB/TB powers of 1000)"
)
_NUMBER_UNIT = re.compile(
    r"^\s*(-?[0-9]+(?:\.[0-9]*)?|-?\.[0-9]+)(?:[eE]([+-]?[0-9]+))?\s*([A-Za-zµ]*)\s*$"
)

_TIME_UNITS = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "ns": 1e-9,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
}
DURATION_HELP = 'seconds as a number or a string with a unit: 60, 2.5, "10ms", "250us", "2min"'


def parse_size(value: object) -> int:
    """Bytes from an integer or a string such as "4KiB"; ``ValueError`` if not whole bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected {SIZE_HELP}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative (got {value})")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0 or not value.is_integer():
            raise ValueError(f"expected {SIZE_HELP}, got {value!r}")
        return int(value)
    if isinstance(value, str):
        text = value[:-2] if value.rstrip().endswith("/s") else value  # "500MiB/s" for rates
        m = _NUMBER_UNIT.match(text)
        unit = m.group(3).lower() if m else None
        if m is None or unit not in _SIZE_UNITS:
            raise ValueError(f"expected {SIZE_HELP}, got {value!r}")
        number = m.group(1) + (f"e{m.group(2)}" if m.group(2) else "")
        total = _exact_product(number, _SIZE_UNITS[unit])
        if total is None:
            raise ValueError(f"{value!r} is not a whole number of bytes")
        if total < 0:
            raise ValueError(f"must not be negative (got {value!r})")
        return total
    raise ValueError(f"expected {SIZE_HELP}, got {type(value).__name__} {value!r}")


def _exact_product(number: str, unit: int) -> int | None:
    """``number * unit`` computed exactly (no float rounding); None if not an integer."""
    product = Fraction(number) * unit
    return int(product) if product.denominator == 1 else None


def parse_duration(value: object) -> float:
    """Seconds (float) from a number or a string such as "10ms"; must be finite and >= 0."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_HELP}, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        unit = m.group(3) if m else None
        if m is None or (unit not in _TIME_UNITS and unit.lower() not in _TIME_UNITS):
            raise ValueError(f"expected {DURATION_HELP}, got {value!r}")
        scale = _TIME_UNITS.get(unit, _TIME_UNITS.get(unit.lower(), 1.0))
        number = m.group(1) + (f"e{m.group(2)}" if m.group(2) else "")
        seconds = float(number) * scale
    else:
        raise ValueError(f"expected {DURATION_HELP}, got {type(value).__name__} {value!r}")
    if not math.isfinite(seconds):
        raise ValueError(f"must be finite (got {value!r})")
    if seconds < 0:
        raise ValueError(f"must not be negative (got {value!r})")
    return seconds


def format_bytes(n: float) -> str:
    """Human-readable binary size: 512 B, 4.0 KiB, 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_size(n: int) -> str:
    """Exact size in the largest binary unit that divides it: 4KiB, 500MiB, 512."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def format_duration(seconds: float) -> str:
    """A duration as a scenario file would spell it: 60, 2.5, "16ms", "250us"."""
    if seconds == 0 or seconds >= 1:
        return f"{seconds:g}"
    if seconds >= 1e-4:
        return f"{seconds * 1e3:g}ms"
    return f"{seconds * 1e6:g}us"
