"""Monitoring: a structured snapshot of every device and group (the control socket's ``stats``
op, ``ioband top``) and a Prometheus endpoint (``[metrics] listen``) built on it.

The endpoint is served from the daemon's own event loop by a minimal HTTP handler, so the
collector reads the engine on the loop thread, where it is safe to (the engine is not
thread-safe), at the moment of the scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ioband import __version__
from ioband.core.histogram import counts_from_sparse, prometheus_buckets

if TYPE_CHECKING:
    from ioband.control.daemon import Daemon
    from ioband.core.engine import Engine
    from ioband.core.model import Group

log = logging.getLogger("ioband.metrics")
DIRS = ("read", "write")
KB = 1024  # range-bw's bandwidths are in KB/s of 2 sectors (dm-ioband's unit)


def group_label(g: dict[str, Any]) -> str:
    """What a group is called in metrics and ``top``: its cgroup path when it was attached by
    path (the snapshot's ``name``, as status shows it), ``default`` for the default group (id
    -1), else its id."""
    name = g.get("name")
    if isinstance(name, str) and name.startswith("/"):
        return name
    return "default" if g["id"] == -1 else str(g["id"])


def group_counters(engine: Engine, g: Group) -> dict[str, Any]:
    """A group's status counters by name (``status --json``): what the legacy columns and the
    diskstats columns hold, times in ms."""
    ms = engine.ms
    busy = g.io_ticks + (engine.now - g.busy_since if g.active else 0)
    return {
        "id": g.id, "group": "default" if g.id == -1 else str(g.id),
        "reads": g.ios[0], "read_delayed": g.delayed[0], "read_sectors": g.sectors[0],
        "read_ms": ms(g.ticks[0]),
        "writes": g.ios[1], "write_delayed": g.delayed[1], "write_sectors": g.sectors[1],
        "write_ms": ms(g.ticks[1]),
        "held": g.blocked[0] + g.blocked[1], "io_ms": ms(busy),
        "time_in_queue_ms": ms(g.time_in_queue),
    }  # fmt: skip


def snapshot(daemon: Daemon) -> dict[str, Any]:
    """Every device, its device group's knobs and every group's counters (call on the loop)."""
    engine = daemon.engine
    ms = engine.ms
    devices = []
    cluster = getattr(daemon, "cluster", None)  # [cluster]: the Redis agent, or None
    for name in sorted(engine.devices):
        dev = engine.devices[name]
        dp = dev.dp
        family = getattr(dp.policy, "family", dp.policy_name)
        groups = []
        for g in dev.all_groups():
            item: dict[str, Any] = {
                "id": g.id,  # an id, or a cgroup path (groups attached by path)
                "name": g.label,  # how status names it: -1, the id, or /<cgroup path>
                "ios": list(g.ios),
                "bytes": [g.sectors[0] * 512, g.sectors[1] * 512],
                "delayed": list(g.delayed),
                "ticks_ms": [ms(g.ticks[0]), ms(g.ticks[1])],
                "held": g.blocked[0] + g.blocked[1],
                "latency": g.latency.sparse(),  # arrival to completion
                "hold": g.hold.sparse(),  # arrival to dispatch
            }
            if family == "range-bw":
                item["min_bw"] = g.min_bw
                item["max_bw"] = g.max_bw
            else:
                item["weight"] = g.weight
                item["tokens"] = getattr(g, "token", 0)
            groups.append(item)
        window = getattr(dp, "window", None)
        adaptive = getattr(dp, "adaptive", None)
        devices.append({
            "name": name,
            "device_group": dp.name,
            "policy": dp.policy_name,
            "type": dev.type_name,
            "io_throttle": dp.io_throttle,
            "io_limit": dp.io_limit,
            "inflight": dev.inflight,
            "suspended": bool(dev.suspended),
            **window_fields(window if window is not None else dp.io_limit, adaptive, engine.hz,
                            alone=bool(getattr(dp, "alone", False))),
            "cluster": cluster.device_status(name) if cluster is not None else None,
            "groups": groups,
        })  # fmt: skip
    clock = daemon.loop.time() - daemon._t0 if daemon.loop is not None else 0.0
    return {"now_ms": round(clock * 1000, 3), "devices": devices}


def window_fields(window: int, adaptive: Any, hz: int, alone: bool = False) -> dict[str, Any]:
    """The dispatch window of a device group: ``window`` requests of each class in flight at
    most; ``adaptive``: whether it is measured (``io_limit 0``) or pinned (``io_limit N``);
    ``alone``: one group has the store to itself, so the adaptive window is open (io_limit)
    and ``learned`` is what applies once the store is shared again.
    Measured only when adaptive (else None): ``latency_ms``, the last period's mean service
    latency from dispatch to completion; ``base_latency_ms``, the least recent one;
    ``store_queue``, the estimate of requests waiting inside the backing store;
    ``throughput``, completions per second. 0 until the first period is judged."""

    def number(name: str, scale: float = 1.0) -> float | None:
        value = getattr(adaptive, name, None)
        return None if value is None else round(value * scale, 3)

    per_ms = 1000 / hz
    return {
        "window": window,
        "adaptive": adaptive is not None,
        "alone": alone,
        "learned": getattr(adaptive, "value", None),
        "latency_ms": number("latency", per_ms),
        "base_latency_ms": number("base", per_ms),
        "store_queue": number("queued"),
        "throughput": number("throughput"),
    }


class EngineCollector:
    """Reads the daemon's engine at scrape time (the scrape runs on the daemon's loop)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Any]:
        snap = snapshot(self.daemon)
        glabels = ["device", "device_group", "group"]
        dlabels = ["device", "device_group"]
        requests = CounterMetricFamily(
            "ioband_requests", "Requests completed by direction", labels=[*glabels, "direction"]
        )
        nbytes = CounterMetricFamily(
            "ioband_bytes", "Bytes transferred by direction", labels=[*glabels, "direction"]
        )
        delayed = CounterMetricFamily(
            "ioband_delayed_requests", "Requests held back", labels=[*glabels, "direction"]
        )
        held = GaugeMetricFamily("ioband_held_requests", "Requests held now", labels=glabels)
        tokens = GaugeMetricFamily("ioband_tokens", "Tokens left (weight policies)", labels=glabels)
        weight = GaugeMetricFamily("ioband_weight", "Configured weight", labels=glabels)
        min_bw = GaugeMetricFamily("ioband_min_bw_bytes_per_second",
                                   "range-bw minimum bandwidth", labels=glabels)  # fmt: skip
        max_bw = GaugeMetricFamily("ioband_max_bw_bytes_per_second",
                                   "range-bw maximum bandwidth", labels=glabels)  # fmt: skip
        build = GaugeMetricFamily("ioband_build_info", "ioband's version (always 1)",
                                  labels=["version", "python"])  # fmt: skip
        build.add_metric([__version__, platform.python_version()], 1)
        inflight = GaugeMetricFamily("ioband_inflight_requests", "Requests in flight",
                                     labels=dlabels)  # fmt: skip
        throttle = GaugeMetricFamily("ioband_io_throttle", "Device group io_throttle",
                                     labels=dlabels)  # fmt: skip
        limit = GaugeMetricFamily("ioband_io_limit", "Device group io_limit", labels=dlabels)
        policy = InfoMetricFamily("ioband_policy", "Device group policy", labels=dlabels)
        window = GaugeMetricFamily("ioband_window_requests",
                                   "Dispatch window: requests of each class in flight at most",
                                   labels=dlabels)  # fmt: skip
        adaptive = GaugeMetricFamily("ioband_window_adaptive",
                                     "1: the window is measured (io_limit 0); 0: pinned",
                                     labels=dlabels)  # fmt: skip
        alone = GaugeMetricFamily("ioband_window_open",
                                  "1: one group has the store alone and the adaptive window is"
                                  " open (io_limit); 0: it applies", labels=dlabels)  # fmt: skip
        latency = GaugeMetricFamily("ioband_service_latency_seconds",
                                    "Mean service latency, dispatch to completion, last period"
                                    " (adaptive window)", labels=dlabels)  # fmt: skip
        store_queue = GaugeMetricFamily("ioband_store_queue_requests",
                                        "Estimated requests waiting inside the backing store"
                                        " (adaptive window)", labels=dlabels)  # fmt: skip
        cluster_share = GaugeMetricFamily(
            "ioband_cluster_share", "Cluster-wide device: this host's share of the cluster's"
            " active weight (1 on local control)", labels=dlabels)  # fmt: skip
        cluster_peers = GaugeMetricFamily(
            "ioband_cluster_peers", "Cluster-wide device: other daemons alive", labels=dlabels
        )
        cluster_local = GaugeMetricFamily(
            "ioband_cluster_local_control", "Cluster-wide device: 1 while on local control"
            " (Redis unreachable)", labels=dlabels)  # fmt: skip
        latency_hist = HistogramMetricFamily(
            "ioband_request_latency_seconds",
            "Requests by time from arrival at ioband to completion (held, queued and served)",
            labels=glabels,
        )
        hold_hist = HistogramMetricFamily(
            "ioband_request_hold_seconds",
            "Requests by time from arrival at ioband to dispatch to the store (held)",
            labels=glabels,
        )
        for dev in snap["devices"]:
            dl = [dev["name"], dev["device_group"]]
            inflight.add_metric(dl, dev["inflight"])
            throttle.add_metric(dl, dev["io_throttle"])
            limit.add_metric(dl, dev["io_limit"])
            policy.add_metric(dl, {"policy": dev["policy"]})
            window.add_metric(dl, dev["window"])
            adaptive.add_metric(dl, 1 if dev["adaptive"] else 0)
            alone.add_metric(dl, 1 if dev.get("alone") else 0)
            if dev["latency_ms"] is not None:
                latency.add_metric(dl, dev["latency_ms"] / 1000)
            if dev["store_queue"] is not None:
                store_queue.add_metric(dl, dev["store_queue"])
            if dev.get("cluster") is not None:
                cluster_share.add_metric(dl, dev["cluster"]["share"])
                cluster_peers.add_metric(dl, dev["cluster"]["peers"])
                cluster_local.add_metric(dl, 1 if dev["cluster"]["local_control"] else 0)
            for g in dev["groups"]:
                gl = [*dl, group_label(g)]
                for i, direction in enumerate(DIRS):
                    requests.add_metric([*gl, direction], g["ios"][i])
                    nbytes.add_metric([*gl, direction], g["bytes"][i])
                    delayed.add_metric([*gl, direction], g["delayed"][i])
                held.add_metric(gl, g["held"])
                for family, hist in ((latency_hist, g["latency"]), (hold_hist, g["hold"])):
                    family.add_metric(gl, prometheus_buckets(counts_from_sparse(hist)),
                                      hist["sum_ns"] / 1e9)  # fmt: skip
                if "weight" in g:
                    weight.add_metric(gl, g["weight"])
                    tokens.add_metric(gl, g["tokens"])
                else:
                    min_bw.add_metric(gl, g["min_bw"] * KB)
                    max_bw.add_metric(gl, g["max_bw"] * KB)
        yield from (build, requests, nbytes, delayed, held, tokens, weight, min_bw, max_bw,
                    inflight, throttle, limit, policy, window, adaptive, alone, latency,
                    store_queue, cluster_share, cluster_peers, cluster_local, latency_hist,
                    hold_hist)  # fmt: skip


class MetricsServer:
    """``GET /metrics`` (or ``/``) on HOST:PORT, answered on the daemon's loop."""

    def __init__(self, daemon: Daemon) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineCollector(daemon))
        self._server: asyncio.AbstractServer | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._client, host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10)
            while True:  # headers, up to the blank line
                line = await asyncio.wait_for(reader.readline(), 10)
                if line in (b"\r\n", b"\n", b""):
                    break
            parts = request.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            if len(parts) < 2 or parts[0] not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            elif path not in ("/", "/metrics"):
                status, ctype, body = "404 Not Found", "text/plain", b"see /metrics\n"
            else:
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
            head = (f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
            writer.write(head.encode() + (b"" if parts[:1] == ["HEAD"] else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, OSError):
            pass
        except Exception:  # a bug must not take the daemon down
            log.exception("metrics request failed")
        finally:
            writer.close()
