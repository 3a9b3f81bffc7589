"""``ioband top --once`` and the ``stats`` op against a running daemon, after real NBD I/O."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console

from ioband.control.client import call
from ioband.control.top import frame, render
from ioband.core.histogram import Histogram
from tests.conftest import require_real
from tests.control_helpers import PYTHON, backing, control_daemon

SECTORS = 32768  # 16 MiB


def _io(ctl, name: str, *cmds: str) -> None:
    qemu_io = shutil.which("qemu-io")
    require_real(qemu_io is not None, "qemu-io is not installed (scripts/install.sh installs it)")
    nbd = ctl.socket.replace("control.sock", "nbd.sock")
    argv = [qemu_io, "-f", "raw"]
    for c in cmds:
        argv += ["-c", c]
    subprocess.run([*argv, f"nbd+unix:///{name}?socket={nbd}"], check=True, capture_output=True,
                   timeout=60)  # fmt: skip


def test_stats_op_counts_io(tmp_path: Path):
    with control_daemon() as ctl:
        disk = backing(tmp_path, "d1", SECTORS)
        ctl.ok("create", "ioband1", "--table", f"0 {SECTORS} ioband {disk} 1 0 0 none weight 0 :60")
        _io(ctl, "ioband1", "write -P 1 0 256k", "read -P 1 0 256k")
        snap = call(ctl.socket, "stats")
        (dev,) = snap["devices"]
        assert dev["name"] == "ioband1" and dev["policy"] == "weight"
        assert dev["device_group"] == "1" and dev["inflight"] == 0
        (g,) = dev["groups"]
        assert g["id"] == -1 and g["weight"] == 60
        assert g["bytes"] == [256 << 10, 256 << 10]
        assert g["ios"][0] >= 1 and g["ios"][1] >= 1
        # io_limit 0: the window adapts, and what it is decided from is reported
        assert dev["adaptive"] is True and 1 <= dev["window"] <= dev["io_limit"]
        assert dev["latency_ms"] >= 0 and dev["base_latency_ms"] >= 0
        assert dev["store_queue"] is not None and dev["throughput"] >= 0
        # io_limit 5: pinned, nothing measured
        disk2 = backing(tmp_path, "d2", SECTORS)
        ctl.ok("create", "ioband2", "--table", f"0 {SECTORS} ioband {disk2} 2 0 5 none weight 0 :1")
        dev2 = next(d for d in call(ctl.socket, "stats")["devices"] if d["name"] == "ioband2")
        assert dev2["adaptive"] is False and dev2["window"] == dev2["io_limit"] == 5
        assert dev2["latency_ms"] is None and dev2["store_queue"] is None


def test_top_once(tmp_path: Path):
    with control_daemon() as ctl:
        disk = backing(tmp_path, "d1", SECTORS)
        ctl.ok("create", "ioband1", "--table", f"0 {SECTORS} ioband {disk} 1 0 0 none weight 0 :40")
        disk2 = backing(tmp_path, "d2", SECTORS)
        table2 = f"0 {SECTORS} ioband {disk2} 2 0 0 user range-bw 0 :100:200"
        ctl.ok("create", "ioband2", "--table", table2)
        _io(ctl, "ioband1", "write -P 1 0 1M")
        out = ctl.ok("top", "--once", "--interval", "0.2")
        assert "ioband1" in out and "ioband2" in out
        assert "IOPS" in out and "MiB/s" in out and "share" in out
        assert "idle" in out  # no I/O during the interval
        assert "100:200" in out and "p50ms" in out and "holdms" in out
        assert "(adaptive)" in out
        # as a separate process, the socket from the environment
        env = {"IOBAND_SOCKET": ctl.socket, "COLUMNS": "150", "PATH": "/usr/bin:/bin"}
        res = subprocess.run([PYTHON, "-m", "ioband", "top", "--once", "--interval", "0.1"],
                             capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert "ioband1" in res.stdout


def test_top_unreachable_and_bad_interval(tmp_path: Path):
    with control_daemon() as ctl:
        rc, _, err = ctl.run("top", "--once", "--interval", "0")
        assert rc != 0 and "--interval" in err
    res = subprocess.run([PYTHON, "-m", "ioband", "top", "--once", "--socket",
                          str(tmp_path / "none.sock")], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert res.returncode == 1 and "cannot reach" in res.stderr
    assert "Traceback" not in res.stderr
    res = subprocess.run([PYTHON, "-m", "ioband", "top", "--once", "--json", "--socket",
                          str(tmp_path / "none.sock")], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert res.returncode == 1
    assert json.loads(res.stdout)["error"]["errno"] == "EHOSTUNREACH"


def test_top_json_against_a_daemon(tmp_path: Path):
    with control_daemon() as ctl:
        disk = backing(tmp_path, "d1", SECTORS)
        ctl.ok("create", "ioband1", "--table", f"0 {SECTORS} ioband {disk} 1 0 0 none weight 0 :40")
        _io(ctl, "ioband1", "write -P 1 0 1M")
        (line,) = ctl.ok("top", "--once", "--json", "--interval", "0.2").splitlines()
        data = json.loads(line)
        (dev,) = data["devices"]
        (g,) = dev["groups"]
        assert g["group"] == "default" and g["iops"] == 0  # nothing in the interval
        assert g["latency_ms"] == {"mean": None, "p50": None, "p99": None, "count": 0}
        snap = call(ctl.socket, "stats")
        assert snap["devices"][0]["groups"][0]["latency"]["count"] >= 1  # the write, before


def _hist(values_us: list[int]) -> dict:
    h = Histogram()
    for us in values_us:
        h.record(us * 1000)
    return h.sparse()


def _snap(now_ms: float, ios: list[int], **device: object) -> dict:
    groups = [{"id": gid, "ios": [n, 0], "bytes": [n * 4096, 0], "delayed": [0, 0],
               "ticks_ms": [n * 2, 0], "held": 0, "weight": w, "tokens": 0,
               "latency": _hist([1000] * (n // 2) + [3000] * (n - n // 2)),
               "hold": _hist([500] * n)}
              for gid, n, w in zip((-1, 1, 2), ios, (10, 40, 20))]  # fmt: skip
    dev = {"name": "ioband1", "device_group": "1", "policy": "weight", "type": "user",
           "io_throttle": 4, "io_limit": 16, "inflight": 0, "suspended": False,
           "groups": groups, **device}  # fmt: skip
    return {"now_ms": now_ms, "devices": [dev]}


def _rows(text: str) -> dict[str, str]:
    """The groups' rows of a rendered frame, by the group's name (the last column)."""
    return {ln.split()[-1]: ln for ln in text.splitlines() if ln.split() and "%" in ln}


def test_render_rates_and_shares():
    console = Console(width=160, record=True)
    console.print(render(_snap(1000, [5, 100, 50]), _snap(3000, [5, 500, 250])))
    text = console.export_text()
    rows = _rows(text)
    # group 1: 400 IOs in 2 s = 200 IOPS, 2/3 of the work, weight 40 of the active 60
    assert "200" in rows["1"] and "66.7%" in rows["1"]
    assert "100" in rows["2"] and "33.3%" in rows["2"]
    assert "idle" in rows["default"]


def test_frame_latency_percentiles_over_the_interval():
    """Percentiles and means are those of the requests completed between the two snapshots:
    half at 1 ms, half at 3 ms; held 0.5 ms each."""
    data = frame(_snap(1000, [0, 100, 0]), _snap(3000, [0, 500, 0]))
    assert data["interval_seconds"] == 2.0
    (dev,) = data["devices"]
    g = next(g for g in dev["groups"] if g["id"] == 1)
    assert g["group"] == "1" and g["iops"] == 200
    lat = g["latency_ms"]
    assert lat["count"] == 400
    assert lat["mean"] == pytest.approx(2.0, rel=0.01)
    assert 0.96 <= lat["p50"] <= 1.15  # in 1 ms's bucket (1/8 of an octave wide)
    assert 2.9 <= lat["p99"] <= 3.3
    assert g["hold_ms"]["mean"] == pytest.approx(0.5)
    idle = next(g for g in dev["groups"] if g["id"] == -1)
    assert idle["group"] == "default" and idle["latency_ms"]["p50"] is None
    json.dumps(data)  # JSON-ready as is


def test_render_at_80_columns_keeps_every_name_whole():
    adaptive = {"window": 3, "adaptive": True, "latency_ms": 4.213, "base_latency_ms": 1.5,
                "store_queue": 0.42, "throughput": 700.0}  # fmt: skip
    fixed = {"name": "ioband2", "device_group": "2", "window": 192, "adaptive": False,
             "latency_ms": None, "base_latency_ms": None, "store_queue": None,
             "throughput": None}  # fmt: skip
    prev = _snap(1000, [5, 100, 50])
    cur = _snap(3000, [5, 500, 250], **adaptive)
    cur["devices"][0]["groups"][1]["name"] = "/machine.slice/vm1.scope"  # attached by path
    cur["devices"].append(_snap(3000, [0, 0, 0], **fixed)["devices"][0])
    console = Console(width=80, record=True)
    console.print(render(prev, cur))
    text = console.export_text()
    assert "…" not in text  # nothing truncated at 80 columns
    assert max(map(len, text.splitlines())) <= 80
    # a long name folds onto the next lines of its column, whole
    assert "machine.slice/vm1.scope" in "".join(text.split()) and "default" in text
    titles = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("ioband")}
    assert "3 (adaptive)" in titles["ioband1"] and "svc 4.21ms" in titles["ioband1"]
    assert "0.4" in titles["ioband1"]
    assert "192 (fixed)" in titles["ioband2"]
    for column in ("p50ms", "p99ms", "holdms", "IOPS", "MiB/s", "share", "target"):
        assert column in text
    # a daemon that does not report the window or latencies yet: unknown, not a crash
    old = _snap(3000, [5, 500, 250])
    for g in old["devices"][0]["groups"]:
        del g["latency"], g["hold"]
    console = Console(width=80, record=True)
    console.print(render(prev, old))
    assert "weight" in console.export_text()


def test_top_in_an_80_column_terminal(tmp_path: Path):
    """The live view in a real 80x30 terminal (tmux), during real NBD I/O: nothing cut."""
    tmux = shutil.which("tmux")
    require_real(tmux is not None, "tmux is not installed")
    session = f"ioband-top-{os.getpid()}"
    with control_daemon() as ctl:
        disk = backing(tmp_path, "d1", SECTORS)
        ctl.ok("create", "ioband1", "--table",
               f"0 {SECTORS} ioband {disk} 1 0 0 user weight 0 :40 0:60")  # fmt: skip
        argv = f"{PYTHON} -m ioband top --socket {ctl.socket} --interval 1"
        subprocess.run([tmux, "new-session", "-d", "-x", "80", "-y", "30", "-s", session, argv],
                       check=True, env={"PATH": "/usr/bin:/bin", "TERM": "xterm"})  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            screen = ""
            while time.monotonic() < deadline:
                _io(ctl, "ioband1", "write -P 1 0 4M", "read -P 1 0 4M")
                screen = subprocess.run([tmux, "capture-pane", "-p", "-t", session],
                                        capture_output=True, text=True).stdout  # fmt: skip
                if "p50ms" in screen and any(
                    ln.split()[-1:] == ["0"] and ln.split()[5] != "-"
                    for ln in screen.splitlines()
                    if len(ln.split()) == 10
                ):
                    break  # a frame with group 0's latency percentiles
                time.sleep(0.5)
        finally:
            subprocess.run([tmux, "kill-session", "-t", session], check=False)
    print(screen)
    lines = screen.rstrip("\n").splitlines()
    assert max(map(len, lines)) <= 80
    assert "…" not in screen
    assert "ioband1" in screen and "default" in screen
    row = next(ln for ln in lines if len(ln.split()) == 10 and ln.split()[-1] == "0")
    weight, _, _, iops, _, p50, p99, hold, _, name = row.split()
    assert weight == "60" and name == "0" and float(p50) > 0 and float(p99) >= float(p50)
    assert float(hold) >= 0 and int(iops) > 0
