"""The daemon's TOML configuration: every malformed file is refused naming the key and rule."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ioband.control.config import ConfigError, load_config
from tests.control_helpers import start_error

GOOD = {
    "nbd": {"unix_socket": "/tmp/x.sock"},
    "device": [{"name": "a", "table": "0 8 ioband /dev/null 1 0 0 none weight 0 :40"}],
}


def test_defaults_and_round_trip():
    config = load_config(GOOD)
    assert config.hz == 1000 and config.io_threads == 16 and config.cgroup_hierarchy == "auto"
    assert config.unix_socket == "/tmp/x.sock" and config.tcp is None
    assert config.devices[0].direct is False and config.devices[0].control is True


def test_text_and_file(tmp_path):
    text = '[nbd]\ntcp = "127.0.0.1:10809"\nunix_socket = ""\n'
    assert load_config(text).tcp == ("127.0.0.1", 10809)
    path = tmp_path / "ioband.toml"
    path.write_text(text)
    assert load_config(path).unix_socket is None


@pytest.mark.parametrize(
    ("data", "key", "rule"),
    [
        ({"nbd": {"unix_sock": "/x"}}, "nbd.unix_sock", "did you mean 'unix_socket'"),
        ({"daemon": {"hz": 10}}, "daemon.hz", "50..100000"),
        ({"daemon": {"hz": "fast"}}, "daemon.hz", "an integer"),
        ({"daemon": {"io_threads": 0}}, "daemon.io_threads", "1..1024"),
        ({"nbd": {"tcp": "localhost"}}, "nbd.tcp", "HOST:PORT"),
        ({"nbd": {"tcp": "h:99999"}}, "nbd.tcp", "0..65535"),
        ({"nbd": {"unix_socket": ""}}, "nbd", "unix_socket or tcp"),
        ({"device": {"name": "a"}}, "device", "array of tables"),
        ({"device": [{"name": "a"}]}, "device[0].table", "required"),
        ({"device": [{"table": "x"}]}, "device[0].name", "required"),
        ({"device": [{"name": "a", "table": "t", "size": 1}]}, "device[0].size", "unknown key"),
        ({"device": [{"name": "a", "table": "t", "direct": "yes"}]}, "device[0].direct",
         "true or false"),
        ({"device": [{"name": "a", "table": "t", "messages": "attach 1"}]},
         "device[0].messages", "an array"),
        ({"device": [{"name": "a", "table": "t", "messages": [1]}]},
         "device[0].messages[0]", "a message string"),
        ({"device": [{"name": "a", "table": "t"}, {"name": "a", "table": "t"}]},
         "device[1].name", "used twice"),
        ({"devices": []}, "devices", "did you mean 'device'"),
    ],
)  # fmt: skip
def test_refusals_name_key_and_rule(data, key, rule):
    with pytest.raises(ConfigError) as info:
        load_config(data)
    assert info.value.key == key
    assert rule in str(info.value)
    assert info.value.errno_name == "EINVAL"


def test_bad_toml_syntax(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[nbd\nunix_socket = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "not valid TOML" in str(info.value)


def test_refused_table_and_message_name_the_device_key(tmp_path):
    img = tmp_path / "d.img"
    img.write_bytes(bytes(8192))
    sock = str(tmp_path / "s.sock")
    err = start_error(load_config({"nbd": {"unix_socket": sock}, "device": [
        {"name": "a", "table": f"0 16 ioband {img} 1 0 99999 none weight 0 :40"}]}))  # fmt: skip
    assert err.key == "device[0].table" and "Invalid io_limit" in str(err)
    err = start_error(load_config({"nbd": {"unix_socket": sock}, "device": [
        {"name": "a", "table": f"0 16 ioband {img} 1 0 0 none weight 0 :40",
         "messages": ["attach 5"]}]}))  # fmt: skip
    assert err.key == "device[0].messages[0]" and "no ioband group type" in str(err)
    err = start_error(load_config({"nbd": {"unix_socket": sock}, "device": [
        {"name": "a", "table": f"0 64 ioband {img} 1 0 0 none weight 0 :40"}]}))  # fmt: skip
    assert err.key == "device[0].table" and "larger than" in str(err)
    err = start_error(
        load_config(
            {
                "nbd": {"unix_socket": sock},
                "device": [
                    {
                        "name": "a",
                        "table": f"0 16 ioband {tmp_path}/missing 1 0 0 none weight 0 :40",
                    }
                ],
            }
        )
    )
    assert "Device lookup failed" in str(err)


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=10,
)  # fmt: skip


@given(st.dictionaries(st.sampled_from(["daemon", "nbd", "device", "x"]), toml_values,
                       max_size=3))  # fmt: skip
def test_fuzzed_configurations_parse_or_raise_config_error(data):
    with contextlib.suppress(ConfigError):  # anything else fails the test
        load_config(data)
