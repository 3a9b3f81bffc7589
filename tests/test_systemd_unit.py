"""examples/ioband.service and examples/ioband.toml: the unit has the keys it needs (Type=notify,
hardening that keeps the FUSE mounts visible, the path pip installs to) and passes
``systemd-analyze verify`` (its man page found too); the example configuration loads.
Readiness itself is tested with a real daemon in tests/test_sdnotify.py."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ioband.control.config import load_config
from tests.conftest import require_real

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_unit_keys():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # case matters in unit files
    unit.read(EXAMPLES / "ioband.service")
    service = unit["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    # where `python3 -m venv /opt/ioband && /opt/ioband/bin/pip install .` puts the command
    assert service["ExecStart"] == "/opt/ioband/bin/ioband daemon --config /etc/ioband/ioband.toml"
    assert service["ExecReload"].endswith("kill -HUP $MAINPID")
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 30  # the daemon drains for up to 30 s
    assert service["RuntimeDirectory"] == "ioband"
    assert service["StateDirectory"] == "ioband"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert service["NoNewPrivileges"] == "yes" and "CAP_SYS_ADMIN" in service[
        "CapabilityBoundingSet"]  # fmt: skip
    # each of these gives the service its own mount namespace: FUSE mounts would not be seen
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectControlGroups", "ProtectKernelModules", "ReadOnlyPaths"):  # fmt: skip
        assert key not in service, key
    assert unit["Unit"]["Documentation"].startswith("man:ioband(1)")


def test_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    require_real(analyze is not None, "systemd-analyze is not installed")
    unit = tmp_path / "ioband.service"
    # ExecStart must name an existing executable for verify: this Python's ioband
    ioband = str(Path(sys.executable).with_name("ioband"))
    assert Path(ioband).exists()
    text = (EXAMPLES / "ioband.service").read_text()
    unit.write_text(text.replace("/opt/ioband/bin/ioband", ioband))
    # Documentation=man:ioband(1) is checked too: the page where man finds it
    man1 = tmp_path / "man" / "man1"
    man1.mkdir(parents=True)
    shutil.copy(EXAMPLES.parent / "docs" / "ioband.1", man1 / "ioband.1")
    env = {**os.environ, "MANPATH": f"{tmp_path / 'man'}:"}
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60, env=env)  # fmt: skip
    errors = [ln for ln in res.stderr.splitlines() if "ioband.service" in ln]
    if res.returncode != 0 and not errors:
        require_real(False, f"systemd-analyze cannot run here: {res.stderr.strip()[:200]}")
    assert res.returncode == 0 and not errors, res.stderr


def test_example_config_loads():
    config = load_config(EXAMPLES / "ioband.toml", service_defaults=True)
    assert config.metrics_listen == ("127.0.0.1", 9469)
    assert config.control_socket == "/run/ioband/control.sock"
    assert [d.name for d in config.devices] == ["ioband1"]
