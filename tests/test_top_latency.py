"""``ioband top``'s latency against what the clients measure: fio's completion latency (clat) of
the same requests, on a loop device throttled by a blkio cgroup (the bottleneck made by real
means, as in test_nbd_fairness), with the default table settings (adaptive window).

ioband's latency runs from a request's arrival at ioband to its completion: held, queued in
the store and served. fio's clat adds the client's side (libnbd, the socket both ways); on a
bottlenecked device the hold dominates and the two must agree within 20 %.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ioband.control.client import call
from tests.conftest import require_real
from tests.test_nbd_fairness import client_cgroups, in_cgroup, throttled_loop

READ_IOPS = 500  # the store's cap: 3 clients x 16 requests wait ~0.1 s on it, much more than
# the client's own round trip (libnbd and the socket both ways, ~0.5-1 ms on the test machine),
# which fio's clat includes and ioband cannot see
RUNTIME = 8
WEIGHTS = {"g1": 40, "g2": 20, "g3": 10}
TOLERANCE = 0.20


def fio_job(sock: str, name: str) -> list[str]:
    return [
        "fio", f"--name={name}", "--ioengine=nbd", f"--uri=nbd+unix:///ioband1?socket={sock}",
        "--rw=randread", "--bs=4k", "--iodepth=16", "--size=200M", "--time_based",
        f"--runtime={RUNTIME}", "--output-format=json",
    ]  # fmt: skip


@pytest.fixture
def bottleneck(tmp_path: Path):
    """A loop device capped at READ_IOPS for the cgroup the daemon runs in."""
    with throttled_loop(tmp_path, f"ioband-lat-{os.getpid()}-daemon", READ_IOPS) as made:
        yield made


def start(tmp_path: Path, daemon_cg: Path, table: str) -> tuple[subprocess.Popen, str, str]:
    sock_dir = Path(tempfile.mkdtemp(prefix="ioband-lat-", dir="/tmp"))
    nbd_sock, control = str(sock_dir / "nbd.sock"), str(sock_dir / "control.sock")
    config = tmp_path / "ioband.toml"
    config.write_text(
        f'[daemon]\ncontrol_socket = "{control}"\nstate_file = ""\n'
        f'[nbd]\nunix_socket = "{nbd_sock}"\n'
        f'[[device]]\nname = "ioband1"\ntable = "{table}"\ndirect = true\n'
    )
    argv = [sys.executable, "-m", "ioband", "daemon", "--config", str(config)]
    proc = subprocess.Popen(in_cgroup(daemon_cg, argv), stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        if os.path.exists(nbd_sock) and os.path.exists(control):
            return proc, nbd_sock, control
        if proc.poll() is not None:
            pytest.fail(f"daemon exited: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("daemon did not start")


def top_in_tmux(control: str) -> str | None:
    """``ioband top`` in an 80x24 tmux terminal, captured after two frames (None without
    tmux)."""
    tmux = shutil.which("tmux")
    if tmux is None:
        return None
    session = f"ioband-lat-{os.getpid()}"
    argv = f"{sys.executable} -m ioband top --socket {control} --interval 1"
    subprocess.run([tmux, "new-session", "-d", "-x", "80", "-y", "24", "-s", session, argv],
                   check=True, env={"PATH": "/usr/bin:/bin", "TERM": "xterm"})  # fmt: skip
    try:
        time.sleep(3.5)
        return subprocess.run([tmux, "capture-pane", "-p", "-t", session], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], check=False)


@pytest.mark.parametrize("io_limit", [0, 16], ids=["adaptive", "io_limit16"])
def test_top_latency_matches_fio(bottleneck, tmp_path, io_limit):
    """``io_limit 0`` (the default): the window adapts and most of the wait is in the store;
    ``io_limit 16``: ioband holds what the store cannot take (as test_nbd_fairness), and most
    of the wait is the hold."""
    loop, daemon_cg, cgroups = bottleneck
    cgs = client_cgroups(f"ioband-lat-{os.getpid()}", cgroups)
    groups = " ".join(f"{cgs[n][1]}:{w}" for n, w in WEIGHTS.items())
    table = f"0 {(256 << 20) // 512} ioband {loop} 1 0 {io_limit} cgroup weight 0 :1 {groups}"
    daemon, sock, control = start(tmp_path, daemon_cg, table)
    try:
        # one frame over an interval that spans every fio run whole
        top = subprocess.Popen(
            [sys.executable, "-m", "ioband", "top", "--json", "--once", "--socket", control,
             "--interval", str(RUNTIME + 6)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(0.5)
        clients = {
            n: subprocess.Popen(in_cgroup(cgs[n][0], fio_job(sock, n)), stdout=subprocess.PIPE,
                                text=True)
            for n in WEIGHTS
        }  # fmt: skip
        screen = top_in_tmux(control) if io_limit == 0 else None
        fio = {}
        for name, proc in clients.items():
            out, _ = proc.communicate(timeout=RUNTIME + 60)
            assert proc.returncode == 0
            job = json.loads(out[out.index("{") :])["jobs"][0]
            assert job["error"] == 0
            clat = job["read"]["clat_ns"]
            fio[name] = {"mean": clat["mean"] / 1e6, "p50": clat["percentile"]["50.000000"] / 1e6,
                         "ios": job["read"]["total_ios"]}  # fmt: skip
        out, _ = top.communicate(timeout=60)
        assert top.returncode == 0
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    if screen is not None:  # the live view at 80 columns, during the same run
        print(screen)
        assert max(map(len, screen.splitlines())) <= 80 and "…" not in screen
        for name in WEIGHTS:
            assert any(ln.split()[-1:] == [str(cgs[name][1])] for ln in screen.splitlines())
    frame = json.loads(out)
    by_id = {g["id"]: g for g in frame["devices"][0]["groups"]}
    misses = []
    for name in WEIGHTS:
        g = by_id[cgs[name][1]]
        lat, hold = g["latency_ms"], g["hold_ms"]
        want = fio[name]
        print(f"{name}: fio clat mean {want['mean']:.2f} ms p50 {want['p50']:.2f} ms"
              f" ({want['ios']} reads); top mean {lat['mean']:.2f} ms p50 {lat['p50']:.2f}"
              f" p99 {lat['p99']:.2f} ms, hold mean {hold['mean']:.2f} ms"
              f" ({lat['count']})")  # fmt: skip
        assert lat["count"] >= fio[name]["ios"] * 0.95  # the interval covered the run
        for stat in ("mean", "p50"):
            want = fio[name][stat]
            if abs(lat[stat] - want) / want > TOLERANCE:
                misses.append((name, stat, lat[stat], round(want, 3)))
        # the hold is most of it: the store is the bottleneck and ioband holds the queue
        assert 0 < hold["mean"] < lat["mean"]
    assert not misses, misses


def test_commands_behind_a_waiting_one_are_answered_in_full(bottleneck, tmp_path):
    """io_limit 4 on a throttled store: one connection's 128 concurrent reads go 4 in flight, one
    held, and the submitter waits; the server reads the rest behind it, stamped, and runs them
    in order once it is admitted. Every read is answered with its data, and each is counted
    once in both histograms, its wait in its hold."""
    qemu_io = shutil.which("qemu-io")
    require_real(qemu_io is not None, "qemu-io is not installed (scripts/install.sh installs it)")
    loop, daemon_cg, _ = bottleneck
    table = f"0 {(256 << 20) // 512} ioband {loop} 1 0 4 none weight 0 :100"
    daemon, sock, control = start(tmp_path, daemon_cg, table)
    try:
        cmds = []
        for i in range(128):
            cmds += ["-c", f"aio_read -P 0 {i * 65536} 4k"]
        res = subprocess.run([qemu_io, "-f", "raw", *cmds, "-c", "aio_flush",
                              f"nbd+unix:///ioband1?socket={sock}"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert res.stdout.count("read 4096/4096 bytes") == 128, res.stdout
        assert "Pattern verification failed" not in res.stdout
        (g,) = call(control, "stats")["devices"][0]["groups"]
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    done = sum(g["ios"])  # the 128 reads and aio_flush's FLUSH
    assert g["ios"][0] == 128 and done == 129 and g["delayed"][0] >= 1
    assert g["latency"]["count"] == done and g["hold"]["count"] == done
    # 128 reads at READ_IOPS (after the throttle's first burst) through a window of 4: most of
    # them wait for the ones before
    assert g["hold"]["sum_ns"] / done > 5e6, g["hold"]
    assert g["latency"]["sum_ns"] > g["hold"]["sum_ns"]
