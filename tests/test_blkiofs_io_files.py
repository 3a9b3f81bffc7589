"""cgroup v2's ``io.weight``, ``io.max`` and ``io.stat`` in the blkiofs mirror, beside the blkio
files: real ``cat``/``echo`` through the real FUSE mount against a real daemon (the fixture of
test_blkiofs), with the kernel's formats and errnos, and the same through ``ioband cgroup``."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import test_blkiofs

fs = test_blkiofs.fs
DEVICES = ("vg0-lv0", "vg0-lv1", "vg1-lv0", "vg1-lv1")  # the fixture's cgroup-type devices


def test_io_weight_round_trip(fs):
    a = fs.cgroup("a")
    fs.ok("mkdir ${P}a")
    cgid = a.stat().st_ino
    assert fs.ok("cat ${P}a/io.weight") == "default 100\n"  # the kernel's default
    fs.ok("echo 200 > ${P}a/io.weight")  # 'N' is 'default N'
    assert fs.ok("cat ${P}a/io.weight") == "default 200\n"
    for dev in DEVICES:  # a group on every weight-policy device of type cgroup
        assert f" {cgid}:200" in fs.table(dev)
    fs.ok('echo "vg0-lv1 300" > ${P}a/io.weight')
    assert fs.ok("cat ${P}a/io.weight") == "default 200\nvg0-lv1 300\n"
    fs.ok('echo "default 50" > ${P}a/io.weight')  # the override stays
    assert fs.ok("cat ${P}a/io.weight") == "default 50\nvg0-lv1 300\n"
    assert f" {cgid}:50" in fs.table("vg1-lv1") and f" {cgid}:300" in fs.table("vg0-lv1")
    fs.ok('echo "vg0-lv1 default" > ${P}a/io.weight')  # the override goes
    assert fs.ok("cat ${P}a/io.weight") == "default 50\n"
    assert f" {cgid}:50" in fs.table("vg0-lv1")
    assert fs.ok("cat ${P}a/blkio.settings").startswith("vg0-lv0 weight=50%\n")
    # what one file writes, the other reads: blkio.settings -> io.weight
    fs.ok('echo "vg1-lv0 70" > ${P}a/blkio.settings')
    assert fs.ok("cat ${P}a/io.weight") == "default 50\nvg1-lv0 70\n"


def test_io_weight_without_a_default_attaches_and_detaches(fs):
    b = fs.cgroup("b")
    fs.ok("mkdir ${P}b")
    cgid = b.stat().st_ino
    fs.ok('echo "vg0-lv0 70" > ${P}b/io.weight')
    assert fs.ok("cat ${P}b/io.weight") == "default 100\nvg0-lv0 70\n"
    assert f" {cgid}:70" in fs.table("vg0-lv0") and f" {cgid}:" not in fs.table("vg0-lv1")
    fs.ok('echo "vg0-lv0 default" > ${P}b/io.weight')  # back to the device's default group
    assert fs.ok("cat ${P}b/io.weight") == "default 100\n"
    assert f" {cgid}:" not in fs.tables()


def test_v2_files_are_listed_as_in_cgroup_v2(fs):
    fs.cgroup("c")
    fs.ok("mkdir ${P}c")
    child = set(fs.ok("ls ${P}c").split())
    assert {"io.weight", "io.max", "io.stat", "blkio.settings"} <= child
    root = set(fs.ok("ls").split())
    assert "io.stat" in root and not {"io.weight", "io.max"} & root  # not on the root
    res = fs.sh("cat io.weight")
    assert res.returncode != 0 and "No such file" in res.stderr
    modes = fs.ok("stat -c '%n %a' ${P}c/io.weight ${P}c/io.max ${P}c/io.stat").split("\n")
    assert modes[:3] == [f"{fs.prefix}c/io.weight 644", f"{fs.prefix}c/io.max 644",
                         f"{fs.prefix}c/io.stat 444"]  # fmt: skip


def test_io_max_reads_nothing_and_writes_are_refused_without_mclock(fs):
    fs.cgroup("m")
    fs.ok("mkdir ${P}m")
    before = fs.tables()
    assert fs.ok("cat ${P}m/io.max") == ""  # no limits: nothing, as the kernel shows
    cases = [
        ('echo "vg0-lv0 rbps=1048576 wiops=max" > ${P}m/io.max', "Operation not supported"),
        ('echo "vg0-lv0 rbps=max wbps=max riops=max wiops=max" > ${P}m/io.max',
         "Operation not supported"),
        ('echo "vg0-lv0 rbps=x" > ${P}m/io.max', "Invalid argument"),
        ('echo "vg0-lv0 foo=1" > ${P}m/io.max', "Invalid argument"),
        ('echo "vg0-lv0 rbps" > ${P}m/io.max', "Invalid argument"),
        ('echo "nope rbps=1" > ${P}m/io.max', "No such device"),
        ('echo "plain rbps=1" > ${P}m/io.max', "No such device"),  # not of type cgroup
        ('echo "" > ${P}m/io.max', "Invalid argument"),
    ]  # fmt: skip
    for script, text in cases:
        res = fs.sh(script)
        assert res.returncode != 0 and text in res.stderr, (script, res.stderr)
    assert fs.tables() == before


def test_refused_io_weight_writes_answer_the_errno_and_change_nothing(fs):
    fs.cgroup("e")
    fs.ok("mkdir ${P}e")
    fs.ok('echo "vg0-lv1 30" > ${P}e/io.weight')
    before = fs.tables()
    cases = [
        ("echo 0 > ${P}e/io.weight", "Invalid argument"),  # 1..10000, as the kernel
        ("echo 10001 > ${P}e/io.weight", "Invalid argument"),
        ("echo abc > ${P}e/io.weight", "Invalid argument"),
        ("echo default > ${P}e/io.weight", "Invalid argument"),
        ('echo "default 5 6" > ${P}e/io.weight', "Invalid argument"),
        ('echo "" > ${P}e/io.weight', "Invalid argument"),
        ('echo "nope 10" > ${P}e/io.weight', "No such device"),
        ('echo "plain 10" > ${P}e/io.weight', "No such device"),
        ('echo "vg0-lv0 -5" > ${P}e/io.weight', "Invalid argument"),
        ("echo 5 > ${P}e/io.stat", "Permission denied"),  # read-only
        ("echo 5 > io.weight", "Permission denied"),  # not on the root: cannot be created
    ]
    for script, text in cases:
        res = fs.sh(script)
        assert res.returncode != 0 and text in res.stderr, (script, res.stderr)
    assert fs.tables() == before
    assert fs.ok("cat ${P}e/io.weight") == "default 100\nvg0-lv1 30\n"


def test_io_stat_counts_real_io_of_the_cgroup(fs):
    s = fs.cgroup("s")
    fs.ok("mkdir ${P}s")
    fs.ok('echo "vg0-lv0 100" > ${P}s/io.weight')
    assert fs.ok("cat ${P}s/io.stat") == (
        "vg0-lv0 rbytes=0 wbytes=0 rios=0 wios=0 dbytes=0 dios=0\n"
    )
    nbd = Path(fs.ctl.socket).parent / "nbd.sock"
    uri = f"nbd+unix:///vg0-lv0?socket={nbd}"
    script = f'echo $$ > {s}/cgroup.procs && exec "$@"'
    subprocess.run(["sh", "-c", script, "sh", "qemu-io", "-f", "raw", uri,
                    "-c", "read 0 65536", "-c", "write 65536 8192"],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    line = fs.ok("cat ${P}s/io.stat").split()
    assert line[0] == "vg0-lv0", line
    stat = dict(word.split("=") for word in line[1:])
    # the same numbers as blkio.stats' diskstats columns (reads, read sectors, writes, ...);
    # wios also counts qemu-io's flush at exit (ioband schedules a flush as a write)
    blk = fs.ok("cat ${P}s/blkio.stats").split()
    assert (blk[1], blk[3], blk[5], blk[7]) == ("1", "128", stat["wios"], "16")
    assert stat == {"rbytes": "65536", "wbytes": "8192", "rios": "1", "wios": stat["wios"],
                    "dbytes": "0", "dios": "0"}, stat  # fmt: skip
    assert int(stat["wios"]) >= 1


def test_the_cli_reads_and_writes_the_same_files(fs):
    fs.cgroup("cli")
    fs.ok("mkdir ${P}cli")
    path = f"/{fs.prefix}cli"
    fs.ctl.ok("cgroup", "io.weight", path, "default", "250")
    assert fs.ctl.ok("cgroup", "io.weight", path) == "default 250\n"
    assert fs.ok("cat ${P}cli/io.weight") == "default 250\n"
    assert fs.ctl.ok("cgroup", "io.max", path) == ""
    rc, _, err = fs.ctl.run("cgroup", "io.max", path, "vg0-lv0", "rbps=1")
    assert rc != 0 and "mclock" in err and "EOPNOTSUPP" in err, err
    rc, _, err = fs.ctl.run("cgroup", "io.weight", path, "nope", "5")
    assert rc != 0 and "ENODEV" in err, err
    assert os.path.isdir(fs.real / f"{fs.prefix}cli")


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=st.sampled_from(["io.weight", "io.max"]),
       data=st.one_of(
           st.lists(st.sampled_from(["vg0-lv0", "nope", "plain", "default", "0", "-1", "10001",
                                     "100", "rbps=1", "wiops=max", "riops=x", "foo=1", "max",
                                     "=", ""]),
                    max_size=4).map(lambda ws: (" ".join(ws) + "\n").encode()),
           st.binary(max_size=40)))  # fmt: skip
def test_malformed_io_writes_answer_an_errno_and_change_nothing(fs, file, data):
    """Random lines and bytes to io.weight/io.max of a cgroup: accepted, or refused with
    EINVAL/ENODEV (EOPNOTSUPP for a well-formed io.max on a device without mclock) leaving the
    tables as they were."""
    cg = fs.cgroup("fuzz")
    cg.mkdir(exist_ok=True)
    before = fs.tables()
    mclock = {line.split(":")[0] for line in before.splitlines() if " mclock " in line}
    fd = os.open(fs.mnt / cg.name / file, os.O_WRONLY)
    try:
        try:
            assert os.write(fd, data) == len(data)
            # io.max takes nothing (an empty write aside) but on an mclock device
            named = data.split()[0].decode(errors="replace") if data.split() else None
            assert file == "io.weight" or named is None or named in mclock, data
        except OSError as err:
            assert err.errno in (errno.EINVAL, errno.ENODEV, errno.EOPNOTSUPP), (data, err)
            assert fs.tables() == before
    finally:
        os.close(fd)


def test_a_group_attached_by_path_is_the_one_the_files_change(fs):
    fs.cgroup("p")
    fs.ok("mkdir ${P}p")
    path = f"{fs.prefix}p"
    fs.ctl.ok("message", "vg0-lv0", "0", "attach", path)
    fs.ctl.ok("message", "vg0-lv0", "0", "weight", f"{path}:60")
    assert fs.ok("cat ${P}p/blkio.settings") == "vg0-lv0 weight=60%\n"
    assert fs.ok("cat ${P}p/io.weight") == "default 100\nvg0-lv0 60\n"
    fs.ok('echo "vg0-lv0 70" > ${P}p/blkio.settings')
    fs.ok('echo "vg0-lv0 80" > ${P}p/io.weight')
    assert fs.table("vg0-lv0").endswith(f" /{path}:80")  # no second group by id
    fs.ok('echo "vg0-lv0" > ${P}p/blkio.settings')
    assert f"/{path}" not in fs.table("vg0-lv0")


def test_io_max_sets_the_caps_of_an_mclock_device(fs):
    """On a device group running mclock, io.max is the group's caps: written as the kernel
    takes it (only the keys named change, ``max`` removes one), read back in the kernel's
    format, kept in the table; a weight-policy device still refuses it."""
    fs.ctl.ok("message", "vg1-lv0", "0", "policy", "mclock")  # vg1-lv0 and vg1-lv1
    fs.cgroup("c")
    fs.ok("mkdir ${P}c")
    cgid = (fs.real / f"{fs.prefix}c").stat().st_ino
    fs.ok('echo "vg1-lv0 riops=500 rbps=1048576" > ${P}c/io.max')  # attaches a group
    assert fs.ok("cat ${P}c/io.max") == "vg1-lv0 rbps=1048576 wbps=max riops=500 wiops=max\n"
    assert f" {cgid}:" in fs.table("vg1-lv0") and "riops=500" in fs.table("vg1-lv0")
    fs.ok('echo "vg1-lv0 wiops=200" > ${P}c/io.max')  # the others stay
    assert fs.ok("cat ${P}c/io.max") == "vg1-lv0 rbps=1048576 wbps=max riops=500 wiops=200\n"
    fs.ok('echo "vg1-lv0 rbps=max riops=0" > ${P}c/io.max')  # max (or 0) removes a cap
    assert fs.ok("cat ${P}c/io.max") == "vg1-lv0 rbps=max wbps=max riops=max wiops=200\n"
    assert fs.ctl.ok("cgroup", "io.max", f"/{fs.prefix}c") == fs.ok("cat ${P}c/io.max")
    before = fs.tables()
    for script, text in [
        ('echo "vg1-lv0 riops=x" > ${P}c/io.max', "Invalid argument"),
        ('echo "vg0-lv0 riops=5" > ${P}c/io.max', "Operation not supported"),  # weight
    ]:
        res = fs.sh(script)
        assert res.returncode != 0 and text in res.stderr, (script, res.stderr)
    assert fs.tables() == before
    fs.ok('echo "vg1-lv0 wiops=max" > ${P}c/io.max')
    assert fs.ok("cat ${P}c/io.max") == ""  # no cap left: nothing, as the kernel shows
