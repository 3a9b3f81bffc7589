"""NBD data path, side by side in one run: nbdkit's file plugin, ioband with control off
(requests bypass the scheduler) and ioband with control on (one group, nothing limited), same
backing file, same clients.

Clients: ``nbdcopy`` to ``null:`` (1 MiB requests, sequential), ``fio --ioengine=nbd`` 4 KiB
random reads at queue depth 1 and 32. Prints MiB/s, IOPS, p50/p99 latency and ratios to nbdkit,
and the CPU time each server spent per request (user + system, from /proc: unlike the rates, it
hardly moves when other jobs share the machine), and writes them to
benchmarks/results/nbd_throughput.json.

``--baseline-src DIR`` adds another ioband tree (its ``src``, e.g. from ``git archive``) as two
more servers in the same rounds: before and after a change, measured side by side.

Usage: python benchmarks/nbd_throughput.py [--seconds 5] [--size-mib 512] [--baseline-src DIR]
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


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server did not start ({proc.args})")
        time.sleep(0.05)


def start_nbdkit(image: Path, sock: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["nbdkit", "--foreground", "--unix", str(sock), "--exportname",
                             "disk", "file", str(image)])  # fmt: skip
    wait_for(sock, proc)
    return proc


def start_ioband(image: Path, sock: Path, control: bool, loop: str,
                 src: str | None = None) -> subprocess.Popen:  # fmt: skip
    config = sock.with_suffix(".toml")
    sectors = image.stat().st_size // 512
    config.write_text(
        '[daemon]\ncontrol_socket = ""\nstate_file = ""\n'  # no control plane
        f'[nbd]\nunix_socket = "{sock}"\n[[device]]\nname = "disk"\n'
        f'table = "0 {sectors} ioband {image} bench 0 0 none weight 0 :100"\n'
        f"control = {'true' if control else 'false'}\n"
    )
    env = dict(os.environ, IOBAND_EVENT_LOOP=loop)
    if src is not None:  # another tree's ioband
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-m", "ioband", "daemon", "--config", str(config)],
                            env=env, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for(sock, proc)
    return proc


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def nbdcopy_mibps(uri: str, size: int, pid: int) -> dict:
    start, cpu = time.perf_counter(), cpu_seconds(pid)
    subprocess.run(["nbdcopy", "--request-size=1048576", uri, "null:"], check=True)
    elapsed = time.perf_counter() - start
    requests = size / (1 << 20)
    return {"mib_per_s": size / elapsed / (1 << 20),
            "cpu_us": (cpu_seconds(pid) - cpu) / requests * 1e6}  # fmt: skip


def fio_randread(uri: str, depth: int, seconds: float, pid: int) -> dict:
    cpu = cpu_seconds(pid)  # the ramp-up counts too: per request over all of fio's requests
    out = subprocess.run(
        ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", "--rw=randread", "--bs=4k",
         f"--iodepth={depth}", "--time_based", f"--runtime={seconds}", "--ramp_time=1",
         "--output-format=json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    used = cpu_seconds(pid) - cpu
    read = json.loads(out[out.index("{") :])["jobs"][0]["read"]
    pct = read["clat_ns"]["percentile"]
    return {
        "iops": read["iops"],
        "cpu_us": used / read["total_ios"] * 1e6 if read["total_ios"] else None,
        "p50_us": pct["50.000000"] / 1000,
        "p99_us": pct["99.000000"] / 1000,
    }


def best(runs: list[dict]) -> dict:
    """Per test, the run with the highest throughput."""
    out = {}
    for test in runs[0]:
        key = "mib_per_s" if "mib_per_s" in runs[0][test] else "iops"
        out[test] = max((r[test] for r in runs), key=lambda r: r[key])
    return out


def measure(uri: str, size: int, seconds: float, pid: int) -> dict:
    return {
        "seq_1m": nbdcopy_mibps(uri, size, pid),
        "rand_4k_qd1": fio_randread(uri, 1, seconds, pid),
        "rand_4k_qd32": fio_randread(uri, 32, seconds, pid),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="per fio run")
    ap.add_argument("--size-mib", type=int, default=512, help="backing file size")
    ap.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the best of each is kept")
    ap.add_argument("--out", default="benchmarks/results/nbd_throughput.json")
    ap.add_argument("--baseline-src", metavar="DIR", help="also run the ioband tree DIR")
    args = ap.parse_args(argv)
    for tool in ("nbdkit", "nbdcopy", "fio"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (scripts/install.sh installs it)", file=sys.stderr)
            return 1
    size = args.size_mib << 20
    with tempfile.TemporaryDirectory(prefix="ioband-bench-") as tmp:
        image = Path(tmp) / "disk.img"
        with open(image, "wb") as f:  # real data, all in the page cache
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        servers = {
            "nbdkit": lambda s: start_nbdkit(image, s),
            "ioband, control off": lambda s: start_ioband(image, s, False, args.loop),
            "ioband, control on": lambda s: start_ioband(image, s, True, args.loop),
        }
        if args.baseline_src:
            src = os.path.abspath(args.baseline_src)
            servers["baseline, control off"] = lambda s: start_ioband(image, s, False, args.loop,
                                                                      src)  # fmt: skip
            servers["baseline, control on"] = lambda s: start_ioband(image, s, True, args.loop,
                                                                     src)  # fmt: skip
        # Rounds interleave the servers, and each figure is the best of the rounds: a busy
        # machine then hurts all of them alike instead of whichever ran at the wrong moment.
        runs: dict[str, list[dict]] = {name: [] for name in servers}
        for round_ in range(args.repeat):
            for i, (name, start) in enumerate(servers.items()):
                sock = Path(tmp) / f"{round_}-{i}.sock"
                proc = start(sock)
                try:
                    uri = f"nbd+unix:///disk?socket={sock}"
                    runs[name].append(measure(uri, size, args.seconds, proc.pid))
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
        results = {name: best(rs) for name, rs in runs.items()}
    base = results["nbdkit"]
    print(f"NBD throughput, one run ({args.loop}; Python {platform.python_version()})")
    print(f"{'server':<22} {'1M seq MiB/s':>13} {'4k QD1 IOPS':>12} {'p50 µs':>7} {'p99 µs':>7}"
          f" {'4k QD32 IOPS':>13} {'p50 µs':>7} {'p99 µs':>7}")  # fmt: skip
    for name, r in results.items():
        q1, q32 = r["rand_4k_qd1"], r["rand_4k_qd32"]
        print(f"{name:<22} {r['seq_1m']['mib_per_s']:>13,.0f} {q1['iops']:>12,.0f}"
              f" {q1['p50_us']:>7.0f} {q1['p99_us']:>7.0f} {q32['iops']:>13,.0f}"
              f" {q32['p50_us']:>7.0f} {q32['p99_us']:>7.0f}")  # fmt: skip
    ratios = {}
    for name, r in results.items():
        ratios[name] = {
            "seq_1m": r["seq_1m"]["mib_per_s"] / base["seq_1m"]["mib_per_s"],
            "rand_4k_qd1": r["rand_4k_qd1"]["iops"] / base["rand_4k_qd1"]["iops"],
            "rand_4k_qd32": r["rand_4k_qd32"]["iops"] / base["rand_4k_qd32"]["iops"],
        }
    pairs = {"control on / off": "ioband"}
    if args.baseline_src:
        pairs["baseline on / off"] = "baseline"

    def rate(r: dict) -> float:
        return r.get("iops", r.get("mib_per_s"))

    for label, tree in pairs.items():
        on, off = results[f"{tree}, control on"], results[f"{tree}, control off"]
        ratios[label] = {k: rate(on[k]) / rate(off[k]) for k in on}
    on, off = results["ioband, control on"], results["ioband, control off"]
    added_p50 = on["rand_4k_qd1"]["p50_us"] - off["rand_4k_qd1"]["p50_us"]
    print("\nratios (to nbdkit; last rows: control on / control off)")
    for name, r in ratios.items():
        print(f"{name:<22} 1M seq {r['seq_1m']:5.2f}x   4k QD1 {r['rand_4k_qd1']:5.2f}x"
              f"   4k QD32 {r['rand_4k_qd32']:5.2f}x")  # fmt: skip
    print(f"latency the scheduler adds at QD1 (p50): {added_p50:.0f} µs")
    print("\nserver CPU per request, µs (lowest of the rounds; other load hardly moves it)")
    cpu = {name: {k: min(x[k]["cpu_us"] for x in runs[name]) for k in r}
           for name, r in results.items()}  # fmt: skip
    for name, c in cpu.items():
        print(f"{name:<22} 1M seq {c['seq_1m']:7.1f}   4k QD1 {c['rand_4k_qd1']:6.2f}"
              f"   4k QD32 {c['rand_4k_qd32']:6.2f}")  # fmt: skip
    for label, tree in pairs.items():
        cpu_on, cpu_off = cpu[f"{tree}, control on"], cpu[f"{tree}, control off"]
        shown = label.replace("on / off", "off / on")
        c = cpu[shown] = {k: cpu_off[k] / cpu_on[k] for k in cpu_on}
        print(f"{shown:<22} 1M seq {c['seq_1m']:6.2f}x   4k QD1 {c['rand_4k_qd1']:5.2f}x"
              f"   4k QD32 {c['rand_4k_qd32']:5.2f}x")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": sys.version.split()[0], "loop": args.loop, "seconds": args.seconds,
            "size_mib": args.size_mib, "repeat": args.repeat}  # fmt: skip
    out.write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios,
                               "added_p50_us": added_p50, "cpu_us_per_request": cpu},
                              indent=2) + "\n")  # fmt: skip
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
