"""Compile the scheduling core (``ioband.core``, ``ioband.policies``) with mypyc, in place.

Run by the install step. The pure-Python modules stay the reference and the fallback: with
``IOBAND_PURE_PYTHON=1``, without mypyc or a C compiler, or if the build fails, the compiled files
are removed and ioband runs the ``.py`` files (``ioband._build`` decides at import). Nothing is
rebuilt when the stamp already matches the sources.

Usage: python scripts/build_core.py [--force | --clean]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
BUILD = ROOT / "build" / "mypyc"
GROUP = "ioband_core"  # the shared library: src/ioband_core__mypyc<suffix>.so

sys.path.insert(0, str(SRC))
os.environ["IOBAND_PURE_PYTHON"] = "1"  # importing ioband below must not load an old build
from ioband import _build  # noqa: E402


def clean() -> None:
    """Remove every compiled file: the shims beside the sources, the library, the stamp."""
    for pkg in _build.COMPILED_PACKAGES:
        for so in (_build.PACKAGE_DIR / pkg).glob("*.so"):
            so.unlink()
    for so in SRC.glob(f"{GROUP}__mypyc*.so"):
        so.unlink()
    _build.STAMP.unlink(missing_ok=True)


def up_to_date() -> bool:
    try:
        stamp = json.loads(_build.STAMP.read_text())
    except (OSError, ValueError):
        return False
    return (
        stamp.get("ext_suffix") == _build.ext_suffix()
        and stamp.get("sources") == _build.source_hashes()
    )


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    sources = [p.relative_to(SRC).as_posix() for p in _build.compiled_sources()]
    os.chdir(SRC)  # module names come from the paths; the in-place files land beside them
    os.environ["MYPY_CACHE_DIR"] = str(BUILD / "mypy_cache")
    setup(
        name="ioband-core",
        ext_modules=mypycify(sources, opt_level="3", group_name=GROUP, target_dir=str(BUILD)),
        script_args=["-q", "build_ext", "--inplace", "--build-temp", str(BUILD / "temp"),
                     "--build-lib", str(BUILD / "lib")],
    )  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ap.add_argument("--clean", action="store_true", help="remove the compiled files and stop")
    args = ap.parse_args()
    if args.clean or os.environ.get("IOBAND_BUILD_PURE", "") not in ("", "0"):
        clean()
        print("build_core: compiled core removed; ioband runs pure Python")
        return 0
    if not args.force and up_to_date():
        print("build_core: compiled core up to date")
        return 0
    clean()
    hashes = _build.source_hashes()  # before compiling: a source edited meanwhile goes stale
    try:
        build()
    except (Exception, SystemExit) as exc:  # no mypyc, no compiler, a compile error
        clean()
        print(f"build_core: compiling failed ({exc}); ioband runs pure Python", file=sys.stderr)
        return 0
    stamp = {"ext_suffix": _build.ext_suffix(), "sources": hashes}
    _build.STAMP.write_text(json.dumps(stamp, indent=1) + "\n")
    shutil.rmtree(SRC / "ioband_core.egg-info", ignore_errors=True)
    print(f"build_core: compiled {len(hashes)} modules with mypyc")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
