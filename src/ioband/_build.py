"""Which scheduling core runs: the mypyc-compiled one or the pure-Python reference.

``scripts/build_core.py`` (run by the install step) compiles ``ioband.core`` and
``ioband.policies`` with mypyc, in place: a ``.so`` beside each ``.py`` and one shared library
(``src/ioband_core__mypyc*.so``), plus a stamp (``src/ioband/_compiled.json``) holding the hash of
every source it compiled. Python prefers a ``.so`` to a ``.py`` of the same name, so the compiled
core is used as soon as it exists; this module decides, once, before anything of the core is
imported, whether it may be:

- ``IOBAND_PURE_PYTHON=1`` asks for the pure-Python modules (the reference);
- no stamp, or a stamp for another interpreter: nothing compiled to use;
- a source changed since the build (edited, checked out): the compiled modules would silently run
  the old code, so the pure ones run until the next ``make install``.

The compiled modules form one unit (compiled classes reach into each other's instances directly),
so it is all of them or none. When it is none, a finder placed first on ``sys.meta_path`` loads
the ``.py`` of every compiled module.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
import os
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
#: The packages mypyc compiles, every module of each.
COMPILED_PACKAGES = ("core", "policies")
STAMP = PACKAGE_DIR / "_compiled.json"
PURE_ENV = "IOBAND_PURE_PYTHON"


def compiled_sources() -> list[Path]:
    """The ``.py`` files the build compiles, in a stable order."""
    return sorted(p for pkg in COMPILED_PACKAGES for p in (PACKAGE_DIR / pkg).glob("*.py"))


def source_hashes() -> dict[str, str]:
    return {
        p.relative_to(PACKAGE_DIR).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in compiled_sources()
    }


def ext_suffix() -> str:
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def decide() -> tuple[bool, str]:
    """(compiled?, why): whether the compiled core may run, and a sentence saying why."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return False, f"pure Python ({PURE_ENV}={os.environ[PURE_ENV]})"
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return False, "pure Python (the compiled core is not built: make install)"
    if stamp.get("ext_suffix") != ext_suffix():
        return False, "pure Python (the compiled core was built for another Python)"
    built = stamp.get("sources", {})
    for name, digest in source_hashes().items():
        if built.get(name) != digest:
            return False, f"pure Python ({name} changed since the build: make install)"
    for name in built:
        shim = PACKAGE_DIR / name.replace(".py", ext_suffix())
        if not shim.exists():
            return False, f"pure Python ({shim.name} is missing: make install)"
    return True, "compiled (mypyc)"


class PureSourceFinder(MetaPathFinder):
    """Loads the ``.py`` of ``ioband.core``, ``ioband.policies`` and their modules even where a
    compiled ``.so`` sits beside it."""

    PREFIXES = tuple(f"ioband.{pkg}" for pkg in COMPILED_PACKAGES)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if not fullname.startswith(self.PREFIXES):
            return None
        parent, _, _ = fullname.rpartition(".")
        directory = PACKAGE_DIR.joinpath(*parent.split(".")[1:])
        finder = importlib.machinery.FileFinder(
            str(directory),
            (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES),
        )
        return finder.find_spec(fullname, target)


def install() -> tuple[bool, str]:
    """Decide, and make the imports follow the decision."""
    compiled, why = decide()
    if not compiled and not any(isinstance(f, PureSourceFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, PureSourceFinder())
    return compiled, why
