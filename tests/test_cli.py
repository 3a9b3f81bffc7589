"""The `ioband` command: exit statuses, messages, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ioband import __version__
from ioband.cli import DEMO_DURATION_ENV, main
from ioband.sim import catalog

SHORT = ["--duration", "0.2"]


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"ioband {__version__} ")


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_list(capsys):
    assert main(["sim", "--list"]) == 0
    out = capsys.readouterr().out
    for name, description in catalog.describe():
        assert f"{name}  " in out and description in out


def test_sim_builtin_prints_table_and_writes_json(tmp_path, capsys):
    out_file = tmp_path / "out.json"
    assert main(["sim", "users-30-20", *SHORT, "--json", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "ioband1: 0 20971520 ioband sda1 1 4 0 user weight 768 :40 1000:30 2000:20" in out
    assert "ioband2: 0 20971520 ioband 1 -1 " in out
    doc = json.loads(out_file.read_text())
    assert [w["name"] for w in doc["workloads"]] == [
        "uid1000",
        "uid2000",
        "ioband1-default",
        "ioband2",
    ]
    for w in doc["workloads"]:
        assert {"name", "ios", "bytes", "iops", "mbps", "latency_p50", "latency_p99"} <= set(w)
    assert set(doc["devices"]) == {"ioband1", "ioband2"}
    assert all(set(d) >= {"status", "table"} for d in doc["devices"].values())
    assert doc["scenario"]["duration"] == 0.2


def test_sim_file_path(tmp_path, capsys):
    path = tmp_path / "mine.toml"
    path.write_text(catalog.read_text("weight-iosize"))
    assert main(["sim", str(path), "--duration", "100ms", "--status-format", "diskstats"]) == 0
    out = capsys.readouterr().out
    assert "scenario mine: 0.1 virtual s" in out
    status = next(
        line for line in out.splitlines() if line.startswith("ioband1: 0 20971520 ioband 1 ")
    )
    assert len(status.split()) == 5 + 12  # name, start, len, ioband, id + one 12-column group


def test_json_to_stdout(capsys):
    assert main(["sim", "partitions-40-10", *SHORT, "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["scenario"]["name"] == "partitions-40-10"


def test_same_seed_same_output(tmp_path, capsys):
    outputs = []
    for i in range(2):
        path = tmp_path / f"{i}.json"
        assert main(["sim", "partitions-40-10", *SHORT, "--seed", "5", "--json", str(path)]) == 0
        outputs.append((capsys.readouterr().out, path.read_text()))
    assert outputs[0] == outputs[1]


def write_variant(tmp_path, old, new, base="users-30-20"):
    text = catalog.read_text(base)
    assert old in text
    path = tmp_path / "variant.toml"
    path.write_text(text.replace(old, new, 1))
    return str(path)


def test_refused_message_exits_2_with_the_errno_name(tmp_path, capsys):
    path = write_variant(tmp_path, '"attach 1000", "attach 2000"', '"attach x", "attach 2000"')
    assert main(["sim", path, *SHORT]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("ioband sim: device 'ioband1', messages[1] \"attach x\": ")
    assert err.rstrip().endswith("(EINVAL)")
    assert "Traceback" not in err and captured.out == ""


def test_refused_table_exits_2(tmp_path, capsys):
    path = write_variant(tmp_path, "none weight 0 :10", "none weight 0 :0")
    assert main(["sim", path, *SHORT]) == 2
    err = capsys.readouterr().err
    assert "device 'ioband2', table \"0 20971520 ioband sda2 1 0 0 none weight 0 :0\": " in err
    assert "(EINVAL)" in err


def test_invalid_scenario_exits_2_naming_the_key(tmp_path, capsys):
    path = write_variant(tmp_path, 'block_size = "4KiB"', 'block_size = "4 parsecs"')
    assert main(["sim", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ioband sim: {path}: workload[0].block_size: ")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sim", "no-such-scenario"], "not a built-in scenario"),
        (["sim"], "give a scenario file"),
        (["sim", "partitions-40-10", "--seed", "-1"], "--seed"),
    ],
)
def test_sim_usage_errors(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_bad_duration_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sim", "partitions-40-10", "--duration", "0"])
    assert info.value.code == 2
    assert "--duration" in capsys.readouterr().err


def test_unwritable_json_exits_1(tmp_path, capsys):
    target = tmp_path / "missing-dir" / "out.json"
    assert main(["sim", "partitions-40-10", "--duration", "0.05", "--json", str(target)]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_demo(monkeypatch, capsys):
    monkeypatch.setenv(DEMO_DURATION_ENV, "0.3")
    assert main(["demo", "--sim"]) == 0
    out = capsys.readouterr().out
    assert "0.3 virtual s" in out
    lines = [line for line in out.splitlines() if line.startswith("  ioband")]
    assert len(lines) == 3
    assert "weight 40/70" in lines[0] and "weight 10/70" in lines[2]


def test_demo_bad_env(monkeypatch, capsys):
    monkeypatch.setenv(DEMO_DURATION_ENV, "forever")
    assert main(["demo", "--sim"]) == 2
    assert DEMO_DURATION_ENV in capsys.readouterr().err


def test_python_dash_m():
    proc = subprocess.run(
        [sys.executable, "-m", "ioband", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("ioband ")
