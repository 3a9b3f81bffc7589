"""Groups attached by cgroup path and groups attached by rules, in the sans-I/O engine and the
configuration (the real cgroups and real I/O are in test_cgroup_rules_real.py)."""

from __future__ import annotations

import pytest

from ioband.cgroup.paths import CgroupPaths
from ioband.cgroup.proc import Hierarchy, relative
from ioband.control.config import ConfigError, load_config
from ioband.control.state import DeviceState, State, parse
from ioband.core.engine import Engine
from ioband.core.grammar import (
    Rule,
    key_text,
    parse_group_id,
    parse_group_param,
    parse_message,
    parse_rule,
)
from ioband.core.request import Request, Submitter
from ioband.errors import InvalidArgument, IobandError

HEAD = "0 1024 ioband sda1 1 0 0"


def table(rest: str, gtype: str = "cgroup") -> str:
    return f"{HEAD} {gtype} weight 0 :100 {rest}".strip()


def owner(ino: int, path: str | None, uid: int = 0) -> Submitter:
    return Submitter(pid=1, pgrp=1, uid=uid, cgroup=ino, cgroup_path=path)


def read(engine: Engine, who: Submitter, name: str = "ioband1"):
    req = Request(False, 0, 4096, who)
    engine.submit(engine.device(name), req, engine.now)
    return req.group


# -- grammar --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("machine.slice/vm1.scope:200", "machine.slice/vm1.scope"),
        ("/machine.slice/vm1.scope:200", "machine.slice/vm1.scope"),
        ("/a//b/:200", "a/b"),
        ("/123:200", "123"),  # a cgroup named like a number: the leading '/' makes it a path
        ("/a%3Ab:200", "a:b"),  # a delimiter inside a name is percent-encoded
        ("42:200", 42),
    ],
)
def test_group_param_takes_a_cgroup_path(text, key):
    assert parse_group_param(text, paths=True) == (key, "200")


@pytest.mark.parametrize("key", ["machine.slice/vm1.scope", "a:b", "x y", "100%", "12", "a,b=c"])
def test_a_path_key_is_written_so_it_reads_back(key):
    written = key_text(key)
    assert written.startswith("/") and " " not in written
    assert parse_group_param(f"{written}:7", paths=True) == (key, "7")
    assert parse_group_id(written, "attach", paths=True) == key


@pytest.mark.parametrize(
    ("text", "why"),
    [("/:200", "the root cgroup"), ("a/../b:1", "'..'"), ("./a:1", "'.'")],
)
def test_bad_cgroup_paths_are_refused(text, why):
    with pytest.raises(InvalidArgument, match=why):
        parse_group_param(text, paths=True)


def test_a_path_is_only_a_key_for_type_cgroup():
    with pytest.raises(InvalidArgument, match="a cgroup path is a key only for type cgroup"):
        parse_group_id("machine.slice", "attach")
    with pytest.raises(InvalidArgument, match="must be a group id"):
        parse_group_param("machine.slice:1")


def test_misspelt_message_gets_a_suggestion():
    with pytest.raises(InvalidArgument, match=r"did you mean 'weight'\?"):
        parse_message(["wieght", "1:20"])


# -- the engine -----------------------------------------------------------------------------------
def test_table_with_paths_reloads_unchanged():
    engine = Engine()
    engine.create("ioband1", table("5:50 machine.slice/vm1.scope:200 /a%3Ab:30"))
    shown = engine.table("ioband1")
    assert shown.endswith(":100 5:50 /a%3Ab:30 /machine.slice/vm1.scope:200")
    again = Engine()
    again.create("ioband1", shown)
    assert again.table("ioband1") == shown


def test_status_names_path_groups_by_path():
    engine = Engine()
    engine.create("ioband1", table("machine.slice/vm1.scope:200"))
    status = engine.status("ioband1")
    assert " /machine.slice/vm1.scope 0 0 0 0 0 0" in status


def test_a_recreated_cgroup_keeps_its_path_group():
    engine = Engine()
    engine.create("ioband1", table("machine.slice/vm1.scope:200"))
    first = read(engine, owner(1001, "machine.slice/vm1.scope"))
    again = read(engine, owner(2002, "machine.slice/vm1.scope"))  # rmdir + mkdir: a new inode
    assert first is again and first.id == "machine.slice/vm1.scope" and first.weight == 200
    assert read(engine, owner(3003, "machine.slice/vm2.scope")) is engine.device("ioband1").head


def test_an_id_group_wins_over_a_path_group():
    engine = Engine()
    engine.create("ioband1", table("1001:20 machine.slice/vm1.scope:200"))
    assert read(engine, owner(1001, "machine.slice/vm1.scope")).id == 1001


def test_messages_take_paths():
    engine = Engine()
    engine.create("ioband1", table(""))
    engine.message("ioband1", "attach machine.slice/vm1.scope")
    engine.message("ioband1", "weight machine.slice/vm1.scope:300")
    assert engine.table("ioband1").endswith(" /machine.slice/vm1.scope:300")
    with pytest.raises(IobandError, match=r"attach: id=/machine.slice/vm1.scope already exists"):
        engine.message("ioband1", "attach /machine.slice/vm1.scope/")
    engine.message("ioband1", "detach /machine.slice/vm1.scope")
    with pytest.raises(IobandError, match=r"weight: id=/machine.slice/vm1.scope not found"):
        engine.message("ioband1", "weight machine.slice/vm1.scope:300")


def test_rules_attach_new_groups_first_match_wins():
    engine = Engine()
    engine.create("ioband1", table(""))
    engine.set_rules("ioband1", [
        Rule("cgroup", "machine.slice/big*.scope", "400"),
        Rule("cgroup", "machine.slice/*.scope", "200"),
    ])  # fmt: skip
    big = read(engine, owner(11, "machine.slice/big1.scope"))
    small = read(engine, owner(12, "machine.slice/vm1.scope"))
    assert (big.weight, small.weight, big.by_rule) == (400, 200, True)
    # '*' stays inside one component; other paths go to the default group
    dev = engine.device("ioband1")
    assert read(engine, owner(13, "machine.slice/a/b.scope")) is dev.head
    assert read(engine, owner(14, "system.slice/x.service")) is dev.head
    # a rule's groups are not in the table (the rule makes them again) but are in the status
    assert engine.table("ioband1").endswith(":100")
    assert "/machine.slice/big1.scope" in engine.status("ioband1")
    # attached by hand afterwards: the table lists it
    engine.message("ioband1", "attach machine.slice/vm1.scope")
    assert engine.table("ioband1").endswith(":100 /machine.slice/vm1.scope:200")


def test_uid_rules_for_the_user_type():
    engine = Engine()
    engine.create("ioband1", table("", "user"))
    engine.set_rules("ioband1", [Rule("uid", "1000-1999", "50")])
    g = read(engine, owner(0, None, uid=1500))
    assert (g.id, g.weight) == (1500, 50)
    assert read(engine, owner(0, None, uid=2000)) is engine.device("ioband1").head
    with pytest.raises(IobandError, match="a rule on cgroup does not apply to group type user"):
        engine.set_rules("ioband1", [Rule("cgroup", "*", "5")])


def test_range_bw_rules():
    engine = Engine()
    engine.create("ioband1", f"{HEAD} cgroup range-bw 0 :0:0")
    engine.set_rules("ioband1", [Rule("cgroup", "*.scope", "100:2000")])
    g = read(engine, owner(5, "vm.scope"))
    assert (g.min_bw, g.max_bw) == (100, 2000)
    with pytest.raises(IobandError, match="rule"):
        engine.set_rules("ioband1", [Rule("cgroup", "*.scope", "200")])


# -- configuration, state -------------------------------------------------------------------------
def conf(rules: str, gtype: str = "cgroup") -> str:
    return (
        '[nbd]\nunix_socket = "/tmp/x.sock"\n[[device]]\nname = "ioband1"\n'
        f'table = "0 8 ioband /tmp/disk 1 0 0 {gtype} weight 0 :100"\n{rules}'
    )


def test_config_rules_are_read():
    config = load_config(conf(
        '[[device.rule]]\ncgroup = "/machine.slice/*.scope"\nweight = 200\n'
        '[[device.rule]]\ncgroup = "*"\nrange-bw = "0:100"\n'
    ))  # fmt: skip
    assert config.devices[0].rules == (
        Rule("cgroup", "machine.slice/*.scope", "200"),
        Rule("cgroup", "*", "0:100"),
    )


@pytest.mark.parametrize(
    ("rule", "gtype", "key", "why"),
    [
        ('cgroup = "a/*"\nwieght = 2', "cgroup", "device[0].rule[0].wieght",
         "unknown key (did you mean 'weight'?)"),
        ('uid = 5\nweight = 2', "cgroup", "device[0].rule[0]",
         "a rule of a device of type cgroup matches on 'cgroup' (and only on it); given: uid"),
        ('cgroup = "a"\nuid = 5\nweight = 2', "user", "device[0].rule[0]",
         "matches on 'uid' (and only on it); given: cgroup, uid"),
        ('cgroup = "a"', "cgroup", "device[0].rule[0]", "needs exactly one of weight or range-bw"),
        ('cgroup = "a"\nweight = 0', "cgroup", "device[0].rule[0].weight",
         "Invalid weight: weight 0 is not in 1..32767"),
        ('cgroup = "a"\nweight = "x"', "cgroup", "device[0].rule[0].weight",
         "must be an integer, got 'x'"),
        ('cgroup = "a"\nrange-bw = "5"', "cgroup", "device[0].rule[0].range-bw",
         "Invalid range-bw: '5' must be MIN:MAX"),
        ('cgroup = "../a"\nweight = 2', "cgroup", "device[0].rule[0].cgroup",
         "invalid cgroup path '../a'"),
        ('cgroup = "/"\nweight = 2', "cgroup", "device[0].rule[0].cgroup",
         "the root cgroup is the default group"),
        ('cgroup = 5\nweight = 2', "cgroup", "device[0].rule[0].cgroup",
         "must be a glob string, got 5"),
        ('uid = "9-3"\nweight = 2', "user", "device[0].rule[0].uid",
         "must be '*', an id N or a range 'LO-HI'"),
        ('gid = -1\nweight = 2', "gid", "device[0].rule[0].gid",
         "must be '*', an id N or a range 'LO-HI'"),
        ('pid = 1\nweight = 2', "pid", "device[0].rule[0]", "group type 'pid' has no rules"),
    ],
)  # fmt: skip
def test_malformed_rules_are_refused_naming_rule_and_field(rule, gtype, key, why):
    with pytest.raises(ConfigError) as info:
        load_config(conf(f"[[device.rule]]\n{rule}\n", gtype))
    assert info.value.key == key, str(info.value)
    assert why in info.value.rule, str(info.value)


def test_rule_must_be_a_table():
    with pytest.raises(ConfigError, match=r"device\[0\]\.rule: must be an array of tables"):
        load_config(conf('rule = "x"\n'))


def test_rules_in_the_state_file_round_trip():
    rules = (Rule("cgroup", "machine.slice/*.scope", "200"), Rule("cgroup", "x", "1:2"))
    state = State([DeviceState("ioband1", "0 8 ioband /d 1 0 0 cgroup weight 0 :100", rules=rules)])
    text = state.to_json()
    assert '"cgroup": "machine.slice/*.scope"' in text and '"weight": 200' in text
    assert parse(text, "state.json").devices[0].rules == rules


def test_parse_rule_uid_forms():
    assert parse_rule({"uid": 7, "weight": 3}, "r", "user") == Rule("uid", "7", "3")
    assert parse_rule({"gid": "*", "weight": 3}, "r", "gid").matches_id(123)


# -- resolution (real hierarchies) ---------------------------------------------------------------
def test_relative_paths_from_proc():
    assert relative("/machine.slice/vm1.scope") == "machine.slice/vm1.scope"
    assert relative("/") is None and relative(None) is None


@pytest.mark.parametrize("mount", ["/sys/fs/cgroup/blkio", "/sys/fs/cgroup/unified"])
def test_inode_to_path_follows_a_recreated_cgroup(mount, tmp_path):
    from pathlib import Path

    from tests.conftest import require_real

    require_real(Path(mount, "cgroup.procs").exists(), f"{mount} is not mounted")
    paths = CgroupPaths(Hierarchy(1 if mount.endswith("blkio") else 2, Path(mount)))
    cg = Path(mount, f"ioband-test-{tmp_path.name}")
    cg.mkdir()
    try:
        first = cg.stat().st_ino
        assert paths.path_of(first) == cg.name and paths.inode(cg.name) == first
        cg.rmdir()
        cg.mkdir()
        second = cg.stat().st_ino
        assert second != first
        assert paths.path_of(second) == cg.name
    finally:
        cg.rmdir()
    assert not paths.exists(cg.name)


# -- a running daemon: status, table, state file, metrics and top name path groups by path ------
def test_a_running_daemon_shows_path_groups_by_path(tmp_path):
    from ioband.control.metrics import EngineCollector, snapshot
    from tests.control_helpers import backing, control_daemon

    state = tmp_path / "state.json"
    img = backing(tmp_path, "d.img", 64)
    with control_daemon(str(state)) as ctl:
        ctl.ok(
            "create",
            "ioband1",
            "--table",
            f"0 64 ioband {img} 1 0 0 cgroup weight 0 :100 machine.slice/vm1.scope:200",
        )
        ctl.ok("message", "ioband1", "0", "attach", "machine.slice/vm2.scope")
        assert (
            ctl.ok("table", "ioband1")
            .rstrip()
            .endswith(":100 /machine.slice/vm1.scope:200 /machine.slice/vm2.scope:100")
        )
        assert " /machine.slice/vm1.scope 0 0 0 0 0 0" in ctl.ok("status", "ioband1")
        saved = state.read_text()
        assert "/machine.slice/vm1.scope:200 /machine.slice/vm2.scope:100" in saved
        daemon = ctl.embedded.daemon  # idle: read from this thread
        snap = snapshot(daemon)
        labels = {
            sample.labels["group"]
            for family in EngineCollector(daemon).collect()
            for sample in family.samples
            if "group" in sample.labels
        }
    names = [g["name"] for g in snap["devices"][0]["groups"]]
    assert names == ["-1", "/machine.slice/vm1.scope", "/machine.slice/vm2.scope"]
    assert {"/machine.slice/vm1.scope", "/machine.slice/vm2.scope"} <= labels


def test_a_reload_replaces_the_rules_and_a_restart_keeps_them(tmp_path):
    from ioband.control.embedded import EmbeddedDaemon
    from tests.control_helpers import backing, sock_dir

    img = backing(tmp_path, "d.img", 64)
    sockets = sock_dir()
    state = tmp_path / "state.json"

    def config(weight: int):
        return load_config({
            "daemon": {"state_file": str(state)},
            "nbd": {"unix_socket": f"{sockets}/nbd.sock"},
            "device": [{
                "name": "ioband1",
                "table": f"0 64 ioband {img} 1 0 0 cgroup weight 0 :100 machine.slice/a.scope:50",
                "rule": [{"cgroup": "machine.slice/*.scope", "weight": weight}],
            }],
        })  # fmt: skip

    def rules(d) -> tuple[Rule, ...]:
        return d.call(lambda: d.daemon.engine.device("ioband1").rules)

    with EmbeddedDaemon(config(200)) as d:
        assert rules(d) == (Rule("cgroup", "machine.slice/*.scope", "200"),)
        outcome = d.call(lambda: d.daemon.reload(config(300)))
        assert outcome, outcome.refused
        assert rules(d) == (Rule("cgroup", "machine.slice/*.scope", "300"),)
        assert "machine.slice/*.scope" in state.read_text()
    with EmbeddedDaemon(config(200)) as d:  # the state file wins, as for every field
        assert rules(d) == (Rule("cgroup", "machine.slice/*.scope", "300"),)
        table = d.call(lambda: d.daemon.engine.table("ioband1"))
        assert table.endswith(":100 /machine.slice/a.scope:50")


def test_rules_of_another_type_are_inert_after_a_type_message():
    engine = Engine()
    engine.create("ioband1", table(""))
    engine.set_rules("ioband1", [Rule("cgroup", "*", "5")])
    engine.message("ioband1", "type user")  # a reload may change the type, then the rules
    dev = engine.device("ioband1")
    assert read(engine, owner(7, "a", uid=7)) is dev.head  # the cgroup rule does not apply
    engine.set_rules("ioband1", [Rule("uid", "7", "9")])
    assert read(engine, owner(8, "a", uid=7)).weight == 9
