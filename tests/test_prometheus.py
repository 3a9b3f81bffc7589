"""The Prometheus endpoint ([metrics] listen) scraped after real NBD I/O, and its config key."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import ioband
from ioband.control.config import ConfigError, load_config
from ioband.control.embedded import EmbeddedDaemon
from ioband.control.metrics import snapshot
from tests.conftest import require_real

SIZE = 16 << 20


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def daemon(tmp_path: Path):
    for name in ("disk1", "disk2"):
        with open(tmp_path / f"{name}.img", "wb") as f:
            f.truncate(SIZE)
    sock = tmp_path / "nbd.sock"
    config = load_config(
        {
            "nbd": {"unix_socket": str(sock)},
            "metrics": {"listen": "127.0.0.1:0"},
            "device": [
                {"name": "ioband1",
                 "table": f"0 {SIZE // 512} ioband {tmp_path}/disk1.img 1 0 0 none weight 0 :40"},
                {"name": "ioband2",
                 "table": f"0 {SIZE // 512} ioband {tmp_path}/disk2.img 2 2 5 user range-bw 0"
                          " :100:200",
                 "messages": ["attach 1000", "range-bw 1000:300:600"]},
            ],
        }
    )  # fmt: skip
    with EmbeddedDaemon(config) as d:
        d.sock = str(sock)
        yield d


def test_scrape_after_qemu_io(daemon):
    qemu_io = shutil.which("qemu-io")
    require_real(qemu_io is not None, "qemu-io is not installed (scripts/install.sh installs it)")
    port = daemon.daemon.metrics.port
    assert port
    argv = [qemu_io, "-f", "raw", "-c", "write -P 0xab 0 1M", "-c", "read -P 0xab 0 64k",
            "-c", "read -P 0xab 64k 64k", f"nbd+unix:///ioband1?socket={daemon.sock}"]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    m = scrape(port)
    g = (("device", "ioband1"), ("device_group", "1"), ("group", "default"))

    def v(name: str, labels: tuple = g, **extra: str) -> float:
        return m[(name, tuple(sorted((*labels, *extra.items()))))]

    writes = v("ioband_requests_total", direction="write")
    assert writes >= 1
    assert v("ioband_bytes_total", direction="write") == 1 << 20
    assert v("ioband_bytes_total", direction="read") == 128 << 10
    assert v("ioband_requests_total", direction="read") >= 2
    assert v("ioband_delayed_requests_total", direction="read") >= 0
    assert v("ioband_weight") == 40
    assert ("ioband_tokens", g) in m
    assert v("ioband_held_requests") == 0
    build = [labels for name, labels in m if name == "ioband_build_info"]
    assert build and dict(build[0])["version"] == ioband.__version__
    # every completed request is in the latency histogram, and held ones in the hold one
    done = writes + v("ioband_requests_total", direction="read")
    assert v("ioband_request_latency_seconds_count") == done
    assert v("ioband_request_latency_seconds_bucket", le="+Inf") == done
    assert v("ioband_request_hold_seconds_count") == done
    assert 0 < v("ioband_request_latency_seconds_sum") < 60
    assert v("ioband_request_hold_seconds_sum") <= v("ioband_request_latency_seconds_sum")
    edges = sorted((float(lbl[1]), value) for (name, labels), value in m.items()
                   if name == "ioband_request_latency_seconds_bucket" and ("device", "ioband1")
                   in labels for lbl in labels if lbl[0] == "le")  # fmt: skip
    assert [n for _, n in edges] == sorted(n for _, n in edges)  # cumulative
    dl = (("device", "ioband1"), ("device_group", "1"))
    assert v("ioband_inflight_requests", dl) == 0
    assert v("ioband_io_throttle", dl) >= 0
    assert v("ioband_policy_info", dl, policy="weight") == 1
    # io_limit 0: an adaptive window, with the latency and queue it is decided from
    assert v("ioband_window_adaptive", dl) == 1
    assert 1 <= v("ioband_window_requests", dl) <= v("ioband_io_limit", dl)
    snap = daemon.call(lambda: snapshot(daemon.daemon))
    (dev,) = [d for d in snap["devices"] if d["name"] == "ioband1"]
    assert v("ioband_window_requests", dl) == dev["window"]
    # one group alone opens the window; the gauge says so, the snapshot keeps what was learnt
    assert v("ioband_window_open", dl) == (1 if dev["alone"] else 0)
    assert dev["learned"] is not None and 1 <= dev["learned"] <= dev["io_limit"]
    assert v("ioband_service_latency_seconds", dl) == pytest.approx(dev["latency_ms"] / 1000)
    assert v("ioband_service_latency_seconds", dl) >= 0
    assert v("ioband_store_queue_requests", dl) == pytest.approx(dev["store_queue"])
    # the range-bw device: its band per group, its knobs, nothing transferred
    g2 = (("device", "ioband2"), ("device_group", "2"), ("group", "1000"))
    assert v("ioband_min_bw_bytes_per_second", g2) == 300 * 1024  # KB/s of 2 sectors
    assert v("ioband_max_bw_bytes_per_second", g2) == 600 * 1024
    assert not any(name.endswith("_kbps") for name, _ in m)  # base units only
    assert v("ioband_bytes_total", g2, direction="read") == 0
    dl2 = (("device", "ioband2"), ("device_group", "2"))
    assert v("ioband_io_throttle", dl2) == 2
    assert v("ioband_io_limit", dl2) == 5
    assert v("ioband_policy_info", dl2, policy="range-bw") == 1
    # io_limit 5: the window is pinned to it, and no latency is measured
    assert v("ioband_window_adaptive", dl2) == 0
    assert v("ioband_window_requests", dl2) == 5
    assert ("ioband_service_latency_seconds", dl2) not in m
    assert ("ioband_store_queue_requests", dl2) not in m


def test_other_paths_and_methods(daemon):
    port = daemon.daemon.metrics.port
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=10)
    assert err.value.code == 404
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 405


def test_no_endpoint_without_the_key(tmp_path):
    config = load_config({"nbd": {"unix_socket": str(tmp_path / "s")}})
    assert config.metrics_listen is None
    with EmbeddedDaemon(config) as d:
        assert d.daemon.metrics.port is None


@pytest.mark.parametrize("value", ["9469", "host:port", "h:70000", 9469, ""])
def test_listen_is_checked(value):
    with pytest.raises(ConfigError) as err:
        load_config({"metrics": {"listen": value}})
    assert err.value.key == "metrics.listen"


def test_unknown_metrics_key():
    with pytest.raises(ConfigError) as err:
        load_config({"metrics": {"listn": "127.0.0.1:1"}})
    assert err.value.key == "metrics.listn"
    assert "listen" in err.value.rule


def test_listen_parsed():
    assert load_config({"metrics": {"listen": "0.0.0.0:9469"}}).metrics_listen == ("0.0.0.0", 9469)


def test_window_metrics_follow_the_controller(daemon):
    """The gauges read the live controller: set its state, scrape, and see it (seconds for the
    latency, which the engine measures in jiffies)."""
    engine = daemon.daemon.engine
    dl = (("device", "ioband1"), ("device_group", "1"))

    def set_state() -> float:
        dp = engine.device("ioband1").dp
        dp.window = 3
        dp.adaptive.latency = engine.hz * 0.025  # 25 ms, in jiffies
        dp.adaptive.queued = 1.5
        return dp.adaptive.latency_ms()

    assert daemon.call(set_state) == pytest.approx(25)
    m = scrape(daemon.daemon.metrics.port)
    assert m[("ioband_window_requests", dl)] == 3
    assert m[("ioband_service_latency_seconds", dl)] == pytest.approx(0.025)
    assert m[("ioband_store_queue_requests", dl)] == pytest.approx(1.5)


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def test_promtool_checks_the_scrape(daemon):
    """``promtool check metrics`` (Debian's prometheus package) finds nothing to lint: names,
    units in base units, _total counters, histograms with help."""
    promtool = shutil.which("promtool")
    require_real(promtool is not None, "promtool is not installed (scripts/install.sh does)")
    text = scrape_text(daemon.daemon.metrics.port)
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip() == "" and res.stderr.strip() == "", (
        res.stdout + res.stderr
    )
    # and Prometheus's own parser reads it whole
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["ioband_request_latency_seconds"].type == "histogram"
    assert families["ioband_request_hold_seconds"].type == "histogram"


DASHBOARD = Path(__file__).resolve().parent.parent / "examples" / "grafana-dashboard.json"


def test_every_metric_of_the_dashboard_exists_in_a_real_scrape(daemon):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    named = {name for e in exprs for name in re.findall(r"\bioband_[a-z_]+\b", e)}
    assert len(named) >= 15
    text = scrape_text(daemon.daemon.metrics.port)
    samples = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    assert not named - samples, f"the dashboard names metrics no scrape has: {named - samples}"
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"] and panel["gridPos"]["w"] <= 24


def grafana_queries(dashboard: dict) -> list[str]:
    """Every panel's PromQL with Grafana's variables given values: all devices, a 10 s rate."""
    return [t["expr"].replace("$device", ".*").replace("$__rate_interval", "10s")
            for p in dashboard["panels"] for t in p["targets"]]  # fmt: skip


def test_the_dashboard_queries_answer_on_a_real_prometheus(daemon, tmp_path):
    """A real Prometheus (Debian's) scrapes the daemon every second during real I/O; every
    query of the dashboard then parses and returns series."""
    prometheus = shutil.which("prometheus")
    require_real(prometheus is not None, "prometheus is not installed (scripts/install.sh does)")
    qemu_io = shutil.which("qemu-io")
    require_real(qemu_io is not None, "qemu-io is not installed (scripts/install.sh installs it)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n  - job_name: ioband\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{daemon.daemon.metrics.port}']\n"
    )
    server = subprocess.Popen([prometheus, f"--config.file={config}",
                               f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> dict:
        url = f"{api}/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())

    try:
        deadline = time.monotonic() + 60
        uri = f"nbd+unix:///ioband1?socket={daemon.sock}"
        while time.monotonic() < deadline:  # I/O until Prometheus has rates of it
            subprocess.run([qemu_io, "-f", "raw", "-c", "write -P 1 0 1M", "-c", "read 0 1M", uri],
                           check=True, capture_output=True, timeout=60)  # fmt: skip
            with contextlib.suppress(OSError):
                got = query("rate(ioband_request_latency_seconds_count[10s]) > 0")
                if len(got["data"]["result"]) >= 1:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("Prometheus never saw a latency rate")
        dashboard = json.loads(DASHBOARD.read_text())
        empty = []
        for expr in grafana_queries(dashboard):
            answer = query(expr)
            assert answer["status"] == "success", (expr, answer)
            if not answer["data"]["result"]:
                empty.append(expr)
        assert not empty, f"queries with no series: {empty}"
    finally:
        server.terminate()
        server.wait(timeout=30)
