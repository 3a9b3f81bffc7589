"""Write the man page ioband(1) from the argparse definitions (argparse-manpage, a dev extra).

``make man`` runs it into docs/ioband.1; tests/test_manpage.py checks the page is up to date.
Usage: manpage.py OUTPUT
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ioband


def build(output: str) -> None:
    tool = Path(sys.executable).with_name("argparse-manpage")
    subprocess.run(
        [str(tool), "--module", "ioband.cli", "--function", "build_parser",
         "--project-name", "ioband", "--prog", "ioband", "--version", ioband.__version__,
         "--description", "proportional I/O bandwidth control in user space (dm-ioband)",
         "--url", "https://github.com/ioband/ioband", "--manual-title", "ioband manual",
         "--output", output],
        check=True,
        env={**os.environ, "COLUMNS": "80"},
    )  # fmt: skip


if __name__ == "__main__":
    build(sys.argv[1])
