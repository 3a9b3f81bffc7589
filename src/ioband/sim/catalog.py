"""The built-in scenarios shipped as package data (``ioband/sim/scenarios/*.toml``)."""

from __future__ import annotations

import tomllib
from importlib import resources
from importlib.resources.abc import Traversable

SUFFIX = ".toml"


def _directory() -> Traversable:
    return resources.files("ioband.sim").joinpath("scenarios")


def names() -> list[str]:
    """Built-in scenario names, sorted."""
    folder = _directory()
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in folder.iterdir() if p.name.endswith(SUFFIX))


def canonical(name: str) -> str:
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def is_builtin(name: str) -> bool:
    return "/" not in name and canonical(name) in names()


def read_text(name: str) -> str:
    return _directory().joinpath(canonical(name) + SUFFIX).read_text(encoding="utf-8")


def describe() -> list[tuple[str, str]]:
    """``(name, description)`` for every built-in scenario."""
    out = []
    for name in names():
        try:
            description = str(tomllib.loads(read_text(name)).get("description", ""))
        except tomllib.TOMLDecodeError:
            description = "(unreadable)"
        out.append((name, " ".join(description.split())))
    return out
