"""Requests per second through the scheduling core alone, compiled and pure Python side by side.

No simulator: a closed loop keeps every group backlogged (more requests outstanding than the
device group may have in flight), a FIFO "device" completes the oldest issued request, and the
submitter of each completed request submits the next one at once. The engine is driven through
``ioband.core.driver`` as the daemon drives it, one batch per jiffy (64 completions, as one
wake-up of the I/O pool delivers them). Each request costs one ``submit`` and one ``complete``
plus its share of conductor work and of the batch's pump. Prints requests/s, µs per
request and the cost ratio to 2 groups, and writes the results to a JSON file.

The core runs compiled (mypyc, built by the install step) and as the pure-Python reference
(``IOBAND_PURE_PYTHON=1``), each in its own interpreter, alternating run by run so that both
see the same load; the best of ``--repeat`` runs is kept. Prints requests/s, µs per request,
the cost ratio to the first group count and the compiled/pure speed-up per policy, with the
load average at the start and the end, and writes it all to a JSON file. Every run's µs per
request is kept beside the best (``us_runs``; the spread is printed).

``--baseline-src DIR`` also runs another ioband tree (its ``src``, e.g. from ``git archive``, its
core built there with ``scripts/build_core.py``) in the same alternation: rows of that tree are
marked ``"tree": "baseline"``, so before and after are measured side by side under one load.

Usage: python benchmarks/core_throughput.py [--policy weight ...] [--groups 2 10000]
       [--core both|compiled|pure] [--requests N] [--repeat N] [--out FILE]
       [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

POLICIES = ("weight", "weight-iosize", "range-bw", "mclock")
GROUP_COUNTS = (2, 64, 1024, 10_000)
OUTSTANDING = 400  # requests in the system: > 2 x io_limit (192), so every group stays backlogged
CORES = {"compiled": "", "pure": "1"}  # the value of IOBAND_PURE_PYTHON for each


def build(groups: int, policy: str, linear: bool) -> tuple:  # the core is imported late
    from ioband.core.engine import Engine
    from ioband.core.request import Submitter

    engine = Engine(linear_scan=linear)
    ids = range(1, groups)  # the default group is the first one
    if policy == "range-bw":
        specs = " ".join(f"{i}:{100 + i % 7}:0" for i in ids)
        line = f"0 2097152 ioband bench 1 0 0 user range-bw 0 :100:0 {specs}"
    elif policy == "mclock":  # weights only: reservations and limits would idle the loop
        specs = " ".join(f"{i}:0:{10 + i % 90}:0" for i in ids)
        line = f"0 2097152 ioband bench 1 0 0 user mclock iops :0:50:0 {specs}"
    else:
        specs = " ".join(f"{i}:{10 + i % 90}" for i in ids)
        line = f"0 2097152 ioband bench 1 0 0 user {policy} 0 :50 {specs}"
    dev = engine.create("bench", line)
    owners = [Submitter(pid=i, uid=i) for i in range(groups)]  # uid 0 -> default group
    return engine, dev, owners


def run(groups: int, requests: int, policy: str = "weight", linear: bool = False) -> dict:
    """One measurement in this interpreter (whichever core it imported)."""
    import ioband
    from ioband.core.driver import Driver
    from ioband.core.request import Request

    engine, dev, owners = build(groups, policy, linear)
    per_group = max(1, -(-OUTSTANDING // groups))
    inflight: deque[Request] = deque()
    driver = Driver(engine, inflight.append)  # the "device": issued requests queue up in FIFO
    submit = driver.submit
    complete = driver.complete
    for owner in owners:
        for k in range(per_group):
            submit(dev, Request(k & 1 == 0, 4096 * k, 4096, owner, sync=True))
    done = 0
    start = time.process_time()  # CPU time of this process: robust to other load
    while done < requests:
        with driver:  # one jiffy: 64 completions and the requests their submitters send
            for _ in range(min(64, requests - done)):
                if not inflight:
                    break
                req = inflight.popleft()
                complete(req)
                done += 1
                submit(dev, Request(req.dir == 0, req.offset, 4096, req.owner, sync=True))
        driver.now += 1
        if not inflight:
            driver.now = max(driver.now, engine.next_deadline() or 0)
            driver.advance()
    elapsed = time.process_time() - start
    return {
        "groups": groups,
        "policy": policy,
        "core": "compiled" if ioband.COMPILED else "pure",
        "scan": "linear" if linear else "indexed",
        "requests": requests,
        "seconds": elapsed,
        "requests_per_s": requests / elapsed,
        "us_per_request": elapsed / requests * 1e6,
    }


def worker(args: argparse.Namespace) -> int:
    """A child: every (policy, groups) measurement once, as JSON lines on stdout."""
    for policy in args.policy:
        for groups in args.groups:
            row = run(groups, args.requests, policy)
            print(json.dumps(row), flush=True)
            if args.linear:
                n = max(2000, args.requests // max(1, groups // 64))
                print(json.dumps(run(groups, n, policy, linear=True)), flush=True)
    return 0


def measure(core: str, args: argparse.Namespace, src: str | None = None) -> list[dict]:
    env = {**os.environ, "IOBAND_PURE_PYTHON": CORES[core]}
    if src is not None:  # another tree's ioband first on the path
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, __file__, "--worker", "--requests", str(args.requests)]
    cmd += ["--policy", *args.policy, "--groups", *map(str, args.groups)]
    cmd += ["--linear"] if args.linear else []
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    if any(r["core"] != core for r in rows):
        import ioband._build as build_info

        sys.exit(f"asked for the {core} core, got {rows[0]['core']}: {build_info.decide()[1]}")
    for r in rows:
        r["tree"] = "this" if src is None else "baseline"
    return rows


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--policy", nargs="+", default=list(POLICIES), choices=POLICIES)
    ap.add_argument("--groups", type=int, nargs="+", default=list(GROUP_COUNTS))
    ap.add_argument("--core", choices=["both", *CORES], default="both")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs (noise)")
    ap.add_argument("--linear", action="store_true", help="also run the original O(n) scan")
    ap.add_argument("--out", default="benchmarks/results/core_throughput.json")
    ap.add_argument("--baseline-src", metavar="DIR", help="also run the ioband tree DIR (src)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    cores = list(CORES) if args.core == "both" else [args.core]
    load_start = load()
    trees: list[str | None] = [None]
    if args.baseline_src:
        trees.append(os.path.abspath(args.baseline_src))
    best: dict[tuple[str, str, str, str, int], dict] = {}
    runs: dict[tuple[str, str, str, str, int], list[float]] = {}
    for _ in range(args.repeat):
        for src in trees:  # alternating: every tree and core sees the same load
            for core in cores:
                for r in measure(core, args, src):
                    key = (r["tree"], r["policy"], r["core"], r["scan"], r["groups"])
                    runs.setdefault(key, []).append(r["us_per_request"])
                    if key not in best or r["seconds"] < best[key]["seconds"]:
                        best[key] = r
    load_end = load()
    rows = list(best.values())
    first = args.groups[0]
    for (tree, policy, core, scan, _groups), r in best.items():
        r["us_runs"] = [round(us, 3) for us in runs[(tree, policy, core, scan, _groups)]]
        base = best[(tree, policy, core, scan, first)]
        r["cost_ratio"] = r["us_per_request"] / base["us_per_request"]
        pure = best.get((tree, policy, "pure", scan, r["groups"]))
        if core == "compiled" and pure is not None:
            r["speedup_vs_pure"] = pure["us_per_request"] / r["us_per_request"]
    rows.sort(
        key=lambda r: (r["tree"] != "baseline", POLICIES.index(r["policy"]), r["scan"],
                       r["groups"], r["core"])
    )  # fmt: skip
    print(f"core throughput, Python {platform.python_version()}, load {load_start} -> {load_end}")
    ratio_head = f"cost vs {first}"
    print(f"{'tree':>8} {'policy':>13} {'groups':>7} {'core':>8} {'scan':>8} {'requests/s':>11}"
          f" {'µs/request':>11} {'worst':>7} {ratio_head:>10} {'vs pure':>8}")  # fmt: skip
    for r in rows:
        speedup = f"{r['speedup_vs_pure']:.2f}x" if "speedup_vs_pure" in r else ""
        print(f"{r['tree']:>8} {r['policy']:>13} {r['groups']:>7} {r['core']:>8} {r['scan']:>8}"
              f" {r['requests_per_s']:>11,.0f} {r['us_per_request']:>11.2f}"
              f" {max(r['us_runs']):>7.2f} {r['cost_ratio']:>9.2f}x {speedup:>8}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": load_end,
        "requests": args.requests,
        "repeat": args.repeat,
        "baseline_src": args.baseline_src,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
