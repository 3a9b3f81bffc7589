"""`ioband demo` end to end: a short run with real client processes over NBD."""

from __future__ import annotations

import shutil
import tempfile

import pytest

from ioband.cli import main
from tests.conftest import require_real


def test_demo_runs_real_clients_and_cleans_up(tmp_path, capsys, monkeypatch):
    require_real(shutil.which("fio") is not None, "fio is not installed")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    plot = tmp_path / "demo.png"
    assert main(["demo", "--seconds", "3", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "measured I/O shares against the weights" in out
    assert "with the scheduler bypassed, then" in " ".join(out.split())
    rows = [line.split() for line in out.splitlines() if line.startswith("  client")]
    assert len(rows) == 3
    # each row: client, w/sum, =, target, the uncontrolled share, the share under ioband
    shares = [[float(cell.rstrip("%")) for cell in row[-2:]] for row in rows]
    assert all(0 <= s <= 100 for row in shares for s in row)
    uncontrolled, controlled = zip(*shares, strict=True)
    assert sum(uncontrolled) == pytest.approx(100, abs=0.5)
    assert sum(controlled) == pytest.approx(100, abs=0.5)
    assert controlled[0] > controlled[2]  # weight 40 against 10, once ioband decides
    assert "(adaptive)" in out  # the default io_limit 0
    assert plot.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["demo.png"]  # the rest was removed


def test_demo_with_the_builtin_load_generator(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(shutil, "which", lambda name: None)  # as if fio were not installed
    assert main(["demo", "--seconds", "2", "--plot", ""]) == 0
    out = capsys.readouterr().out
    assert "built-in load generator" in out
    assert sum(line.startswith("  client") for line in out.splitlines()) == 3
    assert "no control" in out and "largest relative error" in out
