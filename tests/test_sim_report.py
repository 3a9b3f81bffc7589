"""The human report and the share lines."""

from __future__ import annotations

import io

from ioband.sim import load_builtin, run
from ioband.sim.report import make_console, parse_table, render, share_lines
from ioband.sim.results import percentile, to_json


def short(name, duration=0.3):
    return run(load_builtin(name).with_overrides(duration=duration))


def test_percentile_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_parse_table_weight_and_range_bw():
    tp = parse_table("0 8 ioband sda1 share1 4 192 user weight 768 :40 1000:30 2000:20")
    assert (tp.device_group, tp.policy, tp.weight) == ("share1", "weight", 90)
    assert tp.groups == {-1: "40", 1000: "30", 2000: "20"}
    rb = parse_table("0 8 ioband sda1 1 4 192 cgroup range-bw 16384 :0:0 2:100:500")
    assert rb.groups == {-1: "0:0", 2: "100:500"} and rb.weight is None
    assert parse_table("0 8 ioband sda1 1 4 192 none weight").weight == 100
    assert parse_table("not a table") is None


def test_share_lines_compare_weights_with_achieved():
    lines = share_lines(short("partitions-40-20-10", 0.2))
    assert len(lines) == 3
    assert lines[0].startswith("ioband1  weight 40/70 =  57.1 %   achieved ")
    assert lines[2].startswith("ioband3  weight 10/70 =  14.3 %")
    assert all(line.endswith(" IOs)") for line in lines)


def test_share_lines_by_bytes_for_weight_iosize_and_bands_for_range_bw():
    assert all("of bytes" in line for line in share_lines(short("weight-iosize", 0.1)))
    bands = share_lines(short("range-bw", 0.1))
    assert bands[0].startswith("ioband1  range-bw bands :5000:6000 1000:10000:12000 KB/s")


def test_render_prints_workloads_and_prefixed_device_lines():
    result = short("users-30-20")
    buf = io.StringIO()
    render(result, make_console(buf))
    out = buf.getvalue()
    for w in result.workloads:
        assert w.name in out
    for name, dev in result.devices.items():
        assert f"{name}: {dev.table}\n" in out
        assert f"{name}: {dev.status}\n" in out
    assert "p99 ms" in out and "MB/s" in out
    assert "disk sda (ssd)" in out


def test_to_json_is_the_result_dict():
    result = short("partitions-40-10", 0.1)
    assert to_json(result) == result.to_dict()
