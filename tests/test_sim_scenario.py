"""Scenario files: loading, defaults, and a clear error (key + rule) for malformed input."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from ioband.errors import IobandError
from ioband.sim import ScenarioError, catalog, load_scenario, open_scenario, parse_scenario
from ioband.sim.scenario import parse_toml, resolve_backing, table_backing, table_length
from ioband.sim.units import parse_duration, parse_size

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def base() -> dict:
    return {
        "simulation": {"duration": 1.0},
        "disk": [{"name": "sda", "model": "fixed", "service_time": 0.001}],
        "device": [{"name": "ioband1", "table": "0 2048 ioband sda1 1 0 0 none weight 0 :40"}],
        "workload": [{"name": "w", "device": "ioband1", "pattern": "randread"}],
    }


def error_for(mutate) -> ScenarioError:
    data = copy.deepcopy(base())
    mutate(data)
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data)
    return info.value


# -- sizes and durations -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512", 512),
        (512, 512),
        ("4KiB", 4096),
        ("4k", 4096),
        ("4K", 4096),
        ("500MiB", 500 << 20),
        ("500MiB/s", 500 << 20),
        ("1GiB", 1 << 30),
        ("1.5KiB", 1536),
        ("4kB", 4000),
        ("1MB", 10**6),
        ("2 GiB", 2 << 30),
        (1048576.0, 1 << 20),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "abc", "4 parsecs", "-1", -5, "0.5", "1.0001KiB", True, [4096], 0.5, "4KiBB"]
)
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [(60, 60.0), (2.5, 2.5), ("10ms", 0.01), ("250us", 0.00025), ("2min", 120.0), ("1.5s", 1.5)],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["-1", -0.5, "soon", "1 fortnight", float("inf"), True])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# -- loading -----------------------------------------------------------------------------------


def test_minimal_scenario_defaults():
    sc = parse_scenario(base(), name="tiny")
    assert sc.name == "tiny"
    assert (sc.duration, sc.seed, sc.hz, sc.interval, sc.status_format) == (
        1.0,
        0,
        1000,
        1.0,
        "legacy",
    )
    (disk,) = sc.disks
    assert disk.model == "fixed"
    assert disk.params["queue_depth"] == 1 and disk.params["nr_requests"] == 128
    (w,) = sc.workloads
    assert (w.processes, w.iodepth, w.block_size, w.read_fraction, w.direct) == (
        1,
        1,
        4096,
        1.0,
        False,
    )
    assert w.stop is None and w.start == 0.0
    assert sc.device("ioband1").length == 2048


def test_ssd_defaults_and_sizes():
    data = base()
    data["disk"] = [{"name": "sda", "iops": 20000, "bandwidth": "500MiB", "queue_depth": 32}]
    sc = parse_scenario(data)
    params = sc.disks[0].params
    assert sc.disks[0].model == "ssd"
    assert params["bandwidth"] == 500 << 20 and params["iops"] == 20000.0
    assert params["write_iops"] is None


def test_mixed_pattern_read_fraction_default():
    data = base()
    data["workload"][0]["pattern"] = "randrw"
    assert parse_scenario(data).workloads[0].read_fraction == 0.5
    data["workload"][0]["read_fraction"] = 0.7
    assert parse_scenario(data).workloads[0].read_fraction == 0.7
    data["workload"][0]["pattern"] = "write"
    del data["workload"][0]["read_fraction"]
    assert parse_scenario(data).workloads[0].read_fraction == 0.0


def test_messages_plain_and_timed():
    data = base()
    data["device"][0]["messages"] = ["type user", {"at": "500ms", "message": "weight 10"}]
    (dev,) = parse_scenario(data).devices
    assert [(m.text, m.at, m.key) for m in dev.messages] == [
        ("type user", 0.0, "messages[0]"),
        ("weight 10", 0.5, "messages[1]"),
    ]


def test_builtins_load_and_have_descriptions():
    names = catalog.names()
    assert {
        "partitions-40-10",
        "users-30-20",
        "partitions-40-20-10",
        "range-bw",
        "weight-iosize",
    } <= set(names)
    for name, description in catalog.describe():
        sc = load_scenario(name)
        assert sc.name == name
        assert description and sc.description
        assert 0 < sc.duration <= 60


def test_examples_are_copies_of_the_builtins():
    for name in catalog.names():
        assert (EXAMPLES / f"{name}.toml").read_text() == catalog.read_text(name), name


def test_load_from_path_text_and_name(tmp_path):
    text = catalog.read_text("partitions-40-10")
    path = tmp_path / "mine.toml"
    path.write_text(text)
    by_path = load_scenario(path)
    by_str = load_scenario(str(path))
    by_text = load_scenario(text)
    by_name = load_scenario("partitions-40-10")
    assert by_path.name == by_str.name == "mine"
    assert by_path == by_str
    assert by_path.source == str(path) and by_name.source == "built-in scenario 'partitions-40-10'"
    assert by_text.devices == by_name.devices == by_path.devices
    assert open_scenario("partitions-40-10.toml").name == "partitions-40-10"


def test_open_scenario_unknown_names_the_builtins():
    with pytest.raises(ScenarioError) as info:
        open_scenario("no-such-scenario")
    assert "partitions-40-10" in str(info.value) and "--list" in str(info.value)


def test_unreadable_toml_is_a_scenario_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[simulation\nduration = 1\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}: invalid TOML")


def test_error_is_an_ioband_error_with_einval():
    err = error_for(lambda d: d["simulation"].update(duration=-1))
    assert isinstance(err, IobandError)
    assert err.errno_name == "EINVAL"
    assert err.key == "simulation.duration"


def test_overrides_are_validated():
    sc = parse_scenario(base())
    assert sc.with_overrides(duration=0.25, seed=7).duration == 0.25
    with pytest.raises(ScenarioError, match="duration"):
        sc.with_overrides(duration=0)
    with pytest.raises(ScenarioError, match="seed"):
        sc.with_overrides(seed=-1)


# -- malformed input: every error names the key and the rule ------------------------------------


def _set(path: str, value):
    def mutate(data):
        section, _, key = path.partition(".")
        target = data[section][0] if isinstance(data[section], list) else data[section]
        target[key] = value

    return mutate


def _delete(path: str):
    def mutate(data):
        section, _, key = path.partition(".")
        if not key:
            del data[section]
            return
        target = data[section][0] if isinstance(data[section], list) else data[section]
        del target[key]

    return mutate


MALFORMED = [
    (_set("simulation.duration", -1), "simulation.duration", "negative"),
    (_set("simulation.duration", 0), "simulation.duration", "greater than 0"),
    (_set("simulation.duration", "soon"), "simulation.duration", "expected seconds"),
    (_delete("simulation.duration"), "simulation.duration", "missing required key"),
    (_delete("simulation"), "simulation", "missing required table"),
    (_set("simulation.hz", 0), "simulation.hz", "at least"),
    (_set("simulation.seed", "x"), "simulation.seed", "integer"),
    (_set("simulation.status_format", "xml"), "simulation.status_format", "one of"),
    (_set("simulation.durration", 1), "simulation.durration", "did you mean 'duration'"),
    (_set("disk.model", "floppy"), "disk[0].model", "unknown model 'floppy'"),
    (_set("disk.queue_depth", 0), "disk[0].queue_depth", "at least 1"),
    (_set("disk.queue_depth", 2.5), "disk[0].queue_depth", "integer"),
    (_set("disk.iops", 5), "disk[0].iops", "unknown key for a 'fixed' disk"),
    (_set("disk.service_time", 0), "disk[0].service_time", "service_time > 0 or byte_time > 0"),
    (_delete("disk.name"), "disk[0].name", "missing required key"),
    (_delete("disk"), "disk", "at least one [[disk]]"),
    (lambda d: d.update(disk={"name": "sda"}), "disk", "write [[disk]]"),
    (_delete("device.table"), "device[0].table", "missing required key"),
    (_set("device.table", 42), "device[0].table", "must be a string"),
    (_set("device.table", "0 0 ioband sda1 1 0 0 none weight"), "device[0].table", "positive"),
    (_set("device.disk", "sdb"), "device[0].disk", "no disk named 'sdb'"),
    (_set("device.name", "a/b"), "device[0].name", "without '/'"),
    (_set("device.messages", "type user"), "device[0].messages", "array"),
    (_set("device.messages", [42]), "device[0].messages[0]", "message string"),
    (_set("device.messages", [""]), "device[0].messages[0]", "empty"),
    (_set("device.messages", [{"at": 1}]), "device[0].messages[0].message", "missing"),
    (_delete("workload.device"), "workload[0].device", "missing required key"),
    (_set("workload.device", "ioband9"), "workload[0].device", "no device named 'ioband9'"),
    (_delete("workload.pattern"), "workload[0].pattern", "missing required key"),
    (_set("workload.pattern", "sequential"), "workload[0].pattern", "must be one of"),
    (_set("workload.block_size", "4 parsecs"), "workload[0].block_size", "expected an integer"),
    (_set("workload.block_size", "1000"), "workload[0].block_size", "multiple of 512"),
    (_set("workload.block_size", "2MiB"), "workload[0].block_size", "larger than device"),
    (_set("workload.processes", 0), "workload[0].processes", "at least 1"),
    (_set("workload.iodepth", True), "workload[0].iodepth", "integer"),
    (_set("workload.read_fraction", 0.5), "workload[0].read_fraction", "only for the mixed"),
    (_set("workload.direct", "yes"), "workload[0].direct", "true or false"),
    (_set("workload.uid", -1), "workload[0].uid", "at least 0"),
    (_set("workload.stop", 0.0), "workload[0].stop", "after start"),
    (_set("workload.writeback", True), "workload[0].writeback", "buffered writes"),
    (_set("workload.iodepht", 4), "workload[0].iodepht", "did you mean 'iodepth'"),
    (lambda d: d.update(extra=1), "extra", "unknown key"),
]


@pytest.mark.parametrize(("mutate", "key", "rule"), MALFORMED)
def test_malformed(mutate, key, rule):
    err = error_for(mutate)
    assert err.key == key, str(err)
    assert rule in err.rule, str(err)
    assert key in str(err)


def test_mixed_read_fraction_out_of_range():
    def mutate(d):
        d["workload"][0].update(pattern="randrw", read_fraction=1.5)

    assert "between 0 and 1" in str(error_for(mutate))


def test_disk_key_must_match_the_table_device():
    def mutate(d):
        d["disk"].append({"name": "sdb", "model": "fixed", "service_time": 0.001})
        d["device"][0]["disk"] = "sdb"

    err = error_for(mutate)
    assert err.key == "device[0].disk" and "'sda1' is on disk 'sda'" in err.rule


def test_duplicate_names():
    err = error_for(lambda d: d["workload"].append(dict(d["workload"][0])))
    assert err.key == "workload[1].name" and "duplicate" in err.rule


def test_overlapping_pids():
    def mutate(d):
        d["workload"][0].update(pid=100, processes=5)
        d["workload"].append({"name": "v", "device": "ioband1", "pattern": "read", "pid": 104})

    err = error_for(mutate)
    assert err.key == "workload[1].pid" and "overlap" in err.rule


def test_source_is_named_in_the_message():
    with pytest.raises(ScenarioError) as info:
        parse_toml("[simulation]\nduration = -3\n", source="x.toml")
    assert str(info.value).startswith("x.toml: simulation.duration: ")


# -- table helpers ---------------------------------------------------------------------------


def test_table_fields():
    line = "0 2097152 ioband /dev/sda1 1 0 0 none weight 0 :40"
    assert table_length(line) == 2097152
    assert table_backing(line) == "/dev/sda1"
    assert table_length("zero") is None and table_backing("0 1") is None


def test_resolve_backing_disks_and_partitions():
    data = base()
    data["disk"] = [
        {"name": "sda", "model": "fixed", "service_time": 1},
        {"name": "nvme0n1", "model": "fixed", "service_time": 1},
    ]
    disks = parse_scenario(data).disks
    assert resolve_backing("sda", disks).name == "sda"
    assert resolve_backing("/dev/sda", disks).name == "sda"
    assert resolve_backing("sda12", disks).name == "sda"
    assert resolve_backing("nvme0n1p2", disks).name == "nvme0n1"
    assert resolve_backing("sdb", disks) is None
    assert resolve_backing("sda1x", disks) is None
