"""examples/ioband.service and examples/ioband.toml: the unit has the keys it needs (and passes
``systemd-analyze verify`` where that can run), the example configuration loads."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from ioband.control.config import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_unit_keys():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # case matters in unit files
    unit.read(EXAMPLES / "ioband.service")
    service = unit["Service"]
    assert service["Type"] == "simple"
    assert service["ExecStart"].endswith("ioband daemon --config /etc/ioband/ioband.toml")
    assert service["ExecReload"].endswith("kill -HUP $MAINPID")
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 30  # the daemon drains for up to 30 s
    assert service["RuntimeDirectory"] == "ioband"
    assert service["StateDirectory"] == "ioband"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "ioband.service"
    # ExecStart must name an existing executable for verify: point it at this Python's ioband
    ioband = shutil.which("ioband") or "/bin/true"
    text = (EXAMPLES / "ioband.service").read_text()
    unit.write_text(text.replace("/usr/local/bin/ioband", ioband))
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    errors = [ln for ln in res.stderr.splitlines() if "ioband.service" in ln]
    if res.returncode != 0 and not errors:
        pytest.skip(f"systemd-analyze cannot run here: {res.stderr.strip()[:200]}")
    assert res.returncode == 0, res.stderr


def test_example_config_loads():
    config = load_config(EXAMPLES / "ioband.toml", service_defaults=True)
    assert config.metrics_listen == ("127.0.0.1", 9469)
    assert config.control_socket == "/run/ioband/control.sock"
    assert [d.name for d in config.devices] == ["ioband1"]
