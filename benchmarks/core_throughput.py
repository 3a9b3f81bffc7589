"""Requests per second through the scheduling core alone, at 2 ... 10 000 backlogged groups.

No simulator: a closed loop keeps every group backlogged (more requests outstanding than the
device group may have in flight), a FIFO "device" completes the oldest issued request, and the
submitter of each completed request submits the next one at once. The engine is driven through
``ioband.core.driver`` as the daemon drives it, one batch per jiffy (64 completions, as one
wake-up of the I/O pool delivers them). Each request costs one ``submit`` and one ``complete``
plus its share of conductor work and of the batch's pump. Prints requests/s, µs per
request and the cost ratio to 2 groups, and writes the results to a JSON file.

Usage: python benchmarks/core_throughput.py [--requests N] [--policy weight] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import deque
from pathlib import Path

from ioband.core.driver import Driver
from ioband.core.engine import Engine
from ioband.core.request import Request, Submitter

GROUP_COUNTS = (2, 64, 1024, 10_000)
OUTSTANDING = 400  # requests in the system: > 2 x io_limit (192), so every group stays backlogged


def build(groups: int, policy: str, linear: bool) -> tuple[Engine, object, list[Submitter]]:
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
        "scan": "linear" if linear else "indexed",
        "requests": requests,
        "seconds": elapsed,
        "requests_per_s": requests / elapsed,
        "us_per_request": elapsed / requests * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300_000)
    ap.add_argument(
        "--policy", default="weight", choices=["weight", "weight-iosize", "range-bw", "mclock"]
    )
    ap.add_argument("--groups", type=int, nargs="*", default=list(GROUP_COUNTS))
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs (noise)")
    ap.add_argument("--linear", action="store_true", help="also run the original O(n) scan")
    ap.add_argument("--out", default="benchmarks/results/core_throughput.json")
    args = ap.parse_args(argv)
    rows = []
    for groups in args.groups:
        runs = [run(groups, args.requests, args.policy) for _ in range(args.repeat)]
        rows.append(min(runs, key=lambda r: r["seconds"]))
        if args.linear:
            rows.append(run(groups, max(2000, args.requests // max(1, groups // 64)),
                            args.policy, linear=True))  # fmt: skip
    base = {r["scan"]: r["us_per_request"] for r in rows if r["groups"] == args.groups[0]}
    print(f"core throughput, policy {args.policy}, Python {platform.python_version()}")
    print(f"{'groups':>7} {'scan':>8} {'requests/s':>12} {'µs/request':>11} {'cost vs 2':>10}")
    for r in rows:
        r["cost_ratio"] = r["us_per_request"] / base[r["scan"]]
        print(f"{r['groups']:>7} {r['scan']:>8} {r['requests_per_s']:>12,.0f}"
              f" {r['us_per_request']:>11.2f} {r['cost_ratio']:>9.2f}x")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": sys.version.split()[0], "machine": platform.machine()}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
