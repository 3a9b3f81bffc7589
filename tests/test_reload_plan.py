"""The reload plan (``ioband.control.reload.plan_reload``): the three-way merge of the old file,
the new file and the running state, worked out on scratch engines, without a running daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from ioband.control.config import ConfigError, load_config
from ioband.control.daemon import Daemon
from ioband.control.reload import FIELD_RULES, Plan, Rule, plan_reload

SECTORS = 2048


@pytest.fixture
def disks(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name in ("d1", "d2", "d3"):
        path = tmp_path / name
        with open(path, "wb") as f:
            f.truncate(SECTORS * 512)
        out[name] = str(path)
    return out


def config(*devices: dict):
    return load_config({"nbd": {"unix_socket": "/nonexistent/nbd.sock"}, "device": list(devices)})


def dev(
    name: str,
    disk: str,
    policy_part: str,
    *,
    dg: int = 1,
    gtype: str = "user",
    throttle: int = 0,
    limit: int = 0,
    policy: str = "weight",
    **extra,
) -> dict:
    table = f"0 {SECTORS} ioband {disk} {dg} {throttle} {limit} {gtype} {policy} {policy_part}"
    return {"name": name, "table": table, **extra}


class Running:
    """A daemon that is not started: its engine and options are the running state."""

    def __init__(self, cfg) -> None:
        self.daemon = Daemon(cfg)
        for d in cfg.devices:
            self.daemon.add_configured(d)

    def message(self, name: str, text: str) -> None:
        self.daemon.engine.message(name, text)

    def plan(self, old, new, removed=()) -> Plan:
        return plan_reload(old, new, self.daemon.running_state(), removed)

    def apply(self, plan: Plan) -> None:
        for step in plan.steps:
            self.daemon.engine.message(step.device, list(step.words))

    def table(self, name: str) -> str:
        return self.daemon.engine.table(name)

    def close(self) -> None:
        for export in self.daemon.exports.values():
            export.backing.close()


@pytest.fixture
def running():
    made: list[Running] = []

    def make(cfg) -> Running:
        made.append(Running(cfg))
        return made[-1]

    yield make
    for r in made:
        r.close()


def messages(plan: Plan) -> list[str]:
    return [f"{s.device}: {' '.join(s.words)}" for s in plan.steps]


def test_one_weight_changes_and_run_time_changes_survive(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40 1000:20 2000:10"))
    run = running(old)
    run.message("ioband1", "weight 2000:77")  # a run-time change the file does not touch
    run.message("ioband1", "attach 3000")  # a group attached at run time
    new = config(dev("ioband1", disks["d1"], "0 :40 1000:30 2000:10"))
    plan = run.plan(old, new)
    assert messages(plan) == ["ioband1: weight 1000:30"]
    assert not plan.recreate and not plan.create and not plan.remove
    run.apply(plan)
    assert run.table("ioband1").endswith(":40 1000:30 2000:77 3000:100")


def test_nothing_changed_is_nothing_to_do(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40 1000:20", messages=["carryover 3"]))
    run = running(old)
    run.message("ioband1", "weight 50")
    plan = run.plan(old, old)
    assert plan.steps == [] and plan.lines() == ["nothing to change"]


def test_attach_and_detach(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40 1000:20 2000:10"))
    run = running(old)
    run.message("ioband1", "detach 1000")  # detached at run time, kept by the file
    new = config(dev("ioband1", disks["d1"], "0 :40 1000:20 3000:50"))
    plan = run.plan(old, new)
    assert messages(plan) == [
        "ioband1: detach 2000",
        "ioband1: attach 3000",
        "ioband1: weight 3000:50",
    ]
    assert any("group 1000 was detached at run time" in n for n in plan.notes)
    run.apply(plan)
    assert run.table("ioband1").endswith(":40 3000:50")


def test_policy_switch_comes_first_then_the_groups(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40 1000:20"))
    run = running(old)
    run.message("ioband1", "weight 1000:60")
    new = config(dev("ioband1", disks["d1"], "0 :0:500 1000:100:200", policy="range-bw"))
    plan = run.plan(old, new)
    assert messages(plan) == [
        "ioband1: policy range-bw",
        "ioband1: range-bw :0:500",
        "ioband1: range-bw 1000:100:200",
    ]
    run.apply(plan)
    assert run.table("ioband1").endswith("range-bw 12288 :0:500 1000:100:200")


def test_policy_switch_within_the_weight_family_resets_to_the_file(disks, running):
    old = config(dev("ioband1", disks["d1"], "256 :40 1000:20"))
    run = running(old)
    run.message("ioband1", "weight 1000:60")  # the switch resets it (dm-ioband): file value
    new = config(dev("ioband1", disks["d1"], "256 :40 1000:20", policy="weight-iosize"))
    plan = run.plan(old, new)
    assert messages(plan) == [
        "ioband1: policy weight-iosize",
        "ioband1: token 256",
        "ioband1: weight 1000:20",
    ]


def test_io_limit_and_io_throttle_in_a_valid_order(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40", throttle=4, limit=16))
    run = running(old)
    new = config(dev("ioband1", disks["d1"], "0 :40", throttle=32, limit=64))
    plan = run.plan(old, new)
    assert messages(plan) == ["ioband1: io_limit 64", "ioband1: io_throttle 32"]
    run.apply(plan)
    back = run.plan(new, old)
    assert messages(back) == ["ioband1: io_throttle 4", "ioband1: io_limit 16"]
    run.apply(back)
    assert " 1 4 16 user weight" in run.table("ioband1")


@pytest.mark.parametrize(
    ("before", "after", "steps", "shown"),
    [
        (100, 0, ["ioband1: io_limit 0"], "4 0"),  # pinned -> adaptive
        (0, 192, ["ioband1: io_limit 192"], "4 192"),  # adaptive -> pinned at its derived value
        (192, 0, ["ioband1: io_limit 0"], "4 0"),  # pinned at the derived value -> adaptive
        (0, 0, [], "4 0"),
    ],
)
def test_io_limit_0_adaptive_and_pinned_are_different_settings(
    disks, running, before, after, steps, shown
):
    """Issue 12: ``io_limit 0`` (adaptive, shown as 0) is not ``io_limit 192`` although both
    have the effective limit 192 on a file: a reload between them sends the message."""
    old = config(dev("ioband1", disks["d1"], "0 :40", limit=before))
    run = running(old)
    plan = run.plan(old, config(dev("ioband1", disks["d1"], "0 :40", limit=after)))
    assert messages(plan) == steps
    run.apply(plan)
    assert f" 1 {shown} user weight 768 :40" in run.table("ioband1")


def test_io_limit_pinned_at_run_time_survives_a_reload_that_keeps_0(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40"))
    run = running(old)
    run.message("ioband1", "io_limit 192")  # pinned at run time; the file keeps io_limit 0
    new = config(dev("ioband1", disks["d1"], "0 :20"))
    assert messages(run.plan(old, new)) == ["ioband1: weight :20"]


def test_io_limit_0_rederives_when_the_file_lowers_io_throttle(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40", throttle=300))  # derived 192 -> 300
    run = running(old)
    new = config(dev("ioband1", disks["d1"], "0 :40"))  # io_limit 0 derives 192 again
    plan = run.plan(old, new)
    assert messages(plan) == ["ioband1: io_throttle 4", "ioband1: io_limit 0"]
    run.apply(plan)
    assert " 1 4 0 user weight 768 :40" in run.table("ioband1")
    assert run.daemon.engine.device("ioband1").dp.io_limit == 192


def test_io_limit_of_a_shared_device_group_is_sent_once(disks, running):
    old = config(
        dev("ioband1", disks["d1"], "0 :40", limit=16),
        dev("ioband2", disks["d2"], "0 :10", limit=16),
    )
    run = running(old)
    new = config(
        dev("ioband1", disks["d1"], "0 :40", limit=32),
        dev("ioband2", disks["d2"], "0 :10", limit=32),
    )
    assert messages(run.plan(old, new)) == ["ioband1: io_limit 32"]


def test_token_and_carryover(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40"))
    run = running(old)
    new = config(dev("ioband1", disks["d1"], "512 :40", messages=["carryover 4"]))
    assert messages(run.plan(old, new)) == ["ioband1: token 512", "ioband1: carryover 4"]


def test_a_change_of_the_messages_list(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40", messages=["attach 1000", "weight 1000:20"]))
    run = running(old)
    new = config(dev("ioband1", disks["d1"], "0 :40", messages=["attach 1000", "weight 1000:25"]))
    assert messages(run.plan(old, new)) == ["ioband1: weight 1000:25"]
    # the same settings written as a table instead of messages: nothing to do
    same = config(dev("ioband1", disks["d1"], "0 :40 1000:20"))
    assert messages(run.plan(old, same)) == []


def test_a_type_change_detaches_everything_first(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40 1000:20"))
    run = running(old)
    run.message("ioband1", "attach 5")
    new = config(dev("ioband1", disks["d1"], "0 :40 1000:20", gtype="uid"))
    plan = run.plan(old, new)
    assert messages(plan) == [
        "ioband1: detach 5",
        "ioband1: detach 1000",
        "ioband1: type uid",
        "ioband1: attach 1000",
        "ioband1: weight 1000:20",
    ]
    run.apply(plan)
    assert run.table("ioband1").endswith("uid weight 768 :40 1000:20")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"disk": "d3"}, "table: the backing store changed"),
        ({"direct": True}, "direct changed: the backing store is opened with or without O_DIRECT"),
        ({"dg": 7}, "table: the device-group id changed"),
    ],
)
def test_what_needs_re_creation_says_why(disks, running, change, reason):
    old = config(dev("ioband1", disks["d1"], "0 :40"), dev("ioband2", disks["d2"], "0 :10"))
    run = running(old)
    disk = disks[change.pop("disk", "d1")]
    new = config(dev("ioband1", disk, "0 :70", **change), dev("ioband2", disks["d2"], "0 :20"))
    plan = run.plan(old, new)
    assert list(plan.recreate) == ["ioband1"]
    assert any(r.startswith(reason) for r in plan.recreate["ioband1"]), plan.recreate
    assert messages(plan) == ["ioband2: weight :20"]  # the other device: in place


def test_length_change_needs_re_creation(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40"))
    run = running(old)
    table = old.devices[0].table.replace(f"0 {SECTORS} ", f"0 {SECTORS // 2} ")
    plan = run.plan(old, config({"name": "ioband1", "table": table}))
    assert "the device length changed" in plan.recreate["ioband1"][0]


def test_read_only_and_control_change_in_place(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40"))
    run = running(old)
    new = config(dev("ioband1", disks["d1"], "0 :40", read_only=True, control=False))
    plan = run.plan(old, new)
    assert not plan.recreate and plan.steps == []
    assert [(o.field, o.old, o.new) for o in plan.options] == [
        ("read_only", False, True),
        ("control", True, False),
    ]


def test_invalid_new_file_is_refused_naming_the_device_and_key(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40"))
    run = running(old)
    before = run.table("ioband1")
    bad = config(
        dev("ioband1", disks["d1"], "0 :70"),
        dev("ioband2", disks["d2"], "0 :10", policy="nosuchpolicy"),
    )
    with pytest.raises(ConfigError) as err:
        run.plan(old, bad)
    assert err.value.key == "device[1].table" and "nosuchpolicy" in err.value.rule
    bad = config(dev("ioband1", disks["d1"], "0 :70", messages=["attach x"]))
    with pytest.raises(ConfigError) as err:
        run.plan(old, bad)
    assert err.value.key == "device[0].messages[0]"
    assert run.table("ioband1") == before  # planning changes nothing


def test_a_change_that_cannot_apply_to_the_running_device_is_refused(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40", throttle=8, limit=32))
    run = running(old)
    run.message("ioband1", "io_throttle 16")  # run time: the file lowers io_limit below it
    new = config(dev("ioband1", disks["d1"], "0 :40", throttle=8, limit=10))
    with pytest.raises(ConfigError) as err:
        run.plan(old, new)
    assert err.value.key == "device[0]" and "io_limit 10" in err.value.rule


def test_devices_added_removed_and_kept(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40"), dev("ioband2", disks["d2"], "0 :10"))
    run = running(
        config(dev("ioband1", disks["d1"], "0 :40"), dev("ioband3", disks["d3"], "0 :5", dg=3))
    )
    new = config(
        dev("ioband1", disks["d1"], "0 :40"),
        dev("ioband2", disks["d2"], "0 :10"),
        dev("ioband3", disks["d3"], "0 :9", dg=3),
    )
    plan = run.plan(old, new, removed={"ioband2"})
    assert plan.create == [] and plan.remove == [] and plan.steps == []
    assert any("ioband2 was removed at run time" in n for n in plan.notes)
    assert any("ioband3 is new in the file but already running" in n for n in plan.notes)
    plan = run.plan(new, config(dev("ioband1", disks["d1"], "0 :40")))
    assert plan.remove == ["ioband3"]


def test_every_device_field_has_a_rule():
    from dataclasses import fields

    from ioband.control.config import DeviceConfig

    assert {f.name for f in fields(DeviceConfig)} - {"name"} <= set(FIELD_RULES)
    assert FIELD_RULES["read_only"].export is Rule.IN_PLACE
    assert FIELD_RULES["mountpoint"].mount is Rule.RECREATE


def test_daemon_settings_wait_for_a_restart(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40"))
    run = running(old)
    new = load_config(
        {
            "daemon": {"hz": 250, "admin_group": "wheel"},
            "nbd": {"unix_socket": "/elsewhere/nbd.sock"},
            "device": [dev("ioband1", disks["d1"], "0 :40")],
        }
    )
    plan = run.plan(old, new)
    assert plan.restart == ["hz", "unix_socket"] and plan.steps == []
    assert "restart needed: unix_socket changed (read once at start)" in plan.lines()


def test_a_shared_device_group_switches_policy_once(disks, running):
    old = config(dev("ioband1", disks["d1"], "0 :40 1000:20"), dev("ioband2", disks["d2"], "0 :10"))
    run = running(old)
    run.message("ioband2", "weight 15")  # reset by the switch: the file's value comes back
    new = config(
        dev("ioband1", disks["d1"], "0 :40 1000:20", policy="weight-iosize"),
        dev("ioband2", disks["d2"], "0 :10", policy="weight-iosize"),
    )
    plan = run.plan(old, new)
    assert messages(plan) == ["ioband1: policy weight-iosize", "ioband2: weight :10"]
    run.apply(plan)
    assert run.table("ioband2").endswith("weight-iosize 6144 :10")


def test_a_mount_re_creates_for_read_only(tmp_path, running):
    data, mnt = tmp_path / "data", tmp_path / "mnt"
    data.mkdir()
    mnt.mkdir()
    table = f"0 0 ioband {data} 1 0 0 uid weight 0 :100"
    old = config({"name": "files1", "table": table, "mountpoint": str(mnt)})
    run = running(old)
    new = config({"name": "files1", "table": table, "mountpoint": str(mnt), "read_only": True})
    plan = run.plan(old, new)
    assert plan.recreate == {
        "files1": ["read_only changed: a FUSE worker mounts read-only or read-write"]
    }


def test_mclock_parents_are_set_after_every_group_exists_and_without_a_cycle(disks, running):
    """A new group's parent may be a group listed after it, and two groups may swap which is
    the parent: the plan attaches every group first, moves changed parents through the root,
    then sets them; the result is the new file's table."""
    mc = {"policy": "mclock"}
    old = config(dev("ioband1", disks["d1"], "iops :0:1:0 5:0:1:0 6:0:1:0:parent=5", **mc))
    run = running(old)
    new = config(
        dev(
            "ioband1",
            disks["d1"],
            "iops :0:1:0 4:0:2:0:parent=9 5:0:1:0:parent=6 6:0:1:0 9:0:3:0",
            **mc,
        )
    )
    plan = run.plan(old, new)
    steps = messages(plan)
    assert steps.index("ioband1: attach 9") < steps.index("ioband1: parent 4:9")
    assert steps.index("ioband1: parent 6:none") < steps.index("ioband1: parent 5:6")
    run.apply(plan)
    assert run.table("ioband1").endswith(":0:1:0 4:0:2:0:parent=9 5:0:1:0:parent=6 6:0:1:0 9:0:3:0")
