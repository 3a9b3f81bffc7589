"""The hdd model, the none/sfq baselines, and the workload keys rate, phase, offset and size."""

from __future__ import annotations

import math

import pytest

from ioband.cli import main
from ioband.core.request import HELD, ISSUED, Request, Submitter
from ioband.errors import IobandError
from ioband.sim import ScenarioError, load_scenario, run
from ioband.sim.baselines import FifoEngine, SFQDEngine
from ioband.sim.disk import HDDModel, create_disk, describe_models

MiB = 1 << 20
GiB = 1 << 30


def hdd(**params) -> HDDModel:
    defaults = {name: p.default for name, p in HDDModel.PARAMS.items()}
    disk = create_disk("sda", "hdd", {**defaults, **params})
    assert isinstance(disk, HDDModel)
    return disk


class DiskRequest(Request):
    __slots__ = ("lba",)


def at(lba: int, length: int = 4096) -> Request:
    r = DiskRequest(False, lba, length)
    r.lba = lba
    return r


# ---------------------------------------------------------------------------------------------
# hdd


def test_hdd_sequential_fast_path_is_a_pure_transfer():
    disk = hdd(overhead=0.0, transfer_rate=128 * MiB)
    disk.head = 10 * MiB
    assert disk.position_time(10 * MiB, 0.123) == 0.0
    done = disk.submit(at(10 * MiB, 64 * 1024), 1.0)
    assert done == pytest.approx(1.0 + 64 * 1024 / (128 * MiB))
    assert disk.head == 10 * MiB + 64 * 1024 and disk.sequential == 2


def test_hdd_seek_grows_with_distance_square_root():
    disk = hdd(min_seek=0.001, max_seek=0.011, capacity=100 * GiB, track_size=MiB)
    assert disk.seek_time(0) == 0.0
    assert disk.seek_time(MiB // 2) == 0.0  # same track: no seek, only rotation
    assert disk.seek_time(25 * GiB) == pytest.approx(0.001 + 0.010 * 0.5)
    assert disk.seek_time(100 * GiB) == pytest.approx(0.011)
    assert disk.seek_time(400 * GiB) == pytest.approx(0.011)  # capped at a full stroke
    d = [disk.seek_time(x * GiB) for x in (1, 4, 16, 64)]
    assert d == sorted(d) and len(set(d)) == 4


def test_hdd_rotational_latency_is_within_one_revolution_and_deterministic():
    disk = hdd(rpm=6000, min_seek=0.002, max_seek=0.002, overhead=0.0)  # 10 ms per turn
    waits = []
    for i in range(50):
        disk.head = 0
        t = disk.position_time(GiB + i * 7919 * 512, 0.001 * i)
        assert 0.002 <= t < 0.002 + 0.010 + 1e-12
        waits.append(t - 0.002)
    assert max(waits) - min(waits) > 0.005  # spread over the revolution
    again = hdd(rpm=6000, min_seek=0.002, max_seek=0.002, overhead=0.0)
    assert again.position_time(GiB + 3 * 7919 * 512, 0.003) == pytest.approx(waits[3] + 0.002)


def test_hdd_serves_one_at_a_time_fifo_and_clook():
    disk = hdd()
    a, b, c = at(100 * MiB), at(10 * MiB), at(50 * MiB)
    t = disk.submit(a, 0.0)
    assert t is not None and disk.submit(b, 0.0) is None and disk.submit(c, 0.0) is None
    nxt, _ = disk.finish(a, t)
    assert nxt is b  # fifo: arrival order
    look = hdd(elevator="clook")
    t = look.submit(a, 0.0)
    look.submit(b, 0.0)
    look.submit(c, 0.0)
    look.submit(d := at(120 * MiB), 0.0)
    nxt, t2 = look.finish(a, t)
    assert nxt is d  # the next one at or after the head (100 MiB + 4 KiB)
    nxt, _ = look.finish(d, t2)
    assert nxt is b  # then wrap to the lowest


def test_hdd_parameters_are_validated():
    base = {"simulation": {"duration": 1}, "device": [{"name": "d", "disk": "sda",
            "table": "0 2048 ioband sda 1 0 0 none weight 0 :1"}],
            "workload": [{"name": "w", "device": "d", "pattern": "read"}]}  # fmt: skip
    with pytest.raises(ScenarioError, match=r"disk\[0\]\.max_seek: must not be below min_seek"):
        load_scenario({**base, "disk": [{"name": "sda", "model": "hdd", "max_seek": "1ms",
                                         "min_seek": "2ms"}]})  # fmt: skip
    with pytest.raises(ScenarioError, match=r"disk\[0\]\.elevator: must be one of fifo, clook"):
        load_scenario({**base, "disk": [{"name": "sda", "model": "hdd", "elevator": "cfq"}]})
    with pytest.raises(ScenarioError, match=r"disk\[0\]\.queue_depth: unknown key"):
        load_scenario({**base, "disk": [{"name": "sda", "model": "hdd", "queue_depth": 4}]})


def test_hdd_random_and_sequential_throughput_are_disk_like():
    def kibps(pattern, processes):
        sc = load_scenario(
            {
                "simulation": {"duration": 5, "scheduler": "none"},
                "disk": [{"name": "sda", "model": "hdd"}],
                "device": [{"name": "d", "disk": "sda",
                            "table": "0 83886080 ioband sda1 1 0 0 none weight 0 :1"}],
                "workload": [{"name": "w", "device": "d", "pattern": pattern,
                              "processes": processes, "direct": True}],
            }
        )  # fmt: skip
        return run(sc).workloads[0].kibps

    seq = kibps("read", 1)
    rand = kibps("randread", 4)
    assert 20_000 < seq < 40_000  # 4 KiB at a time: command overhead dominates
    assert 300 < rand < 1000  # ~100-250 random IOPS
    assert kibps("read", 4) < 2 * rand  # interleaved streams seek on every request


def test_describe_models_lists_every_key(capsys):
    text = "\n".join(describe_models())
    for model in ("fixed", "ssd", "hdd"):
        assert f'model = "{model}"' in text
    for key in ("rpm", "min_seek", "max_seek", "transfer_rate", "capacity", "elevator", "iops"):
        assert f"  {key} " in text
    assert "default 7200" in text and "fifo|clook" in text and "120MiB/s" in text
    assert main(["sim", "--describe-models"]) == 0
    assert capsys.readouterr().out.strip() == text


# ---------------------------------------------------------------------------------------------
# baselines


def owner(uid: int) -> Submitter:
    return Submitter(pid=uid, uid=uid)


def test_fifo_engine_passes_everything_and_keeps_the_grammar():
    e = FifoEngine()
    dev = e.create("d", "0 2048 ioband sda 1 0 0 user weight 0 :40 1000:20")
    reqs = [Request(False, 0, 4096, owner(1000)) for _ in range(3)] + [
        Request(True, 0, 8192, owner(7), sync=True)
    ]
    assert all(e.submit(dev, r, 0) for r in reqs)
    assert all(r.state == ISSUED for r in reqs)
    assert reqs[0].group.id == 1000 and reqs[3].group.id == -1
    assert e.take_issued() == [] and e.take_admitted() == [] and e.next_deadline() is None
    for r in reqs:
        e.complete(r, 1)
    assert e.table("d") == "0 2048 ioband sda 1 4 192 user weight 0 :40 1000:20"
    assert e.status("d") == "0 2048 ioband 1 -1 0 0 0 1 0 16 1000 3 0 24 0 0 0"
    e.message("d", "weight 1000:30")
    e.message("d", "attach 2000")
    assert e.table("d").endswith(":40 1000:30 2000:100")
    with pytest.raises(IobandError, match="already exists"):
        e.message("d", "attach 2000")
    with pytest.raises(IobandError):
        e.message("d", "weight 1000:0")
    with pytest.raises(IobandError):
        e.create("x", "0 2048 ioband sda 1 0 0 none weight 0 :40 1000:20")
    with pytest.raises(IobandError):
        e.complete(reqs[0], 2)  # completed twice


def test_sfq_tags_hand_computed():
    """Weights 2 and 1, cost 1, depth 1: start tags a:0, 0.5, 1; b:0, 1 -> a a b a b ..."""
    e = SFQDEngine(depth=1)
    dev = e.create("d", "0 2048 ioband sda 1 0 0 user weight 0 :1 1:2 2:1")
    a = [Request(False, 0, 4096, owner(1)) for _ in range(3)]
    b = [Request(False, 0, 4096, owner(2)) for _ in range(2)]
    assert e.submit(dev, a[0], 0) is True  # idle: dispatched at once, S=0
    assert [e.submit(dev, r, 0) for r in (a[1], a[2], b[0], b[1])] == [False] * 4
    assert all(r.state == HELD for r in (a[1], a[2], b[0], b[1]))
    # queued start tags: a1 0.5, a2 1.0, b0 0.0, b1 1.0 -> b0, a1, a2, b1 (ties by arrival)
    order = []
    cur = a[0]
    for t in range(1, 5):
        e.complete(cur, t)
        (cur,) = e.take_issued()
        order.append(cur)
    assert order == [b[0], a[1], a[2], b[1]]
    e.complete(cur, 5)
    assert dev.dp.outstanding == 0 and dev.dp.vtime == dev.dp.max_finish == 2.0


def test_sfq_weight_iosize_charges_by_size():
    e = SFQDEngine(depth=1)
    dev = e.create("d", "0 2048 ioband sda 1 0 0 user weight-iosize 0 :1 1:1 2:1")
    big = Request(False, 0, 65536, owner(1))
    small = [Request(False, 0, 4096, owner(2)) for _ in range(20)]
    e.submit(dev, Request(False, 0, 4096, owner(9)), 0)  # occupies the one slot
    e.submit(dev, big, 0)
    for r in small:
        e.submit(dev, r, 0)
    assert big.group.finish == 128.0  # 128 sectors / weight 1
    assert small[-1].group.finish == 160.0  # 20 x 8 sectors


@pytest.mark.parametrize("policy", ["weight", "weight-iosize"])
def test_sfq_in_the_simulator_holds_its_weights_within_2_percent(policy):
    weights = {1000: 10, 1001: 30, 1002: 60}
    groups = " ".join(f"{u}:{w}" for u, w in weights.items())
    sc = load_scenario(
        {
            "simulation": {"duration": 2, "seed": 2, "scheduler": "sfq", "sfq_depth": 8},
            "disk": [{"name": "sda", "model": "ssd", "iops": 20000, "queue_depth": 8}],
            "device": [{"name": "d", "disk": "sda",
                        "table": f"0 2097152 ioband sda 1 0 0 user {policy} 0 :1 {groups}"}],
            "workload": [{"name": str(u), "device": "d", "uid": u, "processes": 8, "iodepth": 4,
                          "pattern": "randread", "direct": True,
                          "block_size": "4KiB" if u != 1001 else "16KiB"}
                         for u in weights],
        }
    )  # fmt: skip
    result = run(sc)
    unit = "bytes" if policy == "weight-iosize" else "ios"
    got = {int(w.name): getattr(w, unit) for w in result.workloads}
    total, wsum = sum(got.values()), sum(weights.values())
    for u, w in weights.items():
        assert abs(got[u] / total - w / wsum) / (w / wsum) <= 0.02, (u, got)


def test_scheduler_key_and_override():
    sc = load_scenario(
        {
            "simulation": {"duration": 0.2, "scheduler": "none"},
            "disk": [{"name": "sda", "model": "ssd"}],
            "device": [{"name": "d", "disk": "sda",
                        "table": "0 2048 ioband sda 1 0 0 none weight 0 :1"}],
            "workload": [{"name": "w", "device": "d", "pattern": "randread"}],
        }
    )  # fmt: skip
    assert sc.scheduler == "none" and sc.with_overrides(scheduler="sfq").scheduler == "sfq"
    with pytest.raises(ScenarioError, match="scheduler: must be one of ioband, none, sfq"):
        sc.with_overrides(scheduler="cfq")
    bad = {"simulation": {"duration": 1, "sfq_depth": 4}, "disk": [{"name": "sda"}],
           "device": [{"name": "d", "disk": "sda", "table": "0 8 ioband sda 1 0 0 none weight"}],
           "workload": [{"name": "w", "device": "d", "pattern": "read"}]}  # fmt: skip
    with pytest.raises(ScenarioError, match=r'simulation\.sfq_depth: only with scheduler = "sfq"'):
        load_scenario(bad)
    assert run(sc).devices["d"].status.startswith("0 2048 ioband 1 -1 ")


# ---------------------------------------------------------------------------------------------
# workload keys


def one_workload(**workload):
    return load_scenario(
        {
            "simulation": {"duration": 4.0, "seed": 1},
            "disk": [{"name": "sda", "model": "fixed", "service_time": "1ms", "queue_depth": 64}],
            "device": [{"name": "d", "disk": "sda",
                        "table": "0 2048 ioband sda1 1 0 0 none weight 0 :1"}],
            "workload": [{"name": "w", "device": "d", "pattern": "randread", **workload}],
        }
    )  # fmt: skip


def test_rate_caps_each_process():
    r = run(one_workload(processes=4, iodepth=8, rate_iops=50))
    assert r.workloads[0].ios == pytest.approx(4 * 50 * 4, abs=4)
    r = run(one_workload(processes=2, block_size="8KiB", rate="80KiB"))
    assert r.workloads[0].bytes == pytest.approx(2 * 80 * 1024 * 4, abs=2 * 8192)
    # the stricter of the two caps wins
    r = run(one_workload(processes=1, rate="1MiB", rate_iops=10))
    assert r.workloads[0].ios == pytest.approx(40, abs=1)


def test_phases_switch_a_workload_on_and_off():
    phases = [{"start": 0, "stop": 1}, {"start": 2, "stop": 2.5}, {"start": 3.5}]
    r = run(one_workload(processes=1, phase=phases))
    w = r.workloads[0]
    assert w.active_time == pytest.approx(1 + 0.5 + 0.5)
    # 1 ms per request; the request in flight at a phase's stop still completes
    assert w.timeline_ios[0] > 900 and w.timeline_ios[1] <= 1
    assert 400 < w.timeline_ios[2] < 600 and 400 < w.timeline_ios[3] < 600
    assert w.iops == pytest.approx(w.ios / 2.0)


@pytest.mark.parametrize(
    ("phase", "key", "rule"),
    [
        ([], "workload[0].phase", "must be one or more"),
        ([{"stop": 1}], r"workload[0].phase[0].start", "missing required key"),
        ([{"start": 2, "stop": 1}], "workload[0].phase[0].stop", "must be after start"),
        ([{"start": 0, "stop": 2}, {"start": 1}], "workload[0].phase[1].start", "in time order"),
        ([{"start": 0}, {"start": 3}], "workload[0].phase[0].stop", "only the last phase"),
        ([{"start": 0, "stop": 1, "every": 2}], "workload[0].phase[0].every", "unknown key"),
    ],
)
def test_phase_errors_name_the_key(phase, key, rule):
    with pytest.raises(ScenarioError) as info:
        one_workload(phase=phase)
    assert info.value.key == key and rule in info.value.rule


def test_phase_and_start_are_exclusive():
    with pytest.raises(ScenarioError, match=r"workload\[0\]\.start: give either start/stop"):
        one_workload(start=1, phase=[{"start": 2}])


def test_offset_and_size_restrict_the_region_and_set_the_disk_position():
    from ioband.sim.simulator import Simulator

    sim = Simulator(one_workload(offset="256KiB", size="64KiB", block_size="4KiB"))
    wl_requests = []

    class Spy:  # the engine with submit recorded (a compiled Engine's methods are read-only)
        def __init__(self, engine):
            self._engine = engine

        def __getattr__(self, name):
            return getattr(self._engine, name)

        def submit(self, dev, req, now):
            wl_requests.append(req)
            return self._engine.submit(dev, req, now)

    sim.engine = sim.driver.engine = Spy(sim.engine)  # the simulator submits through its driver
    sim.run()
    offsets = {r.offset for r in wl_requests}
    assert min(offsets) >= 256 * 1024 and max(offsets) + 4096 <= 320 * 1024
    assert all(r.lba == r.offset for r in wl_requests)  # the first device starts the disk
    with pytest.raises(ScenarioError, match=r"workload\[0\]\.size: offset \+ size"):
        one_workload(offset="512KiB", size="1MiB")
    with pytest.raises(ScenarioError, match=r"workload\[0\]\.offset: must be a multiple of 512"):
        one_workload(offset=100)
    with pytest.raises(ScenarioError, match=r"workload\[0\]\.rate: must be greater than 0"):
        one_workload(rate=0)


def test_devices_are_laid_out_one_after_another_on_their_disk():
    from ioband.sim.simulator import Simulator

    sc = load_scenario(
        {
            "simulation": {"duration": 0.01},
            "disk": [{"name": "sda", "model": "hdd"}],
            "device": [{"name": f"d{i}", "disk": "sda",
                        "table": f"0 2048 ioband sda{i} 1 0 0 none weight 0 :1"}
                       for i in (1, 2)],
            "workload": [{"name": "w", "device": "d2", "pattern": "read"}],
        }
    )  # fmt: skip
    sim = Simulator(sc)
    sim.run()
    assert sim.device_base == {"d1": 0, "d2": 2048 * 512}
    assert sim.workloads[0].disk_base == 2048 * 512


def test_windows_key_is_validated():
    base = {"simulation": {"duration": 1}, "disk": [{"name": "sda"}],
            "device": [{"name": "d", "disk": "sda", "table": "0 8 ioband sda 1 0 0 none weight"}],
            "workload": [{"name": "w", "device": "d", "pattern": "read"}]}  # fmt: skip
    assert load_scenario({**base, "metrics": {"windows": [0.5, "2s"]}}).windows == (0.5, 2.0)
    for bad, rule in (([], "non-empty array"), ([1, 1], "distinct"), ([0], "greater than 0")):
        with pytest.raises(ScenarioError, match=rule):
            load_scenario({**base, "metrics": {"windows": bad}})
    with pytest.raises(ScenarioError, match=r"metrics\.efficiency: must be true or false"):
        load_scenario({**base, "metrics": {"efficiency": 1}})
    assert not math.isnan(load_scenario(base).windows[0])


def test_sim_json_has_the_metrics(capsys):
    import json

    assert main(["sim", "partitions-40-10", "--duration", "0.3", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    m = doc["metrics"]
    assert m["windows"] == [1.0, 10.0]
    assert m["pools"][0]["overall"]["weight_share"] == {"ioband1": 0.8, "ioband2": 0.2}
    assert m["efficiency"]["baseline"] == "none" and m["efficiency"]["eta"] > 0.9
    assert set(m["latency"]) == {"sda1-io", "sda2-io"}
    args = ["sim", "partitions-40-10", "--duration", "0.3", "--scheduler", "sfq"]
    assert main([*args, "--no-efficiency", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["scenario"]["scheduler"] == "sfq" and doc["metrics"]["efficiency"] is None
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "metrics (see --json for every window):" in out and "p99.9 ms" in out
