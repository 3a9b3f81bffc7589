"""The sans-I/O parts of cluster-wide device groups: the coordinator (records, shares, dmClock
charges, freshness, fallback), the shared-backend window (PARDA), the policy hooks through the
real engine, the ``[cluster]`` configuration, and the cluster simulator."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ioband.cluster.coordinator import (
    EXPIRY_INTERVALS,
    TRIM_RANGE,
    Coordinator,
    Exchange,
    GroupService,
    Record,
    decode_record,
    encode_record,
)
from ioband.cluster.sim import ClusterRun, simulate, split
from ioband.cluster.window import MIN_DUTY, SharedBackendWindow
from ioband.control.config import ConfigError, load_config
from ioband.core.engine import Engine
from ioband.core.request import ISSUED, Request, Submitter
from tests.core_driver import Driver

IV = 0.05


def rec(seq: int, groups: dict[str, tuple[float, bool, float]], total: float = 20.0) -> str:
    """A peer's record: groups as name -> (weight, active, cost)."""
    services = {k: GroupService(w, a, int(c), c) for k, (w, a, c) in groups.items()}
    return encode_record(Record(seq, total, 1e9, services))


def local(groups: dict[str, tuple[float, bool, float]]) -> dict[str, GroupService]:
    return {k: GroupService(w, a, int(c), c) for k, (w, a, c) in groups.items()}


# -- records -------------------------------------------------------------------------------------


def test_record_round_trip():
    r = Record(7, 12.5, 40.0, local({"1000": (1, True, 5), "/m.slice": (2, False, 0)}), 0.5)
    assert decode_record(encode_record(r)) == r
    with_rho = Record(8, 1.0, 2.0, {"7": GroupService(1.0, True, 9, 9.0, 4.0)})
    assert decode_record(encode_record(with_rho)) == with_rho


def test_a_record_of_an_older_peer_without_reserved_still_parses():
    text = '{"seq":1,"w":1,"m":1,"s":1,"c":1,"l":0,"x":0,"g":{"a":[1,1,3,3]}}'
    assert decode_record(text).groups["a"] == GroupService(1.0, True, 3, 3.0, 0.0)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("not json", "record: not JSON"),
        ("[1]", "record: must be a JSON object"),
        ('{"w":1,"m":1,"s":1,"c":1,"l":0,"x":0,"g":{}}', "record.seq"),
        ('{"seq":-1,"w":1,"m":1,"s":1,"c":1,"l":0,"x":0,"g":{}}', "record.seq"),
        ('{"seq":true,"w":1,"m":1,"s":1,"c":1,"l":0,"x":0,"g":{}}', "record.seq"),
        ('{"seq":1,"m":1,"s":1,"c":1,"l":0,"x":0,"g":{}}', "record.w"),
        ('{"seq":1,"w":"9","m":1,"s":1,"c":1,"l":0,"x":0,"g":{}}', "record.w"),
        ('{"seq":1,"w":1,"m":-1,"s":1,"c":1,"l":0,"x":0,"g":{}}', "record.m"),
        ('{"seq":1,"w":1,"m":1,"s":1,"c":1,"l":0,"x":0,"g":[]}', "record.g"),
        ('{"seq":1,"w":1,"m":1,"s":1,"c":1,"l":0,"x":0,"g":{"a":[1,1,1]}}', "record.g['a']"),
        ('{"seq":1,"w":1,"m":1,"s":1,"c":1,"l":0,"x":0,"g":{"a":[1,2,1,1]}}', "active 0 or 1"),
        ('{"seq":1,"w":1,"m":1,"s":1,"c":1,"l":0,"x":0,"g":{"a":[1,1,-1,1]}}', "must be >= 0"),
        ('{"seq":1,"w":1,"m":1,"s":1,"c":1,"l":0,"x":0,"g":{"a":[1,1,"x",1]}}', "numbers"),
        ('{"seq":1,"w":1,"m":1,"s":1,"c":1,"l":0,"x":0,"g":{"a":[1,1,1,1,-2]}}', "reserved"),
        ('{"seq":1,"w":1,"m":1,"s":1,"c":1,"l":0,"x":0,"g":{"a":[1,1,1,1,1,1]}}', "record.g['a']"),
        (b"\xff\xfe", "record: not JSON"),
    ],
)
def test_malformed_records_name_the_field(text, field):
    with pytest.raises(ValueError) as info:
        decode_record(text)
    assert field in str(info.value)


@given(st.text(max_size=60) | st.binary(max_size=60))
def test_fuzzed_records_decode_or_raise_value_error(text):
    with contextlib.suppress(ValueError):
        decode_record(text)


def test_a_malformed_peer_is_skipped_and_counted_the_others_still_count():
    c = Coordinator("h1", IV)
    c.record(local({"A": (1, True, 0)}), 20, 16)
    ex = c.absorb(0.0, {"h2": "garbage", "h3": rec(1, {"B": (1, True, 0)})})
    assert c.malformed == 1 and ex.peers == 1
    assert ex.share == pytest.approx(0.5)


# -- shares and charges ------------------------------------------------------------------------


def test_a_tenant_on_two_hosts_carries_half_its_weight_on_each():
    """A (1) alone on h1, B (1) on h2 and h3: h1 carries half the cluster's active weight."""
    h1 = Coordinator("h1", IV)
    h1.record(local({"A": (1, True, 0), "B": (1, False, 0)}), 20, 16)
    peers = {"h2": rec(1, {"B": (1, True, 0)}), "h3": rec(1, {"B": (1, True, 0)})}
    assert h1.absorb(0.0, peers).share == pytest.approx(0.5)
    h2 = Coordinator("h2", IV)
    h2.record(local({"B": (1, True, 0)}), 20, 16)
    others = {"h1": rec(1, {"A": (1, True, 0)}), "h3": rec(1, {"B": (1, True, 0)})}
    assert h2.absorb(0.0, others).share == pytest.approx(0.25)
    h1.record(local({"A": (2, True, 0)}), 20, 16)  # weights 2:1 -> 2 / (2 + 1/2 + 1/2)
    assert h1.absorb(0.01, {**peers, "h2": rec(2, {"B": (1, True, 0)})}).share == pytest.approx(
        2 / 3
    )


def test_remote_service_is_charged_after_a_baseline_and_only_to_active_local_groups():
    c = Coordinator("h1", IV)
    c.record(local({"B": (1, True, 100), "C": (1, False, 0)}), 20, 16)
    ex = c.absorb(0.0, {"h2": rec(5, {"B": (1, True, 1000), "C": (1, True, 50)})})
    assert ex.charges == {}  # the first record read is a baseline: its past is not charged
    ex = c.absorb(0.05, {"h2": rec(6, {"B": (1, True, 1030), "C": (1, True, 80)})})
    assert ex.charges == {"B": 30}  # C is idle here: nothing to charge
    ex = c.absorb(0.10, {"h2": rec(6, {"B": (1, True, 1030), "C": (1, True, 80)})})
    assert ex.charges == {}  # unchanged record: nothing new
    ex = c.absorb(0.15, {"h2": rec(1, {"B": (1, True, 5)})})
    assert ex.charges == {}  # the peer restarted (seq went back): a new baseline


def test_a_peer_that_stops_updating_stops_counting_and_is_purged_later():
    c = Coordinator("h1", IV)
    c.record(local({"A": (1, True, 0)}), 20, 16)
    frozen = rec(1, {"B": (3, True, 0)})
    assert c.absorb(0.0, {"h2": frozen}).share == pytest.approx(0.25)
    t = (EXPIRY_INTERVALS + 1) * IV
    ex = c.absorb(t, {"h2": frozen})
    assert ex.peers == 0 and ex.share == 1.0
    ex = c.absorb(100.0, {"h2": frozen})
    assert ex.purge == ["h2"] or "h2" not in c.peers


def test_fallback_at_once_when_refused_after_timeouts_only_when_stale_logged_once():
    c = Coordinator("h1", IV)
    c.record(local({"A": (1, True, 0)}), 20, 16)
    c.absorb(0.0, {"h2": rec(1, {"B": (1, True, 0)})})
    assert c.failed(0.05) is None  # one lost reply: keep the cluster's view
    ex = c.failed(0.2)  # 2.5 intervals without a good exchange
    assert ex is not None and ex.fallback and ex.share == 1.0
    assert c.failed(0.25) is None  # said once
    c2 = Coordinator("h1", IV)
    c2.record(local({"A": (1, True, 0)}), 20, 16)
    c2.absorb(0.0, {"h2": rec(1, {"B": (1, True, 0)})})
    ex = c2.failed(0.01, refused=True)
    assert ex is not None and ex.fallback
    # Back: peers are new baselines, nothing charged for the gap.
    ex = c2.absorb(1.0, {"h2": rec(9, {"B": (1, True, 999)})})
    assert not ex.fallback and ex.charges == {}


def test_cluster_window_is_the_mean_and_capped_by_the_least_cap():
    c = Coordinator("h1", IV)
    c.record(local({"A": (1, True, 0)}), 10.0, 100)
    r2 = encode_record(Record(1, 30.0, 25.0, local({"B": (1, True, 0)})))
    ex = c.absorb(0.0, {"h2": r2})
    assert ex.total == pytest.approx(20.0) and ex.cap == pytest.approx(25.0)
    # This host's own cap counts too: 16 in flight at most, at a share of 1/2 -> 32.
    c.record(local({"A": (1, True, 0)}), 10.0, 16)
    ex = c.absorb(0.05, {"h2": encode_record(Record(2, 30.0, 250.0, local({"B": (1, True, 0)})))})
    assert ex.cap == pytest.approx(32.0)


def test_a_slower_host_gets_a_proportionally_wider_window():
    c = Coordinator("h1", IV)
    peer = {"B": (1, True, 0)}
    c.record(local({"A": (1, True, 0)}), 20, 16, 0.030, 500)
    c.absorb(0.0, {"h2": encode_record(Record(1, 20, 1e9, local(peer), 0.5, 1, 0.010, 500))})
    for i in range(1, 40):
        t = i * IV
        c.record(local({"A": (1, True, 0)}), 20, 16, 0.030, 500)
        text = encode_record(Record(i + 1, 20, 1e9, local(peer), 0.5, 1, 0.010, 500))
        ex = c.absorb(t, {"h2": text})
    assert ex.correction == pytest.approx(1.5, rel=0.02)  # 30 ms over the mean of 20 ms

    assert ex.latency == pytest.approx(0.020)  # the cluster's: throughput-weighted


def trimmed(got: float, backlogged: bool, seconds: float = 4.0) -> Exchange:
    """Host h1 (tenant A, weight 2: two thirds of the weight) against h2 (B, weight 1), both
    measuring the same latency; h1 completes ``got`` of the two hosts' I/Os."""
    c = Coordinator("h1", IV)
    peer = {"B": (1, True, 0)}
    ex = None
    for i in range(int(seconds / IV) + 1):
        c.record(local({"A": (2, True, 0)}), 20, 256, 0.010, 1000 * got)
        text = encode_record(Record(i + 1, 20, 1e9, local(peer), 1 / 3, 1, 0.010,
                                    1000 * (1 - got)))  # fmt: skip
        ex = c.absorb(i * IV, {"h2": text}, backlogged)
    assert ex is not None
    return ex


def test_the_service_trim_moves_a_host_toward_its_share_slowly_and_within_bounds():
    """Same latencies, so the latency correction stays 1; what moves the window is the
    service the host got against its share of the weight (2/3)."""
    short = trimmed(0.5, True)  # owed 2/3, got 1/2: widen
    assert 1.0 < short.correction <= TRIM_RANGE[1]
    assert trimmed(0.5, True, seconds=0.5).correction < short.correction  # integrated
    assert trimmed(0.8, True).correction < 1.0  # got more than owed: narrow
    assert trimmed(0.68, True).correction == 1.0  # within the dead band
    assert trimmed(0.5, False).correction == 1.0  # its clients do not fill the window
    assert trimmed(0.1, True, seconds=60).correction == TRIM_RANGE[1]


def test_every_host_steps_on_the_clusters_latency_not_its_own():
    """Hosts that see different latencies (one serves its lone request at once, another's
    queue is deep) must not pull the cluster's window apart: each steps on the cluster's
    latency, which the exchange carries. On its own 10 ms a host would grow the window (at
    the target); on the cluster's 25 ms it shrinks it, as the host with 40 ms does."""
    fast, slow = SharedBackendWindow(1000, 256), SharedBackendWindow(1000, 256)
    for w in (fast, slow):
        w.adopt(40.0, 0.5, 2, latency=0.025)
    fast.step(latency=10.0, used=20, full=True)
    slow.step(latency=40.0, used=20, full=True)
    assert fast.total == slow.total < 40.0
    alone = SharedBackendWindow(1000, 256)
    alone.adopt(40.0, 0.5, 2)  # no cluster latency (local control, peers not measured yet)
    alone.step(latency=10.0, used=20, full=True)
    assert alone.total > 40.0


# -- the window --------------------------------------------------------------------------------


def test_window_grows_below_the_target_shrinks_above_and_divides_by_share():
    w = SharedBackendWindow(1000, 256)
    w.adopt(20.0, 0.5, 3)
    assert w.value == 10
    w.step(latency=2.0, used=10, full=True)  # 2 ms against 10 ms: grow
    assert w.total > 20
    big = w.total
    w.step(latency=50.0, used=10, full=True)  # 50 ms: shrink
    assert w.total < big
    unfilled = w.total
    w.step(latency=1.0, used=2, full=False)  # the clients do not fill it: no growth
    assert w.total == unfilled


def test_window_fixed_point_is_target_times_throughput_plus_beta_per_host():
    """A saturated backend of 1,500/s, three hosts: W = 10 ms x 1500 + 4 x 3 = 27."""
    w = SharedBackendWindow(1_000_000, 1024)
    w.adopt(10.0, 1 / 3, 3)
    for _ in range(200):
        w.step(latency=w.total / 1500 * 1_000_000, used=w.total, full=True)
    assert w.total == pytest.approx(27.0, rel=0.01)


def test_window_fraction_is_dithered_and_a_part_below_one_is_a_duty_cycle():
    w = SharedBackendWindow(1000, 256)
    values = []
    for _ in range(100):
        w.adopt(23.0, 0.25, 3)  # 5.75
        values.append(w.value)
    assert sum(values) / len(values) == pytest.approx(5.75, abs=0.02)
    # a part of 0.3 request: one request in flight for 3 exchanges in 10, none for the rest
    values = []
    for _ in range(100):
        w.adopt(3.0, 0.1, 3)
        values.append(w.value)
    assert set(values) == {0, 1}
    assert sum(values) / len(values) == pytest.approx(0.3, abs=0.02)
    # between exchanges (the window's own steps) a duty cycle's value stays as the exchange set it
    before = w.value
    w.step(latency=5.0, used=0.0, full=True)
    assert w.value == before
    # never stalled: a vanishing part still gets MIN_DUTY of the intervals
    values = []
    for _ in range(200):
        w.adopt(1.0, 0.0001, 3)
        values.append(w.value)
    assert sum(values) / len(values) == pytest.approx(MIN_DUTY, abs=0.01)
    longest_off = max(len(run) for run in "".join(map(str, values)).split("1"))
    assert longest_off <= round(1 / MIN_DUTY)


def test_window_total_respects_the_cap():
    w = SharedBackendWindow(1000, 256)
    w.adopt(100.0, 0.5, 3, cap=24.0)
    assert w.total == 24.0 and w.value == 12


# -- the policy hooks, through the engine ------------------------------------------------------


def held_requests(d: Driver, dev, uid: int, n: int) -> list[Request]:
    out = []
    for _ in range(n):
        r = Request(False, 0, 4096, Submitter(pid=uid, uid=uid))
        d.submit(dev, r)
        out.append(r)
    return out


@pytest.mark.parametrize(
    "table",
    [
        "0 100 ioband sda 1 0 2 user weight 0 :1 1000:100 2000:100",
        "0 100 ioband sda 1 0 2 user mclock iops :0:1:0 1000:0:100:0 2000:0:100:0",
    ],
)
def test_a_group_charged_for_remote_service_gets_less_here(table):
    """Both groups backlogged at equal weights; 1000 was served 30 requests elsewhere: of the
    next 40 issued here, 2000 gets about 30 more than 1000 (dmClock's delta)."""
    e = Engine()
    d = Driver(e)
    dev = e.create("a", table)
    a = held_requests(d, dev, 1000, 60)
    b = held_requests(d, dev, 2000, 60)
    g1000 = dev.groups[1000]
    assert dev.dp.policy.service_cost(g1000) == sum(r.state == ISSUED for r in a)
    dev.dp.policy.charge_remote(g1000, 30.0)
    issued_before = set(d.issued_ids)
    for _ in range(40):
        d.complete(0)
    got_a = sum(id(r) in d.issued_ids and id(r) not in issued_before for r in a)
    got_b = sum(id(r) in d.issued_ids and id(r) not in issued_before for r in b)
    assert got_b - got_a >= 20, (got_a, got_b)


# -- configuration -------------------------------------------------------------------------------

SOCK = {"nbd": {"unix_socket": "/tmp/x.sock"}}
DEV = {"name": "d", "table": "0 8 ioband /dev/null 1 0 0 none weight 0 :1"}


def test_cluster_section_parses_with_defaults():
    c = load_config({**SOCK, "cluster": {"redis": "redis://h:6379/0", "name": "a1"},
                     "device": [{**DEV, "cluster": True}]})  # fmt: skip
    assert c.cluster is not None and c.cluster.interval == 0.05 and c.cluster.host is None
    assert c.cluster.latency_target == 0.010 and c.devices[0].cluster
    c = load_config({**SOCK, "cluster": {"redis": "rediss://:pw@h:6380", "name": "a1",
                     "interval": 10, "host": "n7", "latency_target": 25}})  # fmt: skip
    assert c.cluster.interval == 0.010 and c.cluster.host == "n7"
    assert c.cluster.latency_target == 0.025 and not c.devices


@pytest.mark.parametrize(
    ("cluster", "device", "key", "rule"),
    [
        ({"name": "a"}, {}, "cluster.redis", "is required"),
        ({"redis": "redis://h"}, {}, "cluster.name", "is required"),
        ({"redis": "http://h", "name": "a"}, {}, "cluster.redis", "must be a URL"),
        ({"redis": "redis://", "name": "a"}, {}, "cluster.redis", "must be a URL"),
        ({"redis": 5, "name": "a"}, {}, "cluster.redis", "a Redis URL"),
        ({"redis": "redis://h", "name": "a b"}, {}, "cluster.name", "letters, digits"),
        ({"redis": "redis://h", "name": ""}, {}, "cluster.name", "letters, digits"),
        ({"redis": "redis://h", "name": "a", "interval": 1}, {}, "cluster.interval", "5..5000"),
        ({"redis": "redis://h", "name": "a", "interval": True}, {}, "cluster.interval",
         "milliseconds"),
        ({"redis": "redis://h", "name": "a", "interval": "50"}, {}, "cluster.interval",
         "milliseconds"),
        ({"redis": "redis://h", "name": "a", "host": "x/y"}, {}, "cluster.host", "letters"),
        ({"redis": "redis://h", "name": "a", "latency_target": 0}, {},
         "cluster.latency_target", "0.1..10000"),
        ({"redis": "redis://h", "name": "a", "port": 1}, {}, "cluster.port", "unknown key"),
        (None, {"cluster": True}, "device[0].cluster", "needs a [cluster] section"),
        (None, {"cluster": "yes"}, "device[0].cluster", "true or false"),
    ],
)  # fmt: skip
def test_cluster_refusals_name_key_and_rule(cluster, device, key, rule):
    data = {**SOCK, "device": [{**DEV, **device}]}
    if cluster is not None:
        data["cluster"] = cluster
    with pytest.raises(ConfigError) as info:
        load_config(data)
    assert info.value.key == key
    assert rule in str(info.value)


def test_a_password_in_a_refused_url_is_not_repeated():
    with pytest.raises(ConfigError) as info:
        load_config({**SOCK, "cluster": {"redis": "http://:hunter2@h", "name": "a"}})
    assert "hunter2" not in str(info.value)


def test_cluster_not_a_table():
    with pytest.raises(ConfigError) as info:
        load_config({**SOCK, "cluster": "redis://h"})
    assert info.value.key == "cluster"


# -- the simulator -------------------------------------------------------------------------------


def test_simulated_hosts_divide_the_backend_by_weight_and_not_without_the_cluster():
    run = ClusterRun(3, split(3, 1.0, 1.0), 1500.0, duration=3.0, warmup=1.0, depth=256)
    assert simulate(run).share("A") == pytest.approx(0.5, abs=0.03)
    run2 = ClusterRun(3, split(3, 2.0, 1.0), 1500.0, duration=3.0, warmup=1.0, depth=256)
    assert simulate(run2).share("A") == pytest.approx(2 / 3, abs=0.03)
    local_run = ClusterRun(3, split(3, 1.0, 1.0), 1500.0, duration=3.0, warmup=1.0, depth=256,
                           cluster=False)  # fmt: skip
    assert simulate(local_run).share("A") == pytest.approx(1 / 3, abs=0.03)


def test_simulation_is_deterministic():
    run = ClusterRun(3, split(3, 1.0, 1.0), 1500.0, duration=2.0, warmup=0.5, loss=0.05)
    a, b = simulate(run), simulate(run)
    assert json.dumps(a.served) == json.dumps(b.served) and a.redis_ops == b.redis_ops


def test_top_shows_a_cluster_devices_share_or_local_control():
    from ioband.control.top import _device_title

    dev = {"name": "vol", "device_group": "1", "policy": "weight", "window": 13,
           "adaptive": True, "inflight": 12}  # fmt: skip
    assert "cluster" not in _device_title({**dev, "cluster": None})
    joined = {"peers": 2, "share": 0.5, "local_control": False}
    assert "cluster 2 peer(s) share 50%" in _device_title({**dev, "cluster": joined})
    alone = {**joined, "local_control": True}
    assert "local" in _device_title({**dev, "cluster": alone})


# -- a reservation is the cluster's (dmClock's rho) --------------------------------------------


def two_hosts_with_a_reservation(exchange: bool, seconds: float = 3.0) -> dict[str, int]:
    """Two hosts, each an engine over a store that completes 2 requests a jiffy (2,000/s).
    On both, group 1 reserves 600/s at weight 1 and group 2 weighs 100; both groups keep 16
    requests queued on each host. With ``exchange``, the hosts' coordinators swap records every
    50 ms and each charges the other's service (``charge_remote``), as the agent does. The
    requests each group completed after the first second, summed over the hosts."""
    table = "0 100 ioband sda 1 0 8 user mclock iops :0:1:0 1:600:1:0 2:0:100:0"
    hosts = []
    for name in ("h1", "h2"):
        engine = Engine(hz=1000)
        d = Driver(engine)
        dev = engine.create("vol", table)
        for uid in (1, 2):
            for _ in range(16):
                d.submit(dev, Request(False, 0, 4096, Submitter(pid=uid, uid=uid)))
        hosts.append((name, d, dev, Coordinator(name, 0.05), {}))
    got = {"1": 0, "2": 0}
    for ms in range(int(seconds * 1000)):
        for _, d, dev, _, _ in hosts:
            for _ in range(2):
                if d.inflight:
                    req = d.complete(0)
                    uid = req.owner.uid
                    if ms >= 1000:
                        got[str(uid)] += 1
                    d.submit(dev, Request(False, 0, 4096, Submitter(pid=uid, uid=uid)))
            d.tick(1)
        if exchange and ms % 50 == 49:
            texts = {}
            for name, _, dev, coord, _ in hosts:
                policy = dev.dp.policy
                groups = {
                    str(k): GroupService(1.0, True, 0, policy.service_cost(g),
                                         policy.reserved_cost(g))
                    for k, g in dev.groups.items()
                }  # fmt: skip
                texts[name] = coord.record(groups, 8.0, 8.0, 0.004, 2000.0)
            for _, d, dev, coord, _ in hosts:
                outcome = coord.absorb(ms / 1000, texts)
                policy = dev.dp.policy
                with d.core:
                    for key, cost in outcome.charges.items():
                        policy.charge_remote(dev.groups[int(key)], cost,
                                             outcome.reserved.get(key, 0.0))  # fmt: skip
                    d.engine.kick(dev.dp)
    return {k: round(v / (seconds - 1)) for k, v in got.items()}


def test_a_reservation_is_the_clusters_not_each_hosts():
    """Without the exchange each host meets the reservation on its own: group 1 gets 600/s on
    each, 1,200 in all. With it (remote service advances the rtag, rho keeps the reservation's
    part off the ptag) the two hosts together give it its 600 (and a hair of weight share)."""
    alone = two_hosts_with_a_reservation(False)
    assert alone["1"] == pytest.approx(1200, rel=0.03), alone
    shared = two_hosts_with_a_reservation(True)
    assert 600 * 0.97 <= shared["1"] <= 600 * 1.1, shared
    assert shared["1"] + shared["2"] == pytest.approx(4000, rel=0.01), shared


def test_remote_reservation_service_moves_the_rtag_not_the_ptag():
    e = Engine(hz=1000)
    dev = e.create("vol", "0 100 ioband sda 1 0 8 user mclock iops :0:1:0 1:600:1:0 2:0:1:0")
    d = Driver(e)
    for uid in (1, 2):
        for _ in range(16):
            d.submit(dev, Request(False, 0, 4096, Submitter(pid=uid, uid=uid)))
    policy = dev.dp.policy
    state = policy._state_of(dev.groups[1])
    ptag, rtag = state.ptag, state.rtag
    policy.charge_remote(dev.groups[1], 30.0, 30.0)  # all in its reservation phase
    assert state.ptag == ptag and state.rtag > rtag
    ptag, rtag = state.ptag, state.rtag
    policy.charge_remote(dev.groups[1], 30.0, 10.0)  # two thirds by weight
    assert state.ptag == pytest.approx(ptag + 20.0 / state.eff) and state.rtag >= rtag
