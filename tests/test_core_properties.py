"""Property tests of the engine: no request is lost or issued twice, in-flight stays within
io_limit, counters stay consistent, and refused commands change nothing, across random
sequences of submissions, completions and reconfiguration."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ioband.core.engine import Engine
from ioband.core.request import ASYNC, SYNC, Request, Submitter
from ioband.errors import IobandError
from tests.core_driver import Driver

UIDS = (0, 1000, 2000, 3000)

submit_op = st.tuples(
    st.just("submit"),
    st.integers(0, 1),  # device
    st.sampled_from(UIDS),
    st.booleans(),  # write
    st.booleans(),  # sync
    st.sampled_from([512, 4096, 4096, 65536]),
    st.sampled_from(["user", "user", "user", "kthread", "urgent"]),
)
complete_op = st.tuples(st.just("complete"), st.integers(0, 50))
tick_op = st.tuples(st.just("tick"), st.integers(1, 300))
message_op = st.tuples(
    st.just("message"),
    st.integers(0, 1),
    st.sampled_from(
        [
            "attach 1000",
            "attach 2000",
            "attach 3000",
            "detach 1000",
            "detach 2000",
            "weight 1000:30",
            "weight 2000:5",
            "weight 77",
            "weight :1",
            "weight 0",
            "policy weight",
            "policy weight-iosize",
            "policy range-bw",
            "policy default",
            "io_limit 8",
            "io_limit 16",
            "io_limit 0",
            "io_limit 2",
            "io_throttle 2",
            "io_throttle 12",
            "token 40",
            "token 0",
            "carryover 3",
            "range-bw 1000:300:600",
            "range-bw :100:0",
            "range-bw -1:900:1000",
            "min-bw 50",
            "max-bw 0",
            "max-bw 10",
            "type user",
            "type none",
            "reset",
            "bogus 1",
            "weight",
            "attach -1",
            "detach x",
        ]
    ),
)
suspend_op = st.tuples(st.sampled_from(["suspend", "resume"]), st.integers(0, 1))
ops = st.lists(
    st.one_of(submit_op, submit_op, complete_op, complete_op, tick_op, message_op, suspend_op),
    max_size=120,
)


def snapshot(engine: Engine) -> tuple:
    out = []
    for name in sorted(engine.devices):
        dev = engine.devices[name]
        dp = dev.dp
        out.append((engine.table(name), engine.status(name), engine.status(name, "diskstats")))
        out.append(tuple((g.id, g.weight, g.limit, getattr(g, "min_bw", None)) for g in dp.groups))
        out.append((dp.io_limit, dp.io_throttle, dp.policy_name, dev.type_name))
        policy = dp.policy
        out.append(tuple(getattr(policy, k, None) for k in ("token_bucket", "carryover")))
    return tuple(out)


def check_counters(engine: Engine, driver: Driver, before: list[int]) -> list[int]:
    """Counters match the requests; non-urgent in-flight per class stays within the window."""
    counts = [0, 0]
    for dp in engine.device_groups.values():
        for c in (ASYNC, SYNC):
            held = sum(g.blocked[c] for g in dp.groups) + sum(r.sync == c for r in dp.urgent)
            assert dp.blocked[c] == held
        for g in dp.groups:
            queued = [*g.prio_queue, *g.queue]
            assert g.blocked[0] == sum(r.sync == 0 for r in queued)
            assert g.blocked[1] == sum(r.sync == 1 for r in queued)
            assert g.prio_blocked == len(g.prio_queue)
            assert all(r.state == "held" for r in queued)
    dp = next(iter(engine.device_groups.values()))
    assert engine.stalls == 0
    policy = dp.policy
    if hasattr(policy, "_dirty"):  # the weight index: a dirty flag means a pending re-key
        assert {id(g) for g in dp.groups if g.dirty} <= {id(g) for g in policy._dirty}
    for c in (ASYNC, SYNC):
        mine = [r for r in driver.inflight if r.sync == c]
        assert dp.issued[c] == len(mine)
        counts[c] = sum(not r.urgent for r in mine)
        # Above the window (io_limit, or less when adaptive: io_limit 0) only what was in flight
        # before a lower io_limit was set or the adaptive window shrank, draining.
        assert counts[c] <= dp.window or counts[c] <= before[c]
    return counts


@given(ops, st.booleans())
def test_nothing_lost_nothing_twice_limits_hold(script, linear):
    engine = Engine(seed=7, linear_scan=linear)
    driver = Driver(engine)
    devs = [
        engine.create("a", "0 1000 ioband sda1 share 4 8 user weight 0 :40 1000:20"),
        engine.create("b", "0 1000 ioband sda2 share 4 8 user weight 0 :10"),
    ]
    counts = [0, 0]
    for op in script:
        kind = op[0]
        if kind == "submit":
            _, d, uid, write, sync, size, who = op
            owner = Submitter(pid=uid + d, uid=uid, kthread=who == "kthread")
            driver.submit(
                devs[d], Request(write, 0, size, owner, sync=sync, urgent=who == "urgent")
            )
        elif kind == "complete" and driver.inflight:
            driver.complete(op[1] % len(driver.inflight))
        elif kind == "tick":
            driver.tick(op[1])
        elif kind == "message":
            name = devs[op[1]].name
            before = snapshot(engine)
            try:
                driver.call(engine.message, name, op[2])
            except IobandError:
                assert snapshot(engine) == before, f"refused {op[2]!r} changed state"
        elif kind in ("suspend", "resume"):
            driver.call(getattr(engine, kind), devs[op[1]].name)
        counts = check_counters(engine, driver, counts)
    for dev in devs:
        driver.call(engine.resume, dev.name)
    driver.drain()
    for dp in engine.device_groups.values():
        assert dp.issued == [0, 0] and dp.blocked == [0, 0]
        assert all(g.active == 0 for g in dp.groups), "a group still counts requests as busy"


@given(ops)
def test_removal_flushes_everything(script):
    engine = Engine(seed=3)
    driver = Driver(engine)
    devs = [
        engine.create("a", "0 1000 ioband sda1 share 4 8 user range-bw 0 :100:0 1000:50:200"),
        engine.create("b", "0 1000 ioband sda2 share 4 8 user range-bw 0 :0:0"),
    ]
    for op in script:
        if op[0] == "submit":
            _, d, uid, write, sync, size, who = op
            owner = Submitter(pid=uid, uid=uid, kthread=who == "kthread")
            driver.submit(
                devs[d], Request(write, 0, size, owner, sync=sync, urgent=who == "urgent")
            )
        elif op[0] == "complete" and driver.inflight:
            driver.complete(op[1] % len(driver.inflight))
        elif op[0] == "tick":
            driver.tick(op[1])
        elif op[0] in ("suspend", "resume"):
            driver.call(getattr(engine, op[0]), devs[op[1]].name)
    driver.call(engine.remove, "a")
    driver.call(engine.remove, "b")
    assert not engine.device_groups
    driver.drain()


def band(rng) -> str:
    lo = rng.randint(0, 300)
    return f"{lo}:{lo + rng.randint(1, 500) if rng.random() < 0.5 else 0}"


def trace(linear: bool, groups: int, policy: str, seed: int) -> tuple:
    """A deterministic random run; the sequence of completed requests and the final status."""
    import random

    rng = random.Random(seed)
    engine = Engine(linear_scan=linear, seed=seed)
    if policy == "range-bw":  # min:max KB/s, some without a max
        specs = " ".join(f"{i}:{band(rng)}" for i in range(1, groups))
        head = ":50:0"
    else:
        specs = " ".join(f"{i}:{rng.randint(1, 100)}" for i in range(1, groups))
        head = ":50"
    throttle, limit = rng.choice([0, 4, 16]), rng.choice([0, 8, 32])
    dev = engine.create("x", f"0 100 ioband s 1 {throttle} {limit} user {policy} 0 {head} {specs}")
    driver = Driver(engine)
    owners = [Submitter(pid=i, uid=i) for i in range(groups)]
    for owner in owners:
        for _ in range(rng.randint(1, 6)):
            size = 4096 * rng.choice([1, 1, 16])
            driver.submit(dev, Request(rng.random() < 0.5, 0, size, owner, sync=rng.random() < 0.7))
    log = []
    for step in range(4000):
        if step == 2000:
            gid = rng.randrange(1, groups)
            value = band(rng) if policy == "range-bw" else rng.randint(1, 99)
            driver.call(
                engine.message,
                "x",
                f"{'range-bw' if policy == 'range-bw' else 'weight'} {gid}:{value}",
            )
        if not driver.inflight:
            driver.tick(1)
            continue
        if rng.random() < 0.1:
            driver.now += 1
        req = driver.complete(rng.randrange(min(len(driver.inflight), 8)))
        log.append((req.owner.uid, req.dir, req.sync))
        size = 4096 * rng.choice([1, 1, 16])
        driver.submit(dev, Request(rng.random() < 0.5, 0, size, req.owner, sync=rng.random() < 0.7))
    return log, engine.status("x"), engine.table("x")


@given(st.integers(0, 10_000), st.sampled_from([2, 3, 7, 40]),
       st.sampled_from(["weight", "weight-iosize", "range-bw"]))  # fmt: skip
def test_indexed_choice_equals_the_original_scan(seed, groups, policy):
    """The O(log n) best-group index makes exactly the decisions of the original O(n) scan."""
    assert trace(False, groups, policy, seed) == trace(True, groups, policy, seed)
