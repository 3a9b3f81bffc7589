"""Random workloads through the scheduling core, every decision written down.

Run as ``python -m tests.core_trace`` it prints, as JSON, which core it ran (``ioband.COMPILED``)
and one trace per workload; ``tests/test_compiled_core.py`` runs it once on the compiled core and
once with ``IOBAND_PURE_PYTHON=1`` and compares the two, decision by decision.

A trace records, after every call into the engine, the serial numbers of the requests it issued
(in order), of those it admitted, whether ``submit`` issued at once, every refused message's
error text, the next timer deadline, and at the end the table and both status formats. Workloads
vary the policy, the number of groups, io_throttle/io_limit (adaptive too), request sizes and
classes, urgent and kernel-thread submitters, messages (weights, bands, attach/detach, policy
switches, io_limit), suspend/resume and the passage of time.
"""

from __future__ import annotations

import json
import random
import sys

import ioband
from ioband.core.engine import Engine
from ioband.core.request import Request, Submitter
from ioband.errors import IobandError

POLICIES = ("weight", "weight-iosize", "range-bw", "mclock", "default")


def group_value(policy: str, rng: random.Random) -> str:
    if policy == "range-bw":
        lo = rng.randint(0, 400)
        return f"{lo}:{lo + rng.randint(0, 600) if rng.random() < 0.6 else 0}"
    if policy == "mclock":
        return f"{rng.choice([0, 0, 50, 300])}:{rng.randint(1, 100)}:{rng.choice([0, 0, 900])}"
    return str(rng.randint(1, 100))


def messages(policy: str, groups: int, rng: random.Random) -> list[str]:
    gid = rng.randrange(1, groups)
    common = [f"attach {groups + 5}", f"detach {gid}", "io_limit 0", "io_limit 6", "reset"]
    if policy == "range-bw":
        own = [f"range-bw {gid}:{group_value(policy, rng)}", "min-bw 30", "max-bw 0"]
    elif policy == "mclock":
        own = [f"weight {gid}:{rng.randint(1, 99)}"]
    else:
        own = [f"weight {gid}:{rng.randint(1, 99)}", "token 40", "carryover 3", "policy range-bw"]
    return [*own, *common, "bogus 1", f"weight {groups + 99}:5"]


def trace(policy: str, groups: int, seed: int, steps: int = 1500) -> dict[str, object]:
    rng = random.Random(seed)
    engine = Engine(seed=seed)
    specs = " ".join(f"{i}:{group_value(policy, rng)}" for i in range(1, groups))
    throttle, limit = rng.choice([0, 4, 16]), rng.choice([0, 8, 32])
    base = "iops" if policy == "mclock" else "0"
    head = group_value(policy, rng)
    table = f"0 100 ioband s 1 {throttle} {limit} user {policy} {base} :{head} {specs}"
    dev = engine.create("x", table)
    serial = 0
    inflight: list[Request] = []
    log: list[object] = []
    now = 0

    def collect(tag: str, extra: object = None) -> None:
        issued = engine.take_issued()
        inflight.extend(issued)
        admitted = engine.take_admitted()
        log.append(
            (tag, extra, [r.tag for r in issued], [r.tag for r in admitted],
             engine.next_deadline())
        )  # fmt: skip

    def submit(owner: Submitter) -> None:
        size = 512 * rng.choice([1, 8, 8, 8, 128])
        kind = rng.random()
        nonlocal serial
        serial += 1
        write, sync = rng.random() < 0.5, rng.random() < 0.7
        req = Request(write, 0, size, owner, sync=sync, urgent=kind < 0.03, tag=serial)
        now_issued = engine.submit(dev, req, now)
        if now_issued:
            inflight.append(req)
        collect("submit", now_issued)

    owners = [Submitter(pid=i, uid=i, kthread=rng.random() < 0.05) for i in range(groups + 6)]
    for owner in owners:
        for _ in range(rng.randint(1, 5)):
            submit(owner)
    texts = messages(policy, groups, rng)
    for step in range(steps):
        r = rng.random()
        if r < 0.02:
            text = rng.choice(texts)
            try:
                engine.message("x", text, now)
                collect("message", text)
            except IobandError as err:
                collect("refused", str(err))
        elif r < 0.025:
            engine.suspend("x", now)
            collect("suspend")
            engine.resume("x", now + 1)
            collect("resume")
        elif r < 0.1 or not inflight:
            now += rng.randint(1, 30)
            engine.advance(now)
            collect("advance", now)
        else:
            req = inflight.pop(rng.randrange(min(len(inflight), 8)))
            engine.complete(req, now)
            collect("complete", req.tag)
        if rng.random() < 0.6:
            submit(rng.choice(owners))
        if step % 500 == 499:
            log.append(engine.status("x", "diskstats"))
    while inflight:  # drain: every request leaves
        engine.complete(inflight.pop(0), now)
        collect("drain")
        if not inflight and engine.next_deadline() is not None:
            now = max(now + 1, engine.next_deadline() or 0)
            engine.advance(now)
            collect("advance", now)
    log.append((engine.table("x"), engine.status("x"), engine.status("x", "diskstats")))
    return {"workload": [policy, groups, seed], "trace": log}


def workloads() -> list[tuple[str, int, int]]:
    return [
        (policy, groups, seed)
        for policy in POLICIES
        for groups, seed in ((2, 1), (3, 2), (7, 3), (40, 4), (300, 5))
    ]


def main() -> int:
    out = {
        "compiled": ioband.COMPILED,
        "build": ioband.CORE_BUILD,
        "traces": [trace(*w) for w in workloads()],
    }
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
