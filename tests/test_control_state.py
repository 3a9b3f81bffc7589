"""Persistence: configure through the CLI, SIGKILL the daemon, start it again: the same tables.
A corrupt or half-written state file is refused and the previous good state used."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ioband.control import state as persist
from tests.control_helpers import PYTHON, backing, control_daemon, sock_dir


class DaemonProcess:
    """``ioband daemon --config`` as a real process, and the CLI as processes too."""

    def __init__(self, tmp: Path, devices: str = "") -> None:
        self.sockets = sock_dir()
        self.socket = f"{self.sockets}/control.sock"
        self.state = str(tmp / "state" / "state.json")
        self.config = tmp / "ioband.toml"
        self.config.write_text(
            f'[daemon]\ncontrol_socket = "{self.socket}"\nstate_file = "{self.state}"\n'
            f'[nbd]\nunix_socket = "{self.sockets}/nbd.sock"\n{devices}'
        )
        self.proc: subprocess.Popen | None = None
        self.log = tmp / "daemon.log"

    def start(self) -> subprocess.Popen:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([PYTHON, "-m", "ioband", "daemon", "--config",
                                          str(self.config)], stdout=log, stderr=log)  # fmt: skip
        deadline = time.monotonic() + 20
        while self.cli("info").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return self.proc
            time.sleep(0.05)
        return self.proc

    def cli(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        env = {"IOBAND_SOCKET": self.socket, "PATH": "/usr/bin:/bin"}
        return subprocess.run([PYTHON, "-m", "ioband", *argv], input=stdin, env=env,
                              capture_output=True, text=True, timeout=30)  # fmt: skip

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.sockets, ignore_errors=True)


@pytest.fixture
def daemon(tmp_path):
    d = DaemonProcess(tmp_path)
    yield d
    d.close()


def test_restart_after_sigkill_keeps_the_configuration(daemon, tmp_path):
    assert daemon.start().poll() is None, daemon.log.read_text()
    a, b = backing(tmp_path, "a.img", 4096), backing(tmp_path, "b.img", 4096)
    steps = [
        ("create", "ioband1", "--table", f"0 4096 ioband {a} share1 0 0 none weight 0 :40"),
        ("create", "ioband2", "--table", f"0 4096 ioband {b} share1 0 0 none weight 0 :10"),
        ("create", "ioband3", "--table", f"0 2048 ioband {b} other 0 0 none range-bw 0 :0:0"),
        ("message", "ioband1", "0", "type", "user"),
        ("message", "ioband1", "0", "attach", "1000"),
        ("message", "ioband1", "0", "weight", "1000:30"),
        ("message", "ioband1", "0", "io_limit", "100"),
        ("message", "--", "ioband3", "0", "range-bw", "-1:5000:6000"),
        ("remove", "ioband3"),
    ]
    for argv in steps:
        run = daemon.cli(*argv)
        assert run.returncode == 0, (argv, run.stderr)
    before = daemon.cli("table").stdout
    assert before.splitlines() == [
        f"ioband1: 0 4096 ioband {a} share1 4 100 user weight 400 :40 1000:30",
        f"ioband2: 0 4096 ioband {b} share1 4 100 none weight 400 :10",
    ]
    daemon.kill(signal.SIGKILL)
    assert daemon.start().poll() is None, daemon.log.read_text()
    assert daemon.cli("table").stdout == before
    daemon.kill(signal.SIGTERM)  # a clean stop keeps it as well
    assert daemon.start().poll() is None, daemon.log.read_text()
    assert daemon.cli("table").stdout == before


def test_restart_keeps_what_the_user_set_and_only_that(daemon, tmp_path):
    """The token word of a table is the effective bucket; after a restart a defaulted token must
    still follow io_limit, a set one must not; a set carryover (in no table) must survive."""
    assert daemon.start().poll() is None, daemon.log.read_text()
    a, b = backing(tmp_path, "a.img", 4096), backing(tmp_path, "b.img", 4096)
    for name, path, group in (("d1", a, "g1"), ("d2", b, "g2")):
        table = f"0 4096 ioband {path} {group} 0 0 none weight 0 :40"
        assert daemon.cli("create", name, "--table", table).returncode == 0
    for argv in (("d2", "0", "token", "500"), ("d2", "0", "carryover", "3")):
        assert daemon.cli("message", *argv).returncode == 0
    daemon.kill()
    assert daemon.start().poll() is None, daemon.log.read_text()
    for name in ("d1", "d2"):
        assert daemon.cli("message", name, "0", "io_limit", "50").returncode == 0
    assert [x.split(" ", 5)[5] for x in daemon.cli("table").stdout.splitlines()] == [
        "g1 4 50 none weight 200 :40",  # the default token followed io_limit (4 x 50)
        "g2 4 50 none weight 500 :40",  # the token set by the user stayed
    ]
    saved = persist.load(daemon.state)[0]
    assert [d.messages for d in saved.devices] == [(), ("carryover 3",)]
    assert saved.devices[0].table == f"0 4096 ioband {a} g1 4 50 none weight 0 :40"


def test_corrupt_state_is_refused_and_the_previous_good_state_used(daemon, tmp_path):
    assert daemon.start().poll() is None
    a = backing(tmp_path, "a.img", 4096)
    daemon.cli("create", "ioband1", "--table", f"0 4096 ioband {a} 1 0 0 none weight 0 :40")
    daemon.cli("message", "ioband1", "0", "weight", "50")
    good = daemon.cli("table").stdout
    daemon.cli("message", "ioband1", "0", "weight", "60")
    daemon.kill()
    state = Path(daemon.state)
    text = state.read_text()
    state.write_text(text[: len(text) // 2])  # half-written
    assert daemon.start().poll() is None, daemon.log.read_text()
    assert daemon.cli("table").stdout == good  # the state before the last change
    log = daemon.log.read_text()
    assert f"refused state file {state}: not a complete ioband state file" in log
    assert f"using the previous good state {state}.prev" in log
    assert Path(f"{state}.corrupt").read_text() == text[: len(text) // 2]
    assert json.loads(state.read_text())["devices"][0]["name"] == "ioband1"  # good again


def test_no_good_state_at_all_refuses_to_start(daemon):
    Path(daemon.state).parent.mkdir()
    Path(daemon.state).write_text("{not json")
    Path(daemon.state + ".prev").write_text('{"format": "something else"}')
    proc = daemon.start()
    assert proc.wait(timeout=20) == 2
    log = daemon.log.read_text()
    assert "daemon.state_file" in log and f"{daemon.state}.prev: not an ioband state file" in log
    assert "Traceback" not in log


def test_saved_state_wins_over_the_configuration(tmp_path):
    a = backing(tmp_path, "a.img", 4096)
    devices = (
        f'[[device]]\nname = "ioband1"\ntable = "0 4096 ioband {a} 1 0 0 none weight 0 :40"\n'
        f'[[device]]\nname = "ioband2"\ntable = "0 4096 ioband {a} 1 0 0 none weight 0 :20"\n'
    )
    d = DaemonProcess(tmp_path, devices)
    try:
        assert d.start().poll() is None, d.log.read_text()
        assert d.cli("message", "ioband1", "0", "weight", "70").returncode == 0
        assert d.cli("remove", "ioband2").returncode == 0
        d.kill()
        assert d.start().poll() is None, d.log.read_text()
        assert d.cli("table").stdout == f"ioband1: 0 4096 ioband {a} 1 4 0 none weight 768 :70\n"
    finally:
        d.close()


def test_state_file_round_trip_and_atomic_save(tmp_path):
    path = str(tmp_path / "s.json")
    first = persist.State([persist.DeviceState("a", "0 8 ioband /x 1 4 192 none weight 768 :1")])
    persist.save(path, first)
    second = persist.State([], removed=["a"])
    persist.save(path, second)
    assert persist.load(path) == (second, [])
    assert persist.parse(Path(path + ".prev").read_text(), "p") == first
    assert sorted(os.listdir(tmp_path)) == ["s.json", "s.json.prev"]  # no temporary left
    for bad in ("", "[]", '{"format": "ioband-state", "version": 2}',
                '{"format": "ioband-state", "version": 1, "devices": [{"name": 1}]}'):  # fmt: skip
        with pytest.raises(persist.StateError, match=r"bad\.json"):
            persist.parse(bad, "bad.json")


def test_embedded_daemon_saves_every_change(tmp_path):
    state = str(tmp_path / "state.json")
    a = backing(tmp_path, "a.img", 2048)
    with control_daemon(state) as ctl:
        ctl.ok("create", "x", "--table", f"0 2048 ioband {a} 1 0 0 none weight 0 :10")
        assert persist.load(state)[0].devices[0].table.endswith(":10")
        ctl.ok("message", "x", "0", "weight", "20")
        assert persist.load(state)[0].devices[0].table.endswith(":20")
        ctl.ok("suspend", "x")  # not persisted, and harmless
        ctl.ok("remove", "x")
        assert persist.load(state)[0].devices == []


@pytest.mark.parametrize(
    ("daemon_keys", "key", "rule"),
    [
        ({"control_socket": 1}, "daemon.control_socket", "a path"),
        ({"state_file": True}, "daemon.state_file", "a path"),
        ({"admin_group": 7}, "daemon.admin_group", "a group name"),
        ({"control_sock": "/x"}, "daemon.control_sock", "did you mean 'control_socket'"),
    ],
)
def test_config_keys_are_checked(daemon_keys, key, rule):
    from ioband.control.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config({"daemon": daemon_keys, "nbd": {"unix_socket": "/tmp/x.sock"}})
    assert err.value.key == key and rule in err.value.rule


def test_config_defaults():
    from ioband.control.config import load_config

    plain = load_config({"nbd": {"unix_socket": "/tmp/x.sock"}})
    assert (plain.control_socket, plain.state_file, plain.admin_group) == (None, None, "ioband")
    service = load_config({"nbd": {"unix_socket": "/tmp/x.sock"}}, service_defaults=True)
    assert service.control_socket == "/run/ioband/control.sock"
    assert service.state_file == "/var/lib/ioband/state.json"
    off = load_config({"daemon": {"control_socket": "", "state_file": "", "admin_group": ""},
                       "nbd": {"unix_socket": "/tmp/x.sock"}}, service_defaults=True)  # fmt: skip
    assert (off.control_socket, off.state_file, off.admin_group) == (None, None, None)
