"""Access rules, the new configuration keys and their errors, and what the state file keeps of
them (issue 11). The real-user tests are in test_shared_host.py."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ioband.access import Access, Confinement, Peer, parse_rule
from ioband.control import state as persist
from ioband.control.config import ConfigError, load_config
from ioband.errors import AccessDenied, InvalidArgument

ALICE = Peer(uid=1000, gids=frozenset({1000, 100}), cgroup="/machine.slice/vm1.scope", pid=5)
LAN = Peer(address=ipaddress.ip_address("10.1.2.3"))


@pytest.mark.parametrize(
    ("rule", "alice", "lan"),
    [
        ("all", True, True),
        ("unix", True, False),
        ("tcp", False, True),
        ("uid:1000", True, False),
        ("uid:1001", False, False),
        ("gid:100", True, False),
        ("group:users", True, False),
        ("cgroup:/machine.slice", True, False),
        ("cgroup:/machine.slice/", True, False),
        ("cgroup:/machine", False, False),  # a prefix of a name is not a parent
        ("cgroup:/", True, False),
        ("net:10.0.0.0/8", False, True),
        ("net:10.1.2.3", False, True),
        ("net:192.168.0.0/16", False, False),
        ("net:::1", False, False),
    ],
)
def test_rules_match(rule, alice, lan):
    parsed = parse_rule(rule, "allow[0]")
    assert parsed.matches(ALICE) is alice
    assert parsed.matches(LAN) is lan


def test_a_peer_whose_cgroup_is_unknown_matches_no_cgroup_rule():
    gone = Peer(uid=1000, gids=frozenset({1000}), cgroup=None)
    assert not parse_rule("cgroup:/", "x").matches(gone)


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("everyone", "unknown rule"),
        ("uid:", "needs a value"),
        ("uid:-1", "must be a number"),
        ("uid:99999999999", "must be a number"),
        ("user:no-such-user-here", "no user"),
        ("group:no-such-group-here", "no group"),
        ("cgroup:machine.slice", "absolute cgroup path"),
        ("cgroup:/a/../b", "absolute cgroup path"),
        ("net:10.0.0.0/33", "net:"),
        ("net:hostname", "net:"),
        ("pid:1", "unknown rule"),
        (7, "must be a string"),
    ],
)
def test_malformed_rules_name_the_entry_and_the_rule(rule, why):
    with pytest.raises(InvalidArgument) as err:
        parse_rule(rule, "device[0].allow[2]")
    assert str(err.value).startswith("device[0].allow[2]: ") and why in str(err.value)


def test_decisions():
    rules = Access.parse(["uid:1000"], ["net:10.0.0.0/8", "gid:100"])
    assert rules.decide(ALICE) == "rw"
    assert rules.decide(LAN) == "ro"
    assert rules.decide(Peer(uid=2000, gids=frozenset({100}))) == "ro"
    assert rules.decide(Peer(uid=2000, gids=frozenset({2000}))) is None
    assert rules.decide(Peer(uid=0)) == "rw"  # root on the unix socket
    assert Access().decide(LAN) == "rw"  # no rules: whoever reaches the listener


def test_confinement(tmp_path):
    allowed = tmp_path / "ok"
    allowed.mkdir()
    (allowed / "a.img").write_bytes(b"x")
    (tmp_path / "okay-not").mkdir()
    (tmp_path / "okay-not" / "b.img").write_bytes(b"x")
    (allowed / "link").symlink_to(tmp_path / "okay-not")
    confine = Confinement((str(allowed),), ())
    fd = os.open(allowed / "a.img", os.O_RDONLY)
    try:
        confine.check_backing(fd, "a.img")
    finally:
        os.close(fd)
    fd = os.open(allowed / "link" / "b.img", os.O_RDONLY)  # a symlink out of the directory
    try:
        with pytest.raises(AccessDenied, match="allowed_backing"):
            confine.check_backing(fd, "b.img")
    finally:
        os.close(fd)
    with pytest.raises(AccessDenied, match="symlink"):
        confine.check_mount(str(allowed / "link"), None)
    with pytest.raises(AccessDenied, match=r"allowed_mounts \(empty: root only"):
        confine.check_mount(str(allowed), str(tmp_path))


# -- configuration ---------------------------------------------------------------------------


def test_defaults_are_safe():
    config = load_config({"nbd": {"unix_socket": "/tmp/x.sock"}})
    assert config.socket_mode == 0o660 and config.socket_group == "ioband"
    assert not config.socket_group_required
    assert config.handshake_timeout == 10 and config.max_connections == 1000
    assert config.max_connections_per_uid == 100
    assert config.allowed_backing == () and config.allowed_mounts == ()


def test_new_keys_are_read():
    config = load_config(
        '[daemon]\nallowed_backing = ["/srv/img/"]\nallowed_mounts = ["/mnt"]\n'
        '[nbd]\nsocket_mode = "0600"\nsocket_group = "users"\nhandshake_timeout = 2.5\n'
        "max_connections = 50\nmax_connections_per_uid = 5\n"
        '[[device]]\nname = "a"\ntable = "t"\nallow = ["uid:1", "group:users"]\n'
        'allow_ro = ["net:10.0.0.0/8"]\n'
    )
    assert config.socket_mode == 0o600 and config.socket_group_required
    assert config.allowed_backing == ("/srv/img",) and config.handshake_timeout == 2.5
    assert config.devices[0].allow == ("uid:1", "group:users")
    assert config.devices[0].allow_ro == ("net:10.0.0.0/8",)


@pytest.mark.parametrize(
    ("text", "key", "rule"),
    [
        ('[nbd]\nsocket_mode = "0999"', "nbd.socket_mode", "octal permission bits"),
        ("[nbd]\nsocket_mode = 4096", "nbd.socket_mode", "octal permission bits"),
        ("[nbd]\nsocket_group = 5", "nbd.socket_group", "a group name"),
        ("[nbd]\nhandshake_timeout = 0", "nbd.handshake_timeout", "0.1..3600"),
        ('[nbd]\nhandshake_timeout = "10"', "nbd.handshake_timeout", "a number of seconds"),
        ("[nbd]\nmax_connections = 0", "nbd.max_connections", "1..1000000"),
        ("[nbd]\nmax_connections = 10\nmax_connections_per_uid = 20",
         "nbd.max_connections_per_uid", "must not exceed"),
        ('[daemon]\nallowed_backing = "/srv"', "daemon.allowed_backing", "an array of paths"),
        ('[daemon]\nallowed_mounts = ["mnt"]', "daemon.allowed_mounts[0]", "absolute path"),
        ('[[device]]\nname = "a"\ntable = "t"\nallow = "all"', "device[0].allow",
         "an array of rules"),
        ('[[device]]\nname = "a"\ntable = "t"\nallow_ro = ["all", "uid:x"]',
         "device[0].allow_ro[1]", "must be a number"),
        ('[[device]]\nname = "a"\ntable = "t"\nmountpoint = "/mnt"\nallow = ["all"]',
         "device[0].allow", "NBD exports only"),
        ("[nbd]\nsocket_mod = 1", "nbd.socket_mod", "did you mean 'socket_mode'"),
    ],
)  # fmt: skip
def test_bad_keys_are_named(text, key, rule):
    with pytest.raises(ConfigError) as err:
        load_config(text + "\n")
    assert err.value.key == key and rule in err.value.rule, err.value


# -- the state file ------------------------------------------------------------------------------


def test_state_keeps_the_rules(tmp_path):
    path = str(tmp_path / "state.json")
    dev = persist.DeviceState("a", "t", allow=("uid:1",), allow_ro=("net:10.0.0.0/8",))
    persist.save(path, persist.State([dev]))
    loaded, problems = persist.load(path)
    assert loaded.devices == [dev] and problems == []
    text = Path(path).read_text().replace('"uid:1"', "1")
    with pytest.raises(persist.StateError):
        persist.parse(text, path)


def test_temporaries_of_a_killed_daemon_are_removed(tmp_path):
    path = str(tmp_path / "state.json")
    persist.save(path, persist.State([]))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    (tmp_path / f"state.json.tmp.{dead}").write_text("{")
    (tmp_path / f"state.json.tmp.{os.getppid()}").write_text("{")  # a live process: kept
    (tmp_path / "state.json.tmp.x").write_text("{")  # not ours: kept
    _, problems = persist.load(path)
    assert problems == [f"removed state.json.tmp.{dead}, left by an interrupted save"]
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["state.json", f"state.json.tmp.{os.getppid()}", "state.json.tmp.x"]
    )


def test_create_with_rules_is_saved_and_restored(tmp_path):
    from tests.control_helpers import backing, control_daemon

    state = str(tmp_path / "state.json")
    path = backing(tmp_path, "a.img", 2048)
    table = f"0 2048 ioband {path} 1 0 0 none weight 0 :40"
    with control_daemon(state) as ctl:
        rc, _, err = ctl.run("create", "bad", "--table", table, "--allow", "uid:x")
        assert rc == 2 and err.startswith("ioband create: allow[0]: 'uid:x': uid: must be")
        ctl.ok("create", "ioband1", "--table", table, "--allow", "group:users",
               "--allow-ro", "net:10.0.0.0/8")  # fmt: skip
        assert [d.name for d in persist.load(state)[0].devices] == ["ioband1"]
    saved = persist.load(state)[0].devices[0]
    assert saved.allow == ("group:users",) and saved.allow_ro == ("net:10.0.0.0/8",)
    with control_daemon(state) as ctl:
        export = ctl.embedded.daemon.exports["ioband1"]
        assert export.access == Access.parse(["group:users"], ["net:10.0.0.0/8"])
