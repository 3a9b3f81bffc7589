"""FUSE data path, side by side in one run: the backing directory itself, an ioband mount with
control off (requests bypass the core), and with control on (one group, nothing limited).

Workloads (fio, one job): 1 MiB sequential read of a 1 GiB file with every page cache dropped
first (the data comes from the disk), 1 MiB sequential write with an fsync at the end, and 4 KiB
random reads with O_DIRECT at queue depth 32. The mounts are ``direct = true``: the worker reads
and writes the backing files with O_DIRECT, so no run is served from a cache the others lack.
Prints MiB/s, IOPS and the ratio to the backing directory, and writes
benchmarks/results/fuse_throughput.json.

Needs root (FUSE with allow_other, drop_caches). Usage:
    python benchmarks/fuse_throughput.py [--seconds 5] [--size-mib 1024] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = {
    "seq_read_1m_cold": ("read", "1M", False, True),
    "seq_write_1m": ("write", "1M", False, False),
    "rand_read_4k_qd32_direct": ("randread", "4k", True, False),
}


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def fio(path: Path, rw: str, bs: str, direct: bool, seconds: float, size_mib: int) -> dict:
    argv = ["fio", "--name=bench", f"--filename={path}", f"--rw={rw}", f"--bs={bs}",
            f"--size={size_mib}M", f"--direct={int(direct)}", "--output-format=json",
            "--invalidate=0"]  # fmt: skip
    if rw == "randread":
        argv += ["--ioengine=libaio", "--iodepth=32", "--time_based", f"--runtime={seconds}"]
    elif rw == "write":
        argv += ["--ioengine=psync", "--end_fsync=1"]
    else:
        argv += ["--ioengine=psync"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]
    side = job["write" if rw == "write" else "read"]
    return {"mib_s": round(side["bw_bytes"] / (1 << 20), 1), "iops": round(side["iops"])}


def start_mount(backing: Path, mnt: Path, control: bool) -> subprocess.Popen:
    run = Path(tempfile.mkdtemp(prefix="ioband-bench-"))
    config = run / "ioband.toml"
    config.write_text(
        f'[daemon]\ncontrol_socket = ""\nstate_file = ""\n[nbd]\nunix_socket = "{run}/nbd.sock"\n'
        f'[[device]]\nname = "bench"\ntable = "0 0 ioband {backing} bench 0 0 none weight 0'
        f' :100"\nmountpoint = "{mnt}"\ndirect = true\n'
        f"control = {'true' if control else 'false'}\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "ioband", "daemon", "--config", str(config)],
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 20
    while subprocess.run(["mountpoint", "-q", str(mnt)]).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the ioband mount did not appear")
        time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen, mnt: Path) -> None:
    proc.terminate()
    proc.wait(timeout=60)
    subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def run_all(where: Path, seconds: float, size_mib: int) -> dict:
    out = {}
    for name, (rw, bs, direct, cold) in WORKLOADS.items():
        target = where / ("data" if rw != "write" else "written")
        if rw == "write" and target.exists():
            target.unlink()
        if cold:
            drop_caches()
        out[name] = fio(target, rw, bs, direct, seconds, size_mib)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--dir", default="/var/tmp", help="where the backing directory goes")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("fuse_throughput: needs root (FUSE allow_other, drop_caches)")
    base = Path(tempfile.mkdtemp(prefix="ioband-fuse-bench-", dir=args.dir))
    backing, mnt = base / "backing", base / "mnt"
    backing.mkdir()
    mnt.mkdir()
    subprocess.run(["fio", "--name=prep", f"--filename={backing / 'data'}", "--rw=write",
                    "--bs=1M", f"--size={args.size_mib}M", "--output-format=terse"],
                   check=True, capture_output=True)  # fmt: skip
    results: dict[str, dict] = {"backing directory": run_all(backing, args.seconds, args.size_mib)}
    for label, control in (("ioband, control off", False), ("ioband, control on", True)):
        proc = start_mount(backing, mnt, control)
        try:
            results[label] = run_all(mnt, args.seconds, args.size_mib)
        finally:
            stop(proc, mnt)
    subprocess.run(["rm", "-rf", str(base)], check=False)

    base_r = results["backing directory"]
    print(f"{'workload':<26} {'setup':<22} {'MiB/s':>9} {'IOPS':>9} {'vs backing':>11}")
    for name in WORKLOADS:
        for label, res in results.items():
            r = res[name]
            ratio = r["mib_s"] / base_r[name]["mib_s"] if base_r[name]["mib_s"] else 0
            r["vs_backing"] = round(ratio, 2)
            print(f"{name:<26} {label:<22} {r['mib_s']:>9.1f} {r['iops']:>9} {ratio:>10.2f}x")
    out = Path(__file__).parent / "results" / "fuse_throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version()},
        "seconds": args.seconds, "size_mib": args.size_mib, "results": results,
    }, indent=1) + "\n")  # fmt: skip
    print(f"written to {out}")


if __name__ == "__main__":
    main()
