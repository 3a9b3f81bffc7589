"""FUSE data path, side by side in one run: the backing directory itself, a C peer
(``fuse-overlayfs`` with the backing directory as its only upper layer over an empty lower
one: a libfuse passthrough), and an ioband mount with control off (requests bypass the core)
and with control on (one group, nothing limited, the default adaptive window).

Workloads (fio, one job): 1 MiB sequential read of the file with every page cache dropped
first (the data comes from the disk), 1 MiB sequential write with an fsync at the end, 4 KiB
random reads and writes with O_DIRECT at queue depth 32, and 4 KiB random reads with O_DIRECT
at queue depth 1 (its median latency, and what the mount adds to the backing directory's).
The ioband mounts are ``direct = true``: the worker reads and writes the backing files with
O_DIRECT, so no run is served from a cache the others lack. fuse-overlayfs has no such setting
and opens its backing files without O_DIRECT whatever the caller asked: its O_DIRECT rows are
served from the page cache (faster than the disk), so they are not like for like.

Rounds interleave the setups and each figure is the best of the rounds: other work on a shared
machine takes CPU from one run or another, rarely from the same one twice. For the mounts the
CPU time their processes used (worker and daemon, or fuse-overlayfs) is also given per request:
that figure does not depend on how busy the machine is. Prints MiB/s, IOPS, latency and ratios
and writes benchmarks/results/fuse_throughput.json.

Needs root (FUSE with allow_other, drop_caches). Usage:
    python benchmarks/fuse_throughput.py [--seconds 5] [--size-mib 1024] [--rounds 2]
                                         [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: name: (fio rw, block size, O_DIRECT, queue depth, caches dropped first)
WORKLOADS = {
    "seq_read_1m_cold": ("read", "1M", False, 1, True),
    "seq_write_1m": ("write", "1M", False, 1, False),
    "rand_read_4k_qd32_direct": ("randread", "4k", True, 32, False),
    "rand_write_4k_qd32_direct": ("randwrite", "4k", True, 32, False),
    "rand_read_4k_qd1_direct": ("randread", "4k", True, 1, False),
}
BACKING = "backing directory"
PEER = "fuse-overlayfs (C)"
OFF = "ioband, control off"
ON = "ioband, control on"
PINNED = "ioband, control on, io_limit {}"  # a diagnosis, not a figure of the default table
_TICK = os.sysconf("SC_CLK_TCK")


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def fio(path: Path, rw: str, bs: str, direct: bool, depth: int, seconds: float,
        size_mib: int) -> dict:  # fmt: skip
    argv = ["fio", "--name=bench", f"--filename={path}", f"--rw={rw}", f"--bs={bs}",
            f"--size={size_mib}M", f"--direct={int(direct)}", "--output-format=json",
            "--invalidate=0"]  # fmt: skip
    if rw.startswith("rand"):
        argv += ["--ioengine=libaio" if depth > 1 else "--ioengine=psync",
                 f"--iodepth={depth}", "--time_based", f"--runtime={seconds}"]  # fmt: skip
    elif rw == "write":
        argv += ["--ioengine=psync", "--end_fsync=1"]
    else:
        argv += ["--ioengine=psync"]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    out = done.stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]
    side = job["write" if "write" in rw else "read"]
    p50 = side["clat_ns"].get("percentile", {}).get("50.000000", 0)
    return {"mib_s": round(side["bw_bytes"] / (1 << 20), 1), "iops": round(side["iops"]),
            "p50_us": round(p50 / 1000, 1), "ios": side["total_ios"]}  # fmt: skip


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def wait_mounted(mnt: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 20
    while subprocess.run(["mountpoint", "-q", str(mnt)]).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the mount did not appear ({proc.args[:3]})")
        time.sleep(0.05)


def start_ioband(backing: Path, mnt: Path, control: bool,
                 io_limit: int = 0) -> tuple[subprocess.Popen, list[int]]:  # fmt: skip
    run = Path(tempfile.mkdtemp(prefix="ioband-bench-"))
    config = run / "ioband.toml"
    config.write_text(
        f'[daemon]\ncontrol_socket = ""\nstate_file = ""\n[nbd]\nunix_socket = "{run}/nbd.sock"\n'
        f'[[device]]\nname = "bench"\ntable = "0 0 ioband {backing} bench 0 {io_limit} none'
        f' weight 0 :100"\nmountpoint = "{mnt}"\ndirect = true\n'
        f"control = {'true' if control else 'false'}\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "ioband", "daemon", "--config", str(config)],
                            stderr=subprocess.DEVNULL)  # fmt: skip
    wait_mounted(mnt, proc)
    found = subprocess.run(["pgrep", "-f", f"ioband.fuse.worker .*--mountpoint {mnt}"],
                           capture_output=True, text=True).stdout.split()  # fmt: skip
    return proc, [proc.pid, *map(int, found)]


def start_peer(backing: Path, mnt: Path, scratch: Path) -> tuple[subprocess.Popen, list[int]]:
    lower, work = scratch / "lower", scratch / "work"
    lower.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    proc = subprocess.Popen(["fuse-overlayfs", "-f", "-o", f"lowerdir={lower},upperdir={backing},"
                             f"workdir={work},allow_other", str(mnt)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_mounted(mnt, proc)
    return proc, [proc.pid]


def stop(proc: subprocess.Popen, mnt: Path) -> None:
    proc.terminate()
    proc.wait(timeout=60)
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def run_all(where: Path, pids: list[int], seconds: float, size_mib: int,
            workloads: list[str]) -> dict:  # fmt: skip
    out = {}
    for name in workloads:
        rw, bs, direct, depth, cold = WORKLOADS[name]
        target = where / ("written" if rw == "write" else "data")
        if rw == "write" and target.exists():
            target.unlink()
        if cold:
            drop_caches()
        before = cpu_seconds(pids)
        r = fio(target, rw, bs, direct, depth, seconds, size_mib)
        if pids and "ios" in r and r["ios"]:
            r["cpu_us_per_io"] = round((cpu_seconds(pids) - before) / r["ios"] * 1e6, 1)
        out[name] = r
    return out


def best(a: dict | None, b: dict) -> dict:
    """The better of two runs of one workload (the lower latency at queue depth 1)."""
    if a is None or "error" in a:
        return b
    if "error" in b:
        return a
    return a if a["iops"] >= b["iops"] else b


def ratio(x: dict, y: dict, key: str = "iops") -> float:
    return round(x[key] / y[key], 2) if x.get(key) and y.get(key) else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=2, help="the best of each figure is kept")
    ap.add_argument("--dir", default="/var/tmp", help="where the backing directory goes")
    ap.add_argument("--no-peer", action="store_true", help="skip fuse-overlayfs")
    ap.add_argument(
        "--only",
        nargs="+",
        choices=list(WORKLOADS),
        default=list(WORKLOADS),
        help="these workloads only (a quick look; the must-show needs them all)",
    )
    ap.add_argument(
        "--pinned-io-limit",
        type=int,
        default=0,
        help="a diagnostic row more: control on with this fixed io_limit instead of"
        " the adaptive window (what the mount gives when the window does not bind)",
    )
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "fuse_throughput.json")
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("fuse_throughput: needs root (FUSE allow_other, drop_caches)")
    load_at_start = os.getloadavg()  # the machine is shared: how busy it was, start and end
    peer = not args.no_peer and shutil.which("fuse-overlayfs") is not None
    base = Path(tempfile.mkdtemp(prefix="ioband-fuse-bench-", dir=args.dir))
    backing, mnt = base / "backing", base / "mnt"
    backing.mkdir()
    mnt.mkdir()
    subprocess.run(["fio", "--name=prep", f"--filename={backing / 'data'}", "--rw=write",
                    "--bs=1M", f"--size={args.size_mib}M", "--output-format=terse"],
                   check=True, capture_output=True)  # fmt: skip
    pinned = PINNED.format(args.pinned_io_limit) if args.pinned_io_limit else None
    setups = [BACKING, *([PEER] if peer else []), OFF, ON, *([pinned] if pinned else [])]
    results: dict[str, dict] = {s: {} for s in setups}
    try:
        for _ in range(args.rounds):
            for label in setups:
                proc, pids = None, []
                if label == PEER:
                    proc, pids = start_peer(backing, mnt, base)
                elif label in (OFF, ON):
                    proc, pids = start_ioband(backing, mnt, label == ON)
                elif label == pinned:
                    proc, pids = start_ioband(backing, mnt, True, args.pinned_io_limit)
                try:
                    got = run_all(backing if proc is None else mnt, pids, args.seconds,
                                  args.size_mib, args.only)  # fmt: skip
                finally:
                    if proc is not None:
                        stop(proc, mnt)
                for name, r in got.items():
                    results[label][name] = best(results[label].get(name), r)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        subprocess.run(["rm", "-rf", str(base)], check=False)

    base_r = results[BACKING]
    print(f"{'workload':<26} {'setup':<22} {'MiB/s':>8} {'IOPS':>8} {'p50 µs':>8} "
          f"{'vs backing':>10} {'CPU µs/IO':>9}")  # fmt: skip
    for name in args.only:
        for label, res in results.items():
            r = res[name]
            if "error" in r:
                print(f"{name:<26} {label:<22} failed: {r['error']}")
                continue
            r["vs_backing"] = ratio(r, base_r[name])
            cpu = f"{r['cpu_us_per_io']:>9.1f}" if "cpu_us_per_io" in r else f"{'':>9}"
            print(f"{name:<26} {label:<22} {r['mib_s']:>8.1f} {r['iops']:>8} {r['p50_us']:>8.1f}"
                  f" {r['vs_backing']:>9.2f}x {cpu}")  # fmt: skip
    on, off = results[ON], results[OFF]
    qd32, seq, qd1 = "rand_read_4k_qd32_direct", "seq_read_1m_cold", "rand_read_4k_qd1_direct"

    def row(res: dict, name: str) -> dict:
        return res.get(name, {})  # a workload left out with --only

    def added(r: dict) -> float:
        return round(row(r, qd1).get("p50_us", 0) - row(base_r, qd1).get("p50_us", 0), 1)

    must = {
        "rand_read_4k_qd32_on_vs_backing": ratio(row(on, qd32), row(base_r, qd32)),
        "rand_read_4k_qd32_on_vs_peer": (
            ratio(row(on, qd32), row(results[PEER], qd32)) if peer else None
        ),
        "seq_read_1m_on_vs_off": ratio(row(on, seq), row(off, seq), "mib_s"),
        "seq_read_1m_on_vs_backing": ratio(row(on, seq), row(base_r, seq), "mib_s"),
        "qd1_p50_added_us_on": added(on),
        "qd1_p50_added_us_off": added(off),
    }
    print("load average (1, 5, 15 min): at start", ", ".join(f"{x:.2f}" for x in load_at_start),
          "- at the end", ", ".join(f"{x:.2f}" for x in os.getloadavg()))  # fmt: skip
    print("must-show:", ", ".join(f"{k} = {v}" for k, v in must.items()))
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version(),
                    "load_average": os.getloadavg(),
                    "load_average_at_start": load_at_start},
        "seconds": args.seconds, "size_mib": args.size_mib, "rounds": args.rounds,
        "results": results, "must_show": must,
    }, indent=1) + "\n")  # fmt: skip
    print(f"written to {out}")


if __name__ == "__main__":
    main()
