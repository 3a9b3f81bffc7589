"""The cluster agent: the daemon's exchange with Redis, off the data path.

Every ``interval`` one pipelined round trip per daemon, whatever the number of devices:

    for each cluster-wide device:  HSET    ioband:<cluster>:<device>  <host>  <record>
                                   PEXPIRE ioband:<cluster>:<device>  <ttl>
                                   HGETALL ioband:<cluster>:<device>
                                   (HDEL of the fields of hosts long dead, when there are any)

The hash holds one field per host (Redis 7.0 has no per-field expiry, so a dead host is found by
its record no longer changing: the coordinator's freshness, by this host's clock; its field is
deleted later by whoever sees it). The key's TTL removes the whole hash once every daemon of the
cluster is gone. What is read goes to each device's :class:`Coordinator`; what it concludes is
applied to the engine: remote service charged to the policy, share and cluster window given to
the :class:`SharedBackendWindow`.

No request waits on any of it: the exchange is a task of the daemon's event loop, each round
bounded by a timeout of one interval. Redis unreachable (refused, timed out, an error reply) →
each device falls back to local control once the last good exchange is an interval old, logged
once; the agent tries again every interval and logs the return once. The Redis URL carries
authentication and TLS as the ``redis`` package reads it: ``redis://:PASSWORD@host:6379/0``,
``redis://USER:PASSWORD@host``, ``rediss://host:6380?ssl_ca_certs=/etc/ioband/redis-ca.pem``
(TLS, server verified), ``unix:///run/redis.sock?password=...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ioband.cluster.coordinator import Coordinator, Exchange, GroupService
from ioband.cluster.window import LATENCY_TARGET, SharedBackendWindow
from ioband.core.grammar import ID_ANY, key_text
from ioband.core.model import Device, Group
from ioband.core.window import AdaptiveWindow

log = logging.getLogger("ioband.cluster")

#: The key of a device's hash lives this many intervals (at least a second) after the last
#: write of any host.
TTL_INTERVALS = 20
DEFAULT_GROUP_NAME = "default"


def group_name(g: Group) -> str:
    """A group's name across hosts: its key as the grammar writes it (a uid, a gid, a cgroup
    path ``/machine.slice/vm1.scope``), ``default`` for the default group. Never an inode: the
    ``cgroup`` type's numeric ids are local, its path keys are not."""
    return DEFAULT_GROUP_NAME if g.id == ID_ANY else key_text(g.id)


@dataclass(frozen=True)
class ClusterSettings:
    redis: str  # the URL (redis://, rediss://, unix://), with its credentials
    name: str  # the cluster's name: the keys' namespace
    interval: float  # seconds between exchanges
    host: str  # this daemon's name in the cluster (unique)
    latency_target: float = LATENCY_TARGET  # seconds


@dataclass
class _Member:
    """One cluster-wide device on this daemon."""

    coordinator: Coordinator
    window: SharedBackendWindow | None = None
    served: dict[str, float] = field(default_factory=dict)  # service_cost at the last record


class ClusterAgent:
    """Runs the exchange for the cluster-wide devices of one daemon.

    ``engine``: the daemon's engine; ``devices()``: the names of the devices that are
    cluster-wide now (configuration reloads change it); ``now()``: the engine's time in
    jiffies; ``pump()``: do what the engine released (the daemon's)."""

    def __init__(
        self,
        settings: ClusterSettings,
        engine: Any,
        devices: Callable[[], list[str]],
        now: Callable[[], int],
        pump: Callable[[], None],
        threads: int = 1 << 30,
        client: Any = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.devices = devices
        self.now = now
        self.pump = pump
        self.threads = threads  # the daemon's I/O threads: what it can keep in flight at most
        self.members: dict[str, _Member] = {}
        self.redis = client
        self.connected: bool | None = None  # None: no exchange tried yet
        self.last_exchange: float | None = None  # loop time of the last good one
        self.last_error = ""
        self.rounds = 0
        self.commands = 0  # Redis commands sent, in all
        self._task: asyncio.Task[None] | None = None

    def key(self, device: str) -> str:
        return f"ioband:{self.settings.name}:{device}"

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self.redis is None:
            import redis.asyncio as aioredis

            timeout = max(0.05, self.settings.interval)
            self.redis = aioredis.Redis.from_url(
                self.settings.redis,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry_on_timeout=False,
                health_check_interval=0,
            )
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.settings.interval
        due = loop.time()
        while True:
            try:
                await self.exchange_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the exchange, nor the daemon
                log.exception("cluster exchange")
            due += interval
            now = loop.time()
            if due < now:
                due = now  # a late round (a slow Redis): do not make up for it in a burst
            await asyncio.sleep(due - now)

    # -- one round ---------------------------------------------------------------------------
    def _sync_members(self) -> list[tuple[str, _Member, Device]]:
        """The cluster-wide devices now, each with its coordinator and shared-backend window
        (installed when the device's window is adaptive; a pinned io_limit is left alone)."""
        engine = self.engine
        names = [n for n in self.devices() if n in engine.devices]
        for gone in set(self.members) - set(names):
            window = self.members.pop(gone).window
            if gone in engine.devices and window is not None:
                dp = engine.devices[gone].dp
                if dp.adaptive is window:  # no longer cluster-wide: a host's own window again
                    engine.set_window_controller(
                        gone, AdaptiveWindow(engine.hz, dp.io_limit, engine.now)
                    )
        out = []
        for name in names:
            member = self.members.get(name)
            if member is None:
                member = self.members[name] = _Member(
                    Coordinator(self.settings.host, self.settings.interval)
                )
            dev = engine.devices[name]
            dp = dev.dp
            if member.window is None or dp.adaptive is not member.window:
                member.window = None
                if dp.adaptive is not None:
                    window = SharedBackendWindow(
                        engine.hz, dp.io_limit, engine.now, self.settings.latency_target
                    )
                    engine.set_window_controller(name, window)
                    member.window = window
            out.append((name, member, dev))
        return out

    def _groups(self, member: _Member, dev: Device) -> dict[str, GroupService]:
        """What this host publishes for each of the device's groups."""
        policy = dev.dp.policy
        groups = {}
        served = member.served
        for g in (dev.head, *dev.groups.values()):
            name = group_name(g)
            cost = policy.service_cost(g)
            moved = cost != served.get(name)
            served[name] = cost
            active = moved or g.active > 0 or g.blocked[0] + g.blocked[1] > 0
            groups[name] = GroupService(float(g.weight), active, g.ios[0] + g.ios[1], cost,
                                        policy.reserved_cost(g))  # fmt: skip
        return groups

    async def exchange_once(self) -> None:
        members = self._sync_members()
        if not members:
            return
        loop = asyncio.get_running_loop()
        interval = self.settings.interval
        host = self.settings.host
        ttl = max(1000, int(TTL_INTERVALS * interval * 1000))
        pipe = self.redis.pipeline(transaction=False)
        sent = 0
        for name, member, dev in members:
            window = member.window
            total = window.total if window is not None else 0.0
            most = float(min(window.maximum, self.threads)) if window is not None else 1e9
            latency = window.latency / window.hz if window is not None else 0.0
            throughput = window.throughput if window is not None else 0.0
            record = member.coordinator.record(
                self._groups(member, dev), total, most, latency, throughput
            )
            key = self.key(name)
            pipe.hset(key, host, record)
            pipe.pexpire(key, ttl)
            pipe.hgetall(key)
            sent += 3
        self.rounds += 1
        try:
            replies = await asyncio.wait_for(pipe.execute(), timeout=interval)
        except Exception as err:  # refused, reset, timed out, an error reply: all the same here
            self._failed(loop.time(), members, err)
            return
        self.commands += sent
        now = loop.time()
        purge_pipe = None
        for i, (name, member, dev) in enumerate(members):
            records = {_text(k): v for k, v in replies[3 * i + 2].items()}
            filled = member.window.filled if member.window is not None else True
            outcome = member.coordinator.absorb(now, records, filled)
            self._apply(name, member, dev, outcome)
            if outcome.purge:
                if purge_pipe is None:
                    purge_pipe = self.redis.pipeline(transaction=False)
                purge_pipe.hdel(self.key(name), *outcome.purge)
        if self.connected is False:
            peers = sum(len(m.coordinator.alive(now)) for _, m, _ in members)
            log.warning("cluster %s: Redis reachable again; cluster control (%d peer(s))",
                        self.settings.name, peers)  # fmt: skip
        self.connected = True
        self.last_exchange = now
        if self.rounds % 20 == 0 and log.isEnabledFor(logging.DEBUG):
            for name, member, _dev in members:
                w, c = member.window, member.coordinator
                if w is not None:
                    ratio = c.latency / c.cluster_latency if c.cluster_latency else 0.0
                    log.debug("cluster %s: share %.3f, correction %.3f (latency ratio %.3f, "
                              "trim %.3f), cluster window %.1f (cap %.1f), window %d, latency "
                              "%.1f ms, %d peer(s)", name, w.share, c.correction, ratio, c.trim,
                              w.total, w.cap, w.value, w.latency_ms(),
                              len(c.alive(now)))  # fmt: skip
        if purge_pipe is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(purge_pipe.execute(), timeout=interval)

    def _failed(self, now: float, members: list[tuple[str, _Member, Device]], err: BaseException
                ) -> None:  # fmt: skip
        self.last_error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        # Refused or reset (Redis is down, not slow): local control at once.
        refused = isinstance(err, ConnectionError | OSError) or type(err).__name__ in (
            "ConnectionError",
            "BusyLoadingError",
            "AuthenticationError",
        )
        started = False
        for name, member, dev in members:
            outcome = member.coordinator.failed(now, refused)
            if outcome is not None:
                started = True
                self._apply(name, member, dev, outcome)
        if started and self.connected is not False:
            log.warning("cluster %s: Redis unreachable (%s); local control until it returns",
                        self.settings.name, self.last_error)  # fmt: skip
            self.connected = False

    def _apply(self, name: str, member: _Member, dev: Device, outcome: Exchange) -> None:
        """Charge the remote service, set the window; release what it lets go."""
        dp = dev.dp
        policy = dp.policy
        if outcome.charges:
            by_name = {group_name(g): g for g in (dev.head, *dev.groups.values())}
            for group, cost in outcome.charges.items():
                g = by_name.get(group)
                if g is not None:
                    policy.charge_remote(g, cost, outcome.reserved.get(group, 0.0))
        window = member.window
        if window is not None and dp.adaptive is window:
            window.adopt(outcome.total, outcome.share, outcome.peers + 1, outcome.cap,
                         outcome.correction, outcome.latency)  # fmt: skip
            dp.window = window.value
        self.engine.kick(dp)
        self.engine.advance(self.now())
        self.pump()

    # -- what status and metrics show ------------------------------------------------------
    def device_status(self, name: str) -> dict[str, Any] | None:
        """A cluster-wide device's state for ``ioband stats``, metrics and top (None: the device
        is not cluster-wide): peers alive, this host's share, correction and trim, the cluster's
        window, whether it is on local control, and the age of the last good exchange."""
        member = self.members.get(name)
        if member is None:
            return None
        now = asyncio.get_running_loop().time()
        c, w = member.coordinator, member.window
        return {
            "cluster": self.settings.name,
            "host": self.settings.host,
            "peers": len(c.alive(now)),
            "share": round(c.share, 4),
            "correction": round(c.correction, 4),  # by latency
            "trim": round(c.trim, 4),  # by service; the window is share x both x cluster window
            "cluster_window": round(w.total, 2) if w is not None else None,
            "local_control": c.fallback or not self.connected,
            "last_exchange_s": (
                round(now - self.last_exchange, 3) if self.last_exchange is not None else None
            ),
            "malformed_records": c.malformed,
            "redis_commands": self.commands,
        }


def _text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key
