"""A host-ready package: ``pip install .`` gives the ``ioband`` command with its package data;
matplotlib is only the optional extra ``plot``; the daemon and the CLI run without it, and the
plotting commands say which extra they need."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import require_real

ROOT = Path(__file__).resolve().parent.parent
# What a Python without matplotlib sees: ``import matplotlib`` fails.
NO_MATPLOTLIB = "import sys; sys.modules['matplotlib'] = None\n"


def test_pip_install_gives_the_command(tmp_path):
    """A real ``pip install`` (no dependencies: this venv has them) of a copy of the tree."""
    source = tmp_path / "src-tree"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns(
        "*.egg-info", "__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    target = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                          "--disable-pip-version-check", "--target", str(target), str(source)],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    require_real(res.returncode == 0 or "setuptools" not in res.stderr,
                 f"the build backend cannot be fetched: {res.stderr[-300:]}")  # fmt: skip
    assert res.returncode == 0, res.stderr
    command = target / "bin" / "ioband"
    assert command.exists()
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([str(command), "--version"], capture_output=True, text=True, env=env,
                         check=True).stdout  # fmt: skip
    assert out.startswith("ioband 0.")
    where = subprocess.run([sys.executable, "-c", "import ioband; print(ioband.__file__)"],
                           capture_output=True, text=True, env=env, check=True).stdout  # fmt: skip
    assert where.startswith(str(target))  # the installed copy, not this tree
    assert list((target / "ioband" / "sim" / "scenarios").glob("*.toml"))  # package data
    (meta,) = target.glob("ioband-*.dist-info/METADATA")
    requires = [ln for ln in meta.read_text().splitlines() if ln.startswith("Requires-Dist:")]
    mpl = [ln for ln in requires if "matplotlib" in ln]
    assert mpl and all('extra == "plot"' in ln for ln in mpl), requires
    assert "Provides-Extra: plot" in meta.read_text()


def test_the_daemon_and_cli_run_without_matplotlib(tmp_path):
    sock = tmp_path / "nbd.sock"
    code = NO_MATPLOTLIB + (
        "from ioband.control.config import load_config\n"
        "from ioband.control.embedded import EmbeddedDaemon\n"
        "from ioband.cli import build_parser\n"
        f"config = load_config({{'nbd': {{'unix_socket': {str(sock)!r}}}}})\n"
        "with EmbeddedDaemon(config):\n"
        "    pass\n"
        "build_parser()\n"
        "import ioband.control.top, ioband.control.metrics, ioband.sim\n"
        "assert sys.modules['matplotlib'] is None\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == "ok\n", res.stderr


def test_plots_name_the_extra_when_matplotlib_is_missing(tmp_path):
    code = NO_MATPLOTLIB + (
        "from ioband.experiments.plotting import PlotsUnavailable, draw\n"
        "from ioband.demo import plot\n"
        "for attempt in (lambda: draw(None, print), lambda: plot(None, [], [], 1.0)):\n"
        "    try:\n"
        "        attempt()\n"
        "    except PlotsUnavailable as err:\n"
        "        print(err)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 2
    assert all("pip install 'ioband[plot]'" in ln for ln in lines)
    # the experiment command: its JSON is written, then the error names the extra
    run = subprocess.run([sys.executable, "-c", NO_MATPLOTLIB + "from ioband.cli import main;"
                          f" sys.exit(main(['experiment', 'users-30-20', '--quick', '--out',"
                          f" {str(tmp_path)!r}]))"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 1 and "ioband[plot]" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    assert (tmp_path / "users-30-20.json").exists()
