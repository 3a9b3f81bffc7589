"""The dmsetup examples of the interface spec (§2-§4, §7.1) run through ``ioband`` against a
running daemon, with the outputs compared to the documented ones (device field and counters
aside); errors and their exit statuses."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ioband.errors import EXIT_STATUS
from tests.control_helpers import PYTHON, backing, control_daemon


def dev_aside(line: str) -> str:
    """A table line with its ``<device>`` field replaced (files show a path, disks maj:min)."""
    return re.sub(r"^(\S+: \d+ \d+ ioband) \S+", r"\1 DEV", line)


def counters_aside(line: str, columns: int) -> str:
    """A status line with every counter replaced by ``N``, the group ids kept."""
    head, _, tail = line.partition(" ioband ")
    words = tail.split()
    out = [words[0]]  # the device group id
    for i in range(1, len(words), columns):
        out += [words[i], *["N"] * (columns - 1)]
    assert len(words) % columns == 1, line
    return f"{head} ioband {' '.join(out)}"


@pytest.fixture
def ctl():
    with control_daemon() as c:
        yield c


def test_documented_table_outputs(ctl, tmp_path):
    """§4.1: tables created from the documented lines print the documented lines back."""
    documented = [
        "ioband1: 0 305235000 ioband 8:18 1 4 128 cgroup range-bw 16384 :0:0 2:100:500"
        " 3:700:1000 4:30000:35000",
        "ioband2: 0 112455000 ioband 8:18 share1 4 256 user weight 512 :40",
    ]
    for i, line in enumerate(documented):
        name, _, table = line.partition(": ")
        words = table.split()
        words[3] = backing(tmp_path, f"disk{i}", int(words[1]))
        # dmsetup reads the table from stdin
        assert ctl.ok("create", name, stdin=" ".join(words) + "\n") == ""
    out = ctl.ok("table").splitlines()
    assert [dev_aside(x) for x in out] == [dev_aside(x) for x in documented]
    assert ctl.ok("table", "ioband2", "--target", "ioband").splitlines() == out[1:]
    assert ctl.ok("table", "--target", "linear") == ""  # no device of another target


def test_getting_started_and_extra_groups(ctl, tmp_path):
    """§7.1 "Getting started", "Extra groups" and §3's weight examples."""
    sda1, sda2 = backing(tmp_path, "sda1", 4096), backing(tmp_path, "sda2", 4096)
    ctl.ok("create", "ioband1", stdin=f"0 4096 ioband {sda1} 1 0 0 none weight 0 :40\n")
    ctl.ok("create", "ioband2", "--table", f"0 4096 ioband {sda2} 1 0 0 none weight 0 :10")
    for words in ("type user", "attach 1000", "attach 2000", "weight 1000:30", "weight 2000:20"):
        ctl.ok("message", "ioband1", "0", *words.split())
    assert [dev_aside(x) for x in ctl.ok("table").splitlines()] == [
        "ioband1: 0 4096 ioband DEV 1 4 0 user weight 768 :40 1000:30 2000:20",  # io_limit 0: 0
        "ioband2: 0 4096 ioband DEV 1 4 0 none weight 768 :10",
    ]
    ctl.ok("message", "ioband1", "0", "weight", "40")  # the default group
    # "#4" processes, on ioband2: type user, attach 1000, weight 1000:20; then detach
    for words in ("type user", "attach 1000", "weight 1000:20"):
        ctl.ok("message", "ioband2", "0", *words.split())
    assert dev_aside(ctl.ok("table", "ioband2")) == (
        "ioband2: 0 4096 ioband DEV 1 4 0 user weight 768 :10 1000:20\n"
    )
    ctl.ok("message", "ioband2", "0", "detach", "1000")
    assert dev_aside(ctl.ok("table", "ioband2").strip()).endswith("user weight 768 :10")
    # §4.2 legacy status: the device group id, then 7 columns per group, default group first
    status = ctl.ok("status").splitlines()
    assert [counters_aside(x, 7) for x in status] == [
        "ioband1: 0 4096 ioband 1 -1 N N N N N N 1000 N N N N N N 2000 N N N N N N",
        "ioband2: 0 4096 ioband 1 -1 N N N N N N",
    ]
    diskstats = ctl.ok("status", "ioband1", "--format", "diskstats").strip()
    assert counters_aside(diskstats, 12) == (
        "ioband1: 0 4096 ioband 1 -1" + " N" * 11 + " 1000" + " N" * 11 + " 2000" + " N" * 11
    )
    ctl.ok("remove", "ioband2")
    assert ctl.ok("ls") == "ioband1\t(nbd export ioband1)\n"


def test_full_create_line_and_device_group_messages(ctl, tmp_path):
    """§7.1 "Full create line", then §3's device-group messages, range-bw and reset."""
    sda1 = backing(tmp_path, "sda1", 8192)
    ctl.ok("create", "ioband1", stdin=f"0 8192 ioband {sda1} share1 10 400 user weight 2048"
           " :100 1000:80 2000:20\n")  # fmt: skip
    table = lambda: dev_aside(ctl.ok("table", "ioband1").strip())  # noqa: E731
    assert (
        table() == "ioband1: 0 8192 ioband DEV share1 10 400 user weight 2048 :100 1000:80 2000:20"
    )
    ctl.ok("message", "ioband1", "0", "policy", "weight-iosize")
    assert table().endswith("share1 10 400 user weight-iosize 12800 :100 1000:80 2000:20")
    ctl.ok("message", "ioband1", "0", "token", "256")
    ctl.ok("message", "ioband1", "0", "carryover", "2")
    ctl.ok("message", "ioband1", "0", "io_throttle", "16")
    ctl.ok("message", "ioband1", "0", "io_limit", "128")
    assert table().endswith("share1 16 128 user weight-iosize 256 :100 1000:80 2000:20")
    ctl.ok("message", "ioband1", "0", "policy", "range-bw")
    ctl.ok("message", "--", "ioband1", "0", "range-bw", "-1:5000:6000")
    ctl.ok("message", "ioband1", "0", "range-bw", "1000:10000:12000")
    assert table().endswith("user range-bw 16384 :5000:6000 1000:10000:12000 2000:0:0")
    ctl.ok("message", "ioband1", "0", "reset")
    assert ctl.ok("status", "ioband1") == (
        "ioband1: 0 8192 ioband share1 -1 0 0 0 0 0 0 1000 0 0 0 0 0 0 2000 0 0 0 0 0 0\n"
    )


def test_two_device_groups_and_xen_blktap(ctl, tmp_path):
    """§7.1 "Two device groups" and "#4 Xen blktap" (type pid, tapdisk pids attached)."""
    lines = {"sda1": ("1", 80), "sda2": ("1", 20), "sdb3": ("2", 60), "sdb4": ("2", 40)}
    for i, (disk, (group, weight)) in enumerate(lines.items(), 1):
        path = backing(tmp_path, disk, 2048)
        ctl.ok("create", f"ioband{i}", "--table",
               f"0 2048 ioband {path} {group} 0 0 none weight 0 :{weight}")  # fmt: skip
    out = [dev_aside(x) for x in ctl.ok("table").splitlines()]
    assert out == [f"ioband{i}: 0 2048 ioband DEV {g} 4 0 none weight 768 :{w}"
                   for i, (g, w) in enumerate(lines.values(), 1)]  # fmt: skip
    ctl.ok("message", "ioband1", "0", "policy", "weight-iosize")  # device group 1 only
    out = [x.split()[9] for x in ctl.ok("table").splitlines()]
    assert out == ["weight-iosize", "weight-iosize", "weight", "weight"]
    vm = backing(tmp_path, "vm", 2048)
    ctl.ok("create", "ioband5", "--table", f"0 2048 ioband {vm} 3 0 0 none weight 0 :100")
    for words in ("type pid", "attach 15011", "weight 15011:80", "attach 15276",
                  "weight 15276:40"):  # fmt: skip
        ctl.ok("message", "ioband5", "0", *words.split())
    assert dev_aside(ctl.ok("table", "ioband5").strip()) == (
        "ioband5: 0 2048 ioband DEV 3 4 0 pid weight 768 :100 15011:80 15276:40"
    )


def test_targets_ls_info_json(ctl, tmp_path):
    assert ctl.ok("targets") == "ioband           v1.14.0\n"
    assert json.loads(ctl.ok("targets", "--json")) == [{"name": "ioband", "version": "1.14.0"}]
    assert ctl.ok("ls") == "No devices found\n"
    assert ctl.ok("table") == "No devices found\n"
    path = backing(tmp_path, "d", 2048)
    ctl.ok("create", "b", "--table", f"0 2048 ioband {path} 1 0 0 none weight 0 :10")
    ctl.ok("create", "a", "--table", f"0 2048 ioband {path} 1 0 0 none weight 0 :10")
    assert [x["name"] for x in json.loads(ctl.ok("ls", "--json"))] == ["a", "b"]  # sorted
    table = json.loads(ctl.ok("table", "--json"))
    assert [x["name"] for x in table] == ["a", "b"]
    assert table[0]["table"] == f"0 2048 ioband {path} 1 4 0 none weight 768 :10"
    assert json.loads(ctl.ok("status", "a", "--json"))[0]["status"].startswith("0 2048 ioband 1")
    assert json.loads(ctl.ok("info", "--json"))["devices"] == 2
    ctl.ok("suspend", "a")
    assert json.loads(ctl.ok("ls", "--json"))[0]["suspended"] is True
    ctl.ok("resume", "a")
    assert json.loads(ctl.ok("ls", "--json"))[0]["suspended"] is False


@pytest.mark.parametrize(
    ("argv", "errno", "text"),
    [
        (("table", "nope"), "ENODEV", "No such device: 'nope'"),
        (("remove", "nope"), "ENODEV", "No such device"),
        (("message", "ioband1", "0", "attach", "1000"), "EEXIST", "already exists"),
        (("message", "ioband1", "0", "bogus", "1"), "EINVAL", "Unrecognised band message"),
        (("message", "ioband1", "1", "weight", "40"), "EINVAL", "Invalid sector"),
        (("message", "ioband1", "0", "type", "none"), "EBUSY", ""),
        (("create", "ioband1", "--table", "0 8 ioband /x 1 0 0 none weight 0"), "EBUSY",
         "already exists"),
        (("create", "x", "--table", "0 8 ioband /nonexistent 1 0 0 none weight 0"), "ENODEV",
         "Device lookup failed"),
        (("create", "x", "--table", "0 8 ioband /dev/null 1 0"), "EINVAL",
         "Requires 6 or more arguments"),
        (("status", "ioband1", "--format", "bogus"), None, "invalid choice"),
    ],
)  # fmt: skip
def test_errors_and_exit_statuses(ctl, tmp_path, argv, errno, text):
    path = backing(tmp_path, "d", 2048)
    ctl.ok("create", "ioband1", "--table", f"0 2048 ioband {path} 1 0 0 user weight 0 :10 1000:5")
    before = ctl.ok("table")
    rc, out, err = ctl.run(*argv)
    assert out == ""
    assert text in err and "Traceback" not in err
    if errno is None:
        assert rc == 2  # argparse usage error
    else:
        assert rc == EXIT_STATUS[errno]
        assert err.startswith(f"ioband {argv[0]}: ") and err.rstrip().endswith(f"({errno})")
    assert ctl.ok("table") == before  # nothing changed


def test_table_on_stdin_must_be_one_line(ctl, tmp_path):
    path = backing(tmp_path, "d", 2048)
    line = f"0 2048 ioband {path} 1 0 0 none weight 0 :10\n"
    rc, _, err = ctl.run("create", "x", stdin=line * 2)
    assert rc == EXIT_STATUS["EINVAL"] and "one table line" in err
    assert ctl.ok("create", "x", stdin=f"# a comment\n\n{line}") == ""


def test_length_beyond_the_backing_file_is_refused(ctl, tmp_path):
    path = backing(tmp_path, "d", 2048)
    rc, _, err = ctl.run("create", "x", "--table", f"0 4096 ioband {path} 1 0 0 none weight 0")
    assert rc == EXIT_STATUS["EINVAL"] and "is larger than" in err
    assert ctl.ok("ls") == "No devices found\n"


def test_daemon_not_running(tmp_path):
    sock = str(tmp_path / "none.sock")
    run = subprocess.run([PYTHON, "-m", "ioband", "table"], capture_output=True, text=True,
                         env={"IOBAND_SOCKET": sock, "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert run.returncode == 1
    assert "cannot reach the ioband daemon" in run.stderr and sock in run.stderr
    assert "Traceback" not in run.stderr


def test_documented_status_shape(ctl, tmp_path):
    """§4.2's legacy example: device group 128, groups -1, 1001 and 1002, 7 columns each."""
    documented = (
        "ioband1: 0 44371467 ioband 128 -1 223 172 408 211 136 600 1001 166 107 472 139 95 352"
        " 1002 211 146 520 210 147 504"
    )
    path = backing(tmp_path, "sda1", 44371467)
    ctl.ok("create", "ioband1", stdin=f"0 44371467 ioband {path} 128 0 0 user weight 0 :100\n")
    ctl.ok("message", "ioband1", "0", "attach", "1001")
    ctl.ok("message", "ioband1", "0", "attach", "1002")
    out = ctl.ok("status", "ioband1").strip()
    assert counters_aside(out, 7) == counters_aside(documented, 7)


def test_a_second_daemon_on_the_same_control_socket_is_refused(ctl):
    from ioband.control.config import ConfigError, load_config
    from ioband.control.embedded import EmbeddedDaemon

    sockets = ctl.socket.rpartition("/")[0]
    config = load_config(
        {"daemon": {"control_socket": ctl.socket}, "nbd": {"unix_socket": f"{sockets}/nbd2.sock"}}
    )
    with pytest.raises(ConfigError, match="another daemon is running"):
        EmbeddedDaemon(config).start()
    assert ctl.ok("targets")  # the first one still serves


cli_words = st.lists(
    st.sampled_from(
        [
            "0",
            "-1",
            "--",
            "--json",
            "--table",
            "--format",
            "diskstats",
            "weight",
            "x",
            "0 8 ioband",
            "--target",
            "--socket",
            "attach",
            "1:2",
        ]
    )
    | st.text(max_size=12),
    max_size=5,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(
        [
            "create",
            "remove",
            "message",
            "table",
            "status",
            "ls",
            "suspend",
            "resume",
            "targets",
            "info",
        ]
    ),
    cli_words,
)
def test_cli_fuzz_clear_errors_nothing_changed(ctl, tmp_path, command, argv):
    assume(not any("ioband1" in w or w.startswith("-h") or w == "--help" for w in argv))
    if not ctl.ok("ls").startswith("ioband1"):
        path = backing(tmp_path, "fuzz.img", 2048)
        ctl.ok("create", "ioband1", "--table", f"0 2048 ioband {path} 1 0 0 user weight 0 :10")
    before = ctl.ok("table")
    rc, out, err = ctl.run(command, *argv, stdin="")
    assert "Traceback" not in err + out
    if rc != 0:
        assert err.strip(), (command, argv)
        assert rc in (1, *EXIT_STATUS.values()), (command, argv, rc, err)
    assert ctl.ok("table") == before


def test_every_command_answers_json(ctl, tmp_path):
    """``--json`` on every read and every change: structured answers, ``{"ok": true, ...}`` for
    a change, ``{"ok": false, "error": ...}`` (with the exit status) for a refusal."""
    path = backing(tmp_path, "d", 2048)
    made = json.loads(ctl.ok("create", "a", "--json", "--table",
                             f"0 2048 ioband {path} 1 0 0 user weight 0 :10"))  # fmt: skip
    assert made == {"ok": True, "command": "create", "name": "a",
                    "table": f"0 2048 ioband {path} 1 0 0 user weight 0 :10"}  # fmt: skip
    sent = json.loads(ctl.ok("message", "a", "0", "attach", "1000", "--json"))
    assert sent == {"ok": True, "command": "message", "name": "a", "words": ["attach", "1000"]}
    for op in ("suspend", "resume"):
        assert json.loads(ctl.ok(op, "a", "--json")) == {"ok": True, "command": op, "name": "a"}
    (table,) = json.loads(ctl.ok("table", "a", "--json"))
    assert table["type"] == "user" and table["policy"] == "weight" and table["io_limit"] == 0
    assert table["device_group"] == "1" and table["groups"] == ["1000:100"]
    assert table["default_param"] == "10" and table["device"] == path
    (status,) = json.loads(ctl.ok("status", "a", "--json"))
    assert status["status"].startswith("0 2048 ioband 1")  # the line, and the same by name
    assert status["device_group"] == "1" and status["length"] == 2048
    default, attached = status["groups"]
    assert default["id"] == -1 and default["group"] == "default"
    assert attached["id"] == 1000 and attached["group"] == "1000"
    for key in ("reads", "read_delayed", "read_sectors", "read_ms", "writes", "write_delayed",
                "write_sectors", "write_ms", "held", "io_ms", "time_in_queue_ms"):  # fmt: skip
        assert isinstance(default[key], int), key
    (diskstats,) = json.loads(ctl.ok("status", "a", "--format", "diskstats", "--json"))
    assert diskstats["groups"] == status["groups"]
    # a refusal: the error as JSON on stdout, the message on stderr, the errno's exit status
    rc, out, err = ctl.run("message", "a", "0", "wieght", "1000:5", "--json")
    refused = json.loads(out)
    assert rc == EXIT_STATUS["EINVAL"] and refused["ok"] is False
    assert refused["command"] == "message" and refused["error"]["errno"] == "EINVAL"
    assert refused["error"]["message"] in err
    rc, out, _ = ctl.run("remove", "nope", "--json")
    assert rc == EXIT_STATUS["ENODEV"] and json.loads(out)["error"]["errno"] == "ENODEV"
    assert json.loads(ctl.ok("remove", "a", "--json")) == {"ok": True, "command": "remove",
                                                          "name": "a"}  # fmt: skip
    rc, out, _ = ctl.run("status", "--json", "--socket", str(tmp_path / "none.sock"))
    assert rc == 1 and json.loads(out)["error"]["errno"] == "EHOSTUNREACH"


def test_cgroup_entries_shape():
    from ioband.control.commands import cgroup_entries

    text = ("vg0 policy=weight io_throttle=4 io_limit=192 token=768\n  vg0-lv0\n  vg0-lv1\n"
            "vg0-lv0 40\nsda rbytes=4096 wbytes=0\n12345\n")  # fmt: skip
    vg0, lv0, sda, ident = cgroup_entries(text)
    assert vg0 == {"name": "vg0", "values": [], "members": ["vg0-lv0", "vg0-lv1"],
                   "fields": {"policy": "weight", "io_throttle": 4, "io_limit": 192,
                              "token": 768}}  # fmt: skip
    assert lv0 == {"name": "vg0-lv0", "values": [40], "fields": {}}
    assert sda["fields"] == {"rbytes": 4096, "wbytes": 0}
    assert ident["name"] == 12345
