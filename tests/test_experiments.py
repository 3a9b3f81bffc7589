"""The experiment suite in quick mode: what each experiment asserts, determinism, the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ioband.cli import main
from ioband.experiments import names, registry
from ioband.experiments.base import Context
from ioband.experiments.runner import Report, markdown_page, run_experiment

QUICK = Context(quick=True, seed=1)


@pytest.fixture(scope="module")
def reports() -> dict[str, Report]:
    """Every experiment once, quick, without writing files (shared by the tests below)."""
    return {name: run_experiment(m, QUICK, None) for name, m in registry().items()}


def data(reports, name):
    return reports[name].outcome.data


def test_the_suite_has_the_experiments_the_issue_asks_for():
    assert names() == [
        "partitions-40-20-10",
        "users-30-20",
        "weight-iosize",
        "range-bw-bands",
        "idle-donation",
        "shallow-vs-deep",
        "scale-groups",
        "knob-sweep",
        "fair-by-default",
        "mclock",
        "hierarchy",
        "cluster-shares",
    ]


def test_every_check_passes_in_quick_runs(reports):
    failed = [f"{n}: {c.name}: {c.detail}" for n, r in reports.items()
              for c in r.outcome.checks if not c.ok]  # fmt: skip
    assert not failed
    for r in reports.values():
        assert r.outcome.checks and r.outcome.tables and r.outcome.figures and r.outcome.summary


def test_partitions_40_20_10_shares_and_efficiency(reports):
    s = data(reports, "partitions-40-20-10")["schedulers"]
    want = {"ioband1": 4 / 7, "ioband2": 2 / 7, "ioband3": 1 / 7}
    for key, share in want.items():
        assert abs(s["ioband"]["share"][key] - share) / share <= 0.05
        assert abs(s["sfq"]["share"][key] - share) / share <= 0.02
    assert s["ioband"]["eta"] >= 0.95  # the weight policy on the SSD model
    assert s["none"]["share"]["ioband3"] > 0.5  # without control the 200 processes win


def test_users_30_20_shares(reports):
    s = data(reports, "users-30-20")["schedulers"]
    want = {"ioband1:1000": 0.3, "ioband1:2000": 0.2, "ioband1": 0.4, "ioband2": 0.1}
    for key, share in want.items():
        assert abs(s["ioband"]["share"][key] - share) / share <= 0.05
        assert abs(s["sfq"]["share"][key] - share) / share <= 0.02


def test_weight_iosize_byte_shares_and_efficiency(reports):
    s = data(reports, "weight-iosize")["schedulers"]
    assert s["ioband"]["max_rel_error"] <= 0.05 and s["sfq"]["max_rel_error"] <= 0.02
    assert s["ioband"]["eta_util"] >= 0.95
    assert s["ioband (weight)"]["byte_share"]["ioband2"] > 0.9  # IO-fair: big requests win


def test_range_bw_minimums_met_and_maximums_held(reports):
    cases = data(reports, "range-bw-bands")["cases"]
    for g in cases["fits"]["groups"].values():
        assert g["min_met"] >= 0.99
        assert g["max_excess_kbps"] <= g["batch_kb"]  # at most one request over, per period
    short = cases["short"]["groups"]
    assert short["ioband1"]["min_met"] == 0.0  # the sum of mins cannot fit: someone misses


def test_idle_donation_redistributes_and_restores(reports):
    idle = data(reports, "idle-donation")["idle"]["ioband"]
    assert idle["idle_share_error"] <= 0.05
    assert idle["idle_iops"] >= 0.95 * idle["busy_iops"]
    assert idle["restored_after"] is not None and idle["restored_after"] <= 2.0
    light = data(reports, "idle-donation")["light"]
    assert light["ioband"]["share_b"] >= 0.85 and light["sfq"]["share_b"] >= 0.85


def test_shallow_vs_deep_imbalance_under_ioband_fairness_under_sfq(reports):
    d = data(reports, "shallow-vs-deep")
    one = d["part1"]["ioband"]["1"]["b_io_share"]
    assert one < 0.25  # one sequential reader against 16: far below its 50 %
    for n, row in d["part1"]["SFQ(D=1)"].items():
        assert abs(row["b_io_share"] - 0.5) / 0.5 <= 0.02, n
    assert d["part1"]["SFQ(D=4)"]["1"]["b_io_share"] < 0.25  # depth matters
    adaptive = d["part1"]["ioband adaptive"]["1"]  # the default io_limit 0, beside it
    assert 0 < adaptive["b_disk_time_share"] < 1 and adaptive["eta"] > 0
    part2 = d["part2"]
    assert part2["ioband"]["seq_kibps"] < 0.1 * part2["seq alone"]["seq_kibps"]
    assert d["part1_published_b_share"]["dm-ioband + CFQ"]["1"] == pytest.approx(
        1749 / (11020 + 1749)
    )


def test_scale_groups_quick(reports):
    r = reports["scale-groups"]
    groups = r.outcome.data["groups"]
    assert list(groups) == ["2", "16", "128"]
    for row in groups.values():
        assert row["sfq"]["class_max_rel_error"] <= 0.05
        assert row["ioband, token 4 x sum(w)"]["class_max_rel_error"] <= 0.05
    # wall-clock costs are kept out of the deterministic data
    assert "engine_us_per_request" not in json.dumps(r.outcome.data)
    assert r.outcome.cost["128"]["ioband"]["engine_us_per_request"] > 0


def test_mclock_quick(reports):
    d = data(reports, "mclock")
    m = d["reserve"]["mclock"]
    assert m["reservation_met"] >= 0.99 and m["g2_g3_ratio_error"] <= 0.02
    assert d["reserve"]["weight"]["reservation_met"] == 0.0  # weight alone cannot reserve
    c = d["caps"]["mclock"]
    assert c["g2_max"] <= 1500 + 4 and c["g3_after"] <= 2500 + 500
    assert 2500 < c["g3_first"] <= 3000  # the burst after idling, once


def test_hierarchy_quick(reports):
    assert data(reports, "hierarchy")["max_rel_error"] <= 0.02


def test_scale_groups_mclock_exact_quick(reports):
    for row in data(reports, "scale-groups")["groups"].values():
        assert row["mclock"]["class_max_rel_error"] <= 0.02


def test_knob_sweep_quick(reports):
    d = data(reports, "knob-sweep")
    assert d["io_throttle_users_30_20"]["32"]["eta"] > d["io_throttle_users_30_20"]["4"]["eta"]
    assert d["io_limit_partitions_40_20_10"]["8"]["eta"] < 0.5
    assert d["io_limit_hdd_shallow"]["1"]["1"]["b_io_share"] == pytest.approx(0.5, abs=0.01)


def test_fair_by_default_quick(reports):
    d = data(reports, "fair-by-default")
    res = d["results"]
    assert list(res) == ["ssd", "hdd", "throttle"]
    for model, rows in res.items():
        assert list(rows) == ["4/4/4", "8x4/4/4", "8x1/4/32", "1/8/32", "1v32"], model
        for case in ("4/4/4", "8x4/4/4"):
            none = rows[case]["none"]["share"]
            assert all(abs(s - 1 / 3) < 0.02 for s in none.values())  # FIFO: a third each
        assert rows["8x4/4/4"]["adaptive"]["max_rel_error"] <= 0.10  # the adaptive default
    assert d["models"]["throttle"]["queue_depth"] == 1  # serial: one request at a time


def test_same_seed_same_json_and_small_plots(tmp_path):
    module = registry()["range-bw-bands"]
    a = run_experiment(module, QUICK, tmp_path / "a")
    b = run_experiment(module, QUICK, tmp_path / "b")
    ja = (tmp_path / "a" / "range-bw-bands.json").read_bytes()
    assert ja == (tmp_path / "b" / "range-bw-bands.json").read_bytes()
    doc = json.loads(ja)
    assert doc["experiment"] == "range-bw-bands" and doc["seed"] == 1 and doc["quick"] is True
    assert all(c["ok"] for c in doc["checks"])
    png = tmp_path / "a" / "range-bw-bands.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size < 100_000
    timing = json.loads((tmp_path / "a" / "range-bw-bands.timing.json").read_text())
    assert timing["wall_seconds"] > 0
    assert {p.name for p in a.files} == {p.name for p in b.files}
    run_experiment(module, Context(quick=True, seed=2), tmp_path / "c")
    assert json.loads((tmp_path / "c" / "range-bw-bands.json").read_text())["seed"] == 2


def test_results_page(reports, tmp_path):
    out = tmp_path / "results"
    page = markdown_page(list(reports.values()), QUICK, out, tmp_path / "results.md")
    for name in names():
        assert f"## {name}" in page and f"(results/{name}.png)" in page
        assert f"[{name}.json](results/{name}.json)" in page
    assert "| experiment | what it shows | checks | wall time |" in page
    assert "Published numbers." in page


def test_cli_list_and_usage_errors(capsys):
    assert main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in names())
    assert main(["experiment"]) == 2
    assert "give an experiment name" in capsys.readouterr().err
    assert main(["experiment", "no-such"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ioband experiment: no experiment 'no-such' (known: partitions-40-20-10")
    assert "Traceback" not in err
    assert main(["experiment", "users-30-20", "--seed", "-1"]) == 2


def test_cli_runs_one_experiment(tmp_path, capsys):
    out = tmp_path / "res"
    page = tmp_path / "page.md"
    status = main(["experiment", "range-bw-bands", "--quick", "--out", str(out),
                   "--markdown", str(page)])  # fmt: skip
    assert status == 0
    text = capsys.readouterr().out
    assert "== range-bw-bands:" in text and "PASS" in text and "0 failed" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "range-bw-bands.json",
        "range-bw-bands.png",
        "range-bw-bands.timing.json",
    ]
    assert "## range-bw-bands" in page.read_text()
    assert not Path(f"{out}.md").exists()  # only `all` writes <OUT>.md by default
