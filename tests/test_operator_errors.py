"""The error nits an operator met (issue 15): each error names its key, says its errno once and
the right one, suggests the word meant, and a configuration reports all of its errors."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from ioband.cli import main
from ioband.control.config import ConfigError, ConfigErrors, load_config
from ioband.core.engine import Engine
from ioband.errors import IobandError
from tests.control_helpers import backing, config_data, sock_dir, start_error


def test_a_port_conflict_names_nbd_tcp():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    data = config_data(sock_dir(), None)
    data["nbd"]["tcp"] = f"127.0.0.1:{port}"
    try:
        err = start_error(load_config(data))
    finally:
        busy.close()
    assert isinstance(err, ConfigError) and err.key == "nbd.tcp", err.describe()
    assert err.errno_name == "EADDRINUSE"
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in str(err)


@pytest.mark.parametrize(
    ("argv", "suggested"),
    [
        (["message", "ioband1", "0", "weight", "-1:20"],
         "ioband message -- ioband1 0 weight -1:20"),
        (["message", "ioband1", "0", "range-bw", "-1:5:6", "--socket", "/s"],
         "ioband message --socket /s -- ioband1 0 range-bw -1:5:6"),
    ],
)  # fmt: skip
def test_a_dashed_message_word_gets_a_hint_about_double_dash(argv, suggested, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert (
        "unrecognized arguments" in err and f"put '--' before the device name: {suggested}" in err
    )


def test_no_hint_for_other_usage_errors(capsys):
    with pytest.raises(SystemExit):
        main(["message", "ioband1", "0", "weight", "--bogus"])
    assert "hint" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("words", "meant"),
    [("wieght 1:20", "weight"), ("atach 5", "attach"), ("io_limt 5", "io_limit")],
)
def test_a_misspelt_message_gets_a_suggestion(words, meant):
    engine = Engine()
    engine.create("x", "0 8 ioband sda1 1 0 0 cgroup weight 0 :100")
    with pytest.raises(IobandError, match=rf"did you mean '{meant}'\?"):
        engine.message("x", words)


@pytest.mark.parametrize(
    ("table", "meant"),
    [("cgrop weight", "cgroup"), ("cgroup wieght", "weight"), ("user range_bw", "range-bw")],
)
def test_a_misspelt_type_or_policy_gets_a_suggestion(table, meant):
    with pytest.raises(IobandError, match=rf"did you mean '{meant}'\?"):
        Engine().create("x", f"0 8 ioband sda1 1 0 0 {table} 0 :100")


def test_an_engine_refusal_in_the_config_says_its_errno_once(tmp_path):
    data = config_data(sock_dir(), None)
    data["device"] = [
        {"name": "a", "table": "0 8 ioband /nonexistent/disk 1 0 0 none weight 0 :100"}
    ]
    err = start_error(load_config(data))
    text = err.describe()
    assert err.errno_name == "ENODEV" and text.endswith("was not found (ENODEV)"), text
    assert text.count("(E") == 1, text


def test_a_missing_config_file_is_enoent(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.toml")
    assert info.value.errno_name == "ENOENT"
    assert info.value.describe().endswith("cannot read: No such file or directory (ENOENT)")
    argv = [sys.executable, "-m", "ioband", "daemon", "--config", str(tmp_path / "missing.toml")]
    out = subprocess.run(argv, capture_output=True, text=True)
    assert out.returncode != 0 and "No such file or directory (ENOENT)" in out.stderr
    assert "EINVAL" not in out.stderr


def test_every_config_error_is_reported():
    data = config_data(sock_dir(), None, hz=5, io_threads=0, bogus=1)
    data["nbd"]["socket_mode"] = "999"
    data["device"] = [
        {"name": "a", "tabel": "x"},
        {"name": "b", "table": "0 8 ioband /d 1 0 0 cgroup weight 0 :1", "direct": "yes",
         "rule": [{"cgroup": "x", "wieght": 5}]},
    ]  # fmt: skip
    with pytest.raises(ConfigErrors) as info:
        load_config(data)
    keys = [e.key for e in info.value.errors]
    assert keys == [
        "daemon.bogus", "daemon.hz", "daemon.io_threads",
        "device[0].tabel", "device[0].table", "device[1].direct", "device[1].rule[0].wieght",
        "nbd.socket_mode",
    ], keys  # fmt: skip
    text = str(info.value)
    assert len(text.splitlines()) == len(keys)
    assert "(did you mean 'table'?)" in text and "(did you mean 'weight'?)" in text


def test_every_device_the_engine_refuses_is_reported(tmp_path):
    data = config_data(sock_dir(), None)
    good = backing(tmp_path, "good.img", 8)
    data["device"] = [
        {"name": "a", "table": "0 8 ioband /nonexistent/a 1 0 0 none weight 0 :100"},
        {"name": "b", "table": f"0 8 ioband {good} 1 0 0 none weight 0 :100"},
        {"name": "c", "table": f"0 8 ioband {good} 2 0 0 pid weight 0 :100 5:0"},
    ]
    err = start_error(load_config(data))
    assert isinstance(err, ConfigErrors)
    assert [e.key for e in err.errors] == ["device[0].table", "device[2].table"]
