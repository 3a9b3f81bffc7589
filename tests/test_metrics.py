"""Metric formulas against hand-computed values, and the metrics document of exact runs."""

from __future__ import annotations

import math

import pytest

from ioband.sim import load_scenario, run
from ioband.sim.metrics import (
    compute,
    covers,
    jain_index,
    max_relative_error,
    relative_errors,
    shares,
    summary,
    whole_windows,
    window_counts,
)
from ioband.sim.simulator import analyse


def test_shares():
    assert shares({"a": 1, "b": 3}) == {"a": 0.25, "b": 0.75}
    assert shares({"a": 0, "b": 0}) == {"a": 0.0, "b": 0.0}


def test_relative_errors_hand_computed():
    # weights 40/20/10 -> 4/7, 2/7, 1/7; achieved 50/30/20 % -> errors 1/8, 1/20, 2/5
    errors = relative_errors({"a": 50, "b": 30, "c": 20}, {"a": 40, "b": 20, "c": 10})
    assert errors["a"] == pytest.approx(abs(0.5 - 4 / 7) / (4 / 7))
    assert errors["a"] == pytest.approx(0.125)
    assert errors["b"] == pytest.approx(0.05)
    assert errors["c"] == pytest.approx(0.4)
    assert max_relative_error({"a": 50, "b": 30, "c": 20}, {"a": 40, "b": 20, "c": 10}) == (
        pytest.approx(0.4)
    )
    assert max_relative_error({"a": 8, "b": 2}, {"a": 80, "b": 20}) == 0.0


def test_jain_index_hand_computed():
    assert jain_index({"a": 1, "b": 1, "c": 1}) == 1.0
    # one of n gets everything: 1/n
    assert jain_index({"a": 9, "b": 0, "c": 0}) == pytest.approx(1 / 3)
    # (1 + 2 + 3)^2 / (3 * (1 + 4 + 9)) = 36 / 42
    assert jain_index({"a": 1, "b": 2, "c": 3}) == pytest.approx(36 / 42)
    # weighted: x/w = 1, 1, 1 -> perfect
    assert jain_index({"a": 40, "b": 20, "c": 10}, {"a": 4, "b": 2, "c": 1}) == 1.0
    # weighted: x/w = 10, 5 -> (15)^2 / (2 * 125) = 0.9
    assert jain_index({"a": 10, "b": 10}, {"a": 1, "b": 2}) == pytest.approx(0.9)
    assert jain_index({}) == 1.0
    assert jain_index({"a": 0, "b": 0}) == 1.0


def test_window_counts_and_whole_windows():
    times = [0.0, 0.5, 0.999, 1.0, 2.5, 2.9999, 3.0]
    assert window_counts(times, 1.0, 3) == [3, 1, 2]  # 3.0 is outside [0, 3)
    assert window_counts(times, 0.5, 2) == [1, 2]
    assert window_counts([], 1.0, 2) == [0, 0]
    assert whole_windows(10.0, 1.0) == 10
    assert whole_windows(0.3, 0.1) == 3  # float-tolerant
    assert whole_windows(9.99, 10.0) == 0


def test_summary_and_covers():
    s = summary([3.0, 1.0, 2.0])
    assert s == {"mean": 2.0, "p50": 2.0, "p99": 3.0, "min": 1.0, "max": 3.0}
    assert summary([])["mean"] is None
    assert covers([(0.0, 10.0)], 2.0, 3.0)
    assert not covers([(0.0, 2.5)], 2.0, 3.0)
    assert covers([(0.0, 1.0), (2.0, 5.0)], 2.0, 3.0)


def fixed_scenario(scheduler="ioband", **sim):
    """Two partitions 3:1 on an exact disk: one slot, 1 ms per request; more processes than
    io_limit (192), so requests are held in ioband."""
    return load_scenario(
        {
            "simulation": {"duration": 8.0, "seed": 1, "scheduler": scheduler, **sim},
            "metrics": {"windows": [1.0, 2.0]},
            "disk": [{"name": "sda", "model": "fixed", "service_time": "1ms"}],
            "device": [
                {"name": "d1", "disk": "sda", "table": "0 2048 ioband sda1 1 0 0 none weight 0 :3"},
                {"name": "d2", "disk": "sda", "table": "0 2048 ioband sda2 1 0 0 none weight 0 :1"},
            ],
            "workload": [
                {"name": "w1", "device": "d1", "processes": 128, "pattern": "randread"},
                {"name": "w2", "device": "d2", "processes": 128, "pattern": "randread",
                 "block_size": "8KiB"},
            ],
        }
    )  # fmt: skip


def test_metrics_document_of_an_exact_run():
    result = run(fixed_scenario())
    base = run(fixed_scenario("none"))
    m = compute(result, base)
    assert m["windows"] == [1.0, 2.0]
    assert [g["key"] for g in m["groups"]] == ["d1", "d2"]
    assert [g["weight"] for g in m["groups"]] == [3.0, 1.0]
    assert m["groups"][0]["workloads"] == ["w1"]
    # one slot at 1 ms: 8000 requests in 8 s, whoever gets them
    total = sum(g["ios"] for g in m["groups"])
    assert total == pytest.approx(8000, abs=2)
    assert m["groups"][1]["bytes"] == m["groups"][1]["ios"] * 8192
    (pool,) = m["pools"]
    assert pool["pool"] == "1" and pool["unit"] == "ios"
    o = pool["overall"]
    assert o["weight_share"] == {"d1": 0.75, "d2": 0.25}
    ios = {g["key"]: g["ios"] for g in m["groups"]}
    assert o["io_share"]["d1"] == pytest.approx(ios["d1"] / total)
    assert o["max_rel_error"] == pytest.approx(
        max(abs(ios["d1"] / total - 0.75) / 0.75, abs(ios["d2"] / total - 0.25) / 0.25)
    )
    assert o["max_rel_error"] < 0.05
    # 1 s windows: on this slow disk an epoch (768 tokens) lasts ~0.8 s, so single windows swing
    w1 = pool["by_window"]["1"]
    assert w1["windows"] == 8 and len(w1["series"]["jain"]) == 8
    assert w1["max_rel_error"]["max"] == max(w1["series"]["max_rel_error"])
    assert w1["jain"]["min"] == min(w1["series"]["jain"])
    assert pool["by_window"]["2"]["windows"] == 4
    eff = m["efficiency"]
    assert eff["baseline"] == "none"
    assert eff["eta_util"] == pytest.approx(1.0, abs=0.01)  # the exact disk is never idle
    assert eff["eta_ios"] == pytest.approx(1.0, abs=0.01)
    assert set(m["latency"]) == {"w1", "w2"}
    assert m["latency"]["w1"]["p999"] >= m["latency"]["w1"]["p99"] >= m["latency"]["w1"]["p50"]


def test_analyse_runs_the_uncontrolled_twin_and_fills_json():
    result = analyse(fixed_scenario().with_overrides(duration=0.5))
    doc = result.to_dict()
    assert doc["metrics"]["efficiency"]["baseline"] == "none"
    assert doc["scenario"]["scheduler"] == "ioband"
    assert all(math.isfinite(w["latency_p999"]) for w in doc["workloads"])
    # no twin for an uncontrolled run, nor when the scenario says so
    assert (
        analyse(fixed_scenario("none").with_overrides(duration=0.5)).metrics["efficiency"] is None
    )


def test_windows_where_a_group_is_idle_are_not_owed():
    """A workload off during [1, 3) is not counted in those windows."""
    sc = fixed_scenario()
    data = {
        "simulation": {"duration": 4.0, "seed": 1},
        "disk": [{"name": "sda", "model": "fixed", "service_time": "1ms"}],
        "device": [{"name": d.name, "disk": "sda", "table": d.table} for d in sc.devices],
        "workload": [
            {"name": "w1", "device": "d1", "processes": 8, "pattern": "randread"},
            {"name": "w2", "device": "d2", "processes": 8, "pattern": "randread",
             "phase": [{"start": 0, "stop": 1}, {"start": 3}]},
        ],
    }  # fmt: skip
    result = run(load_scenario(data))
    pool = compute(result, None, windows=(1.0,))["pools"][0]
    series = pool["by_window"]["1"]["series"]["max_rel_error"]
    assert series[1] == 0.0 and series[2] == 0.0  # d1 alone is owed everything
    assert pool["overall"]["groups"] == ["d1"]  # d2 was not active for the whole run


def test_range_bw_conformance_numbers():
    sc = load_scenario(
        {
            "simulation": {"duration": 3.0, "seed": 1},
            "metrics": {"windows": [1]},
            "disk": [{"name": "sda", "model": "ssd", "iops": 8000}],
            "device": [{"name": "d", "disk": "sda",
                        "table": "0 2097152 ioband sda1 1 0 0 none range-bw 0 :400:800"}],
            "workload": [{"name": "w", "device": "d", "processes": 4, "pattern": "randread",
                          "direct": True}],
        }
    )  # fmt: skip
    m = compute(run(sc))
    (rb,) = m["range_bw"]
    assert (rb["group"], rb["min_kbps"], rb["max_kbps"]) == ("d", 400, 800)
    w = rb["by_window"]["1"]
    assert w["windows"] == 3 and w["min_met"] == 1.0
    # held at the max: at most one 4 KiB request over it per 1 s period
    assert w["max_excess_kbps"] <= 4.0
    assert w["max_excess_bytes"] == pytest.approx(w["max_excess_kbps"] * 1024)
