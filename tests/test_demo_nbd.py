"""`ioband demo` end to end: a short run with real client processes over NBD."""

from __future__ import annotations

import shutil
import tempfile

from ioband.cli import main
from tests.conftest import require_real


def test_demo_runs_real_clients_and_cleans_up(tmp_path, capsys, monkeypatch):
    require_real(shutil.which("fio") is not None, "fio is not installed")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    plot = tmp_path / "demo.png"
    assert main(["demo", "--seconds", "3", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "measured I/O shares against the weights" in out
    assert sum(line.startswith("  client") for line in out.splitlines()) == 3
    assert plot.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["demo.png"]  # the rest was removed


def test_demo_with_the_builtin_load_generator(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda name: None)  # as if fio were not installed
    assert main(["demo", "--seconds", "2", "--plot", ""]) == 0
    out = capsys.readouterr().out
    assert "built-in load generator" in out
    assert sum(line.startswith("  client") for line in out.splitlines()) == 3
