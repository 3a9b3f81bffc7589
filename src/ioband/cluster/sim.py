"""A cluster in virtual time: N hosts' windows and coordinators against one shared backend.

The parts under test are the real ones — :class:`~ioband.cluster.window.SharedBackendWindow`
(PARDA) and :class:`~ioband.cluster.coordinator.Coordinator` (what is exchanged and what is
concluded from it) — driven by a discrete-event model of what surrounds them:

- the backend: one first-come-first-served queue serving ``iops`` requests a second (the
  throttled array of the real must-show), shared by every host;
- each host: its tenants' clients, closed loops keeping ``depth`` requests outstanding, and a
  dispatcher that issues held requests while the window has room;
- Redis: each host exchanges every ``interval`` (phases spread at random); the pipelined round
  trip takes ``rtt`` and is lost with probability ``loss`` (the coordinator then sees a failed
  exchange an interval later, as the agent does on a timeout); while Redis is down
  (``redis_down``) every exchange is refused at once, as a connection is. Three commands per
  exchange (HSET of the host's record, PEXPIRE of the key, HGETALL), counted as Redis
  operations.

It answers how accurately hosts divide the backend by the weights they carry, at which exchange
interval, and what Redis load that costs — the questions that decide whether the design scales,
in seconds instead of a rack of machines.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from ioband.cluster.coordinator import Coordinator, GroupService
from ioband.cluster.window import SharedBackendWindow

HZ = 1_000_000  # the windows' jiffies: microseconds, so latency is measured finely
COMMANDS_PER_EXCHANGE = 3


@dataclass(frozen=True)
class Placement:
    """One tenant: its weight and the hosts its clients run on."""

    tenant: str
    weight: float
    hosts: tuple[int, ...]


@dataclass(frozen=True)
class ClusterRun:
    hosts: int
    placements: tuple[Placement, ...]
    iops: float  # the backend's capacity
    interval: float = 0.050
    rtt: float = 0.0005
    loss: float = 0.0
    depth: int = 64  # each client's outstanding requests
    duration: float = 8.0
    warmup: float = 3.0
    cluster: bool = True  # False: every host on local control (share 1), the baseline
    seed: int = 1
    maximum: int = 256  # the windows' io_limit
    redis_down: tuple[float, float] | None = None  # (from, to): every exchange fails


@dataclass
class ClusterResult:
    served: dict[str, int]  # completions per tenant in the measured span
    span: float
    redis_ops: int  # commands in the whole run
    exchanges: int
    windows: list[float] = field(default_factory=list)  # each host's mean window (measured)
    timeline: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    def share(self, tenant: str) -> float:
        total = sum(self.served.values())
        return self.served.get(tenant, 0) / total if total else 0.0

    @property
    def throughput(self) -> float:
        return sum(self.served.values()) / self.span

    @property
    def redis_ops_per_second(self) -> float:
        return self.redis_ops / self.span_all

    span_all: float = 1.0


class _Host:
    def __init__(self, index: int, run: ClusterRun, weights: dict[str, float]) -> None:
        self.index = index
        self.window = SharedBackendWindow(HZ, run.maximum)
        self.coordinator = Coordinator(f"host{index}", run.interval)
        self.weights = weights  # tenant -> weight, the tenants with clients here
        self.held: deque[str] = deque()  # held requests (their tenants), first come first out
        self.inflight = 0
        self.ios = dict.fromkeys(weights, 0)
        self.window_area = 0.0
        self.last = 0.0


def simulate(run: ClusterRun, sample: float = 0.0) -> ClusterResult:
    """Run ``run`` and measure each tenant's completions after the warm-up."""
    rng = random.Random(run.seed)
    tenants_of: list[dict[str, float]] = [{} for _ in range(run.hosts)]
    for p in run.placements:
        for index in p.hosts:
            tenants_of[index][p.tenant] = p.weight
    hosts = [_Host(i, run, tenants_of[i]) for i in range(run.hosts)]
    events: list[tuple[float, int, Callable[[float], None]]] = []
    seq = 0

    def at(t: float, fn: Callable[[float], None]) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, fn))

    backend: deque[tuple[_Host, str]] = deque()
    busy = False
    service = 1.0 / run.iops
    served = {p.tenant: 0 for p in run.placements}
    timeline: list[tuple[float, dict[str, int]]] = []
    redis: dict[str, str | bytes] = {}
    ops = 0
    exchanges = 0

    def jiffies(t: float) -> int:
        return int(t * HZ)

    def account(h: _Host, t: float) -> None:
        if t > run.warmup:
            h.window_area += h.window.value * (t - max(h.last, run.warmup))
        h.last = t

    def dispatch(h: _Host, t: float) -> None:
        nonlocal busy
        while h.held and h.inflight < h.window.value:
            tenant = h.held.popleft()
            h.inflight += 1
            h.window.issued(jiffies(t))
            backend.append((h, tenant))
            if not busy:
                busy = True
                at(t + service, finish)
        if h.held:
            h.window.wanted_more()

    def finish(t: float) -> None:
        nonlocal busy
        h, tenant = backend.popleft()
        h.inflight -= 1
        account(h, t)
        h.window.completed(jiffies(t))
        h.ios[tenant] += 1
        if t >= run.warmup:
            served[tenant] += 1
        h.held.append(tenant)  # the closed-loop client sends its next request at once
        dispatch(h, t)
        if backend:
            at(t + service, finish)
        else:
            busy = False

    def exchange(h: _Host) -> Callable[[float], None]:
        def send(t: float) -> None:
            nonlocal ops, exchanges
            groups = {
                k: GroupService(w, True, h.ios[k], float(h.ios[k])) for k, w in h.weights.items()
            }
            w = h.window
            text = h.coordinator.record(groups, w.total, w.maximum, w.latency / HZ, w.throughput)
            down = run.redis_down is not None and run.redis_down[0] <= t < run.redis_down[1]
            lost = not down and rng.random() < run.loss
            if down:  # refused at once: the agent sees a connection error

                def refused(t2: float) -> None:
                    outcome = h.coordinator.failed(t2, refused=True)
                    if outcome is not None:
                        h.window.adopt(None, outcome.share, 1)
                        dispatch(h, t2)

                at(t + run.rtt, refused)
            elif not lost:
                ops += COMMANDS_PER_EXCHANGE
                exchanges += 1
                redis[h.coordinator.host] = text
                snapshot = dict(redis)

                def reply(t2: float) -> None:
                    outcome = h.coordinator.absorb(t2, snapshot, h.window.filled)
                    h.window.adopt(outcome.total, outcome.share, outcome.peers + 1,
                                   outcome.cap, outcome.correction, outcome.latency)  # fmt: skip
                    dispatch(h, t2)  # as the agent kicks the engine: the window may have grown

                at(t + run.rtt, reply)
            else:

                def timeout(t2: float) -> None:
                    outcome = h.coordinator.failed(t2)
                    if outcome is not None:
                        h.window.adopt(None, outcome.share, 1)
                        dispatch(h, t2)

                at(t + run.interval, timeout)
            at(t + run.interval, send)

        return send

    for h in hosts:
        for tenant in h.weights:
            h.held.extend([tenant] * run.depth)
        if run.cluster:
            at(rng.random() * run.interval, exchange(h))
        at(0.0, partial(dispatch, h))

    if sample > 0:

        def snap(t: float) -> None:
            timeline.append((round(t, 6), dict(served)))
            at(t + sample, snap)

        at(sample, snap)

    while events:
        t, _, fn = heapq.heappop(events)
        if t > run.duration:
            break
        fn(t)
    span = run.duration - run.warmup
    for h in hosts:
        account(h, run.duration)
    result = ClusterResult(
        served=served,
        span=span,
        redis_ops=ops,
        exchanges=exchanges,
        windows=[h.window_area / span for h in hosts],
        timeline=timeline,
    )
    result.span_all = run.duration
    return result


def split(hosts: int, weight_a: float, weight_b: float) -> tuple[Placement, ...]:
    """The must-show's placement: tenant A alone on host 0, tenant B on every other host."""
    return (
        Placement("A", weight_a, (0,)),
        Placement("B", weight_b, tuple(range(1, hosts))),
    )
