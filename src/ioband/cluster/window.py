"""The shared-backend window: a cluster-wide device group's dispatch window (PARDA).

Several hosts issue to one backend whose queue, first come first served, divides its service in
proportion to what each host keeps in flight. So each host's window must be proportional to the
weight it carries (``share``, from the coordinator), and the sum of the windows must be what the
backend needs for its throughput and not much more. PARDA (Gulati et al., FAST'09) gets the sum
from the latency the backend's queue shows every host alike: once a period,

    W  <-  (1 - GAMMA) W  +  GAMMA (LATENCY_TARGET / latency * W  +  BETA * hosts)

whose fixed point, for a backend serving ``X`` a second (``latency = W / X`` when saturated), is
``W = target * X + BETA * hosts``: what keeps the backend busy for ``target``, plus ``BETA`` a
host that the weights divide even when the backend is slow (PARDA's per-host ``beta``). The
second term keeps a host with a small share at a window of about its share of ``BETA * hosts``
rather than below one request, which only a duty cycle gives (in the simulator, 100 hosts
against a 20,000 IOPS backend with a fixed ``BETA`` of 8 left the hosts of the tenant spread
over 99 of them at the floor of one request each: 2:1 weights gave 50:50). When the backend is
not the bottleneck its latency stays below the target and ``target / latency`` grows ``W``
multiplicatively up to the most the hosts may issue (work-conserving).

PARDA runs that loop on each host's own window (``beta`` in proportion to the host's weight);
its fixed point makes windows proportional to the ``beta``s only if every host measures the same
latency to within ``BETA / W`` — under 2 % for a 50,000 IOPS array — and per-period measurement
noise of hosts with few requests in flight breaks that (in the simulator, 100 hosts divided the
backend 14:1 where the weights said 99:1). So here the loop runs on the *cluster's* window
``W``: each host updates its estimate, the hosts adopt the mean of their estimates at every
exchange (the coordinator), and each host's window is ``share * W``. The ratio between hosts is
then exact by construction; only the total follows the latency. The latency of the step is the
cluster's (the throughput-weighted mean of the hosts', which every exchange carries), not the
host's own: hosts that see different latencies would otherwise pull ``W`` apart. Three daemons
on a throttled loop device saw 35 ms (the deep host) and 10 ms (two shallow ones, at the
target, so growing ``W`` each step): their mean settled at 45 requests, above the deep host's
clients' 32, which then held nothing back and lost its share; on the cluster's latency it is 25.

The latency and the in-flight count are measured as the adaptive window does (Little's law over
what the engine issues and completes, :class:`~ioband.core.window.AdaptiveWindow`), whose
measurement this class reuses; only the decision differs. A host window is an integer, its fair
value often is not (5.75): the fraction is dithered over periods (error diffusion), so the mean
in flight is the fraction. A part below one request is a duty cycle over exchanges (one request
in flight for that fraction of the intervals), never below ``MIN_DUTY``: a host is paced, never
stalled, whatever Redis says. A host whose clients do not fill its window does not grow the
cluster's estimate (it would only hide their demand); the others' latency grows it if the
backend has room.

On local control (Redis unreachable, or a host alone) ``share`` is 1 and the estimate is the
host's own: PARDA for one host.
"""

from __future__ import annotations

import math

from ioband.core.window import MIN_COMPLETIONS, AdaptiveWindow

#: The backend latency the cluster aims at, in seconds. Above it windows shrink, below it they
#: grow. 10 ms keeps a saturated array's queue short; PARDA used 25 ms for disk arrays.
LATENCY_TARGET = 0.010
#: Requests a host adds to the cluster's in flight that the weights divide whatever the latency
#: (PARDA's beta): also what the cluster keeps in flight on a slow backend, per host.
BETA = 4.0
#: Smoothing of each step (PARDA's gamma).
GAMMA = 0.5
#: The least part of one request a host keeps in flight (a duty cycle: see ``_set_value``).
MIN_DUTY = 0.05


class SharedBackendWindow(AdaptiveWindow):
    """A cluster-wide device group's window. The agent sets ``share`` and adopts the cluster's
    mean estimate with :meth:`adopt`; the engine reads ``value`` as usual."""

    __slots__ = ("cap", "carry", "cluster_latency", "correction", "filled", "hosts", "share",
                 "target", "total")  # fmt: skip

    def __init__(self, hz: int, maximum: int, now: int = 0, target: float = LATENCY_TARGET) -> None:
        super().__init__(hz, maximum, now)
        self.binds_alone = True  # it divides the backend between hosts: one group or many
        self.share = 1.0
        self.hosts = 1  # hosts alive in the cluster, this one included (bounds ``total``)
        self.target = target * hz  # jiffies
        self.total = float(self.value)  # the cluster's window, requests in flight
        self.cap = float("inf")  # the least of the hosts' caps on ``total``
        self.correction = 1.0  # from the service this host got against its share
        self.carry = 0.0  # dithering: the fraction owed to the integer window
        self.filled = True  # the clients filled the window in the last judged period
        self.cluster_latency: float | None = None  # jiffies, from the last exchange

    def adopt(
        self,
        total: float | None,
        share: float,
        hosts: int,
        cap: float | None = None,
        correction: float = 1.0,
        latency: float | None = None,
    ) -> None:
        """An exchange's outcome: the cluster's mean window (None: keep this host's own), this
        host's share of the active weight, the hosts alive, the least of their caps on the
        cluster window, this host's correction (see the coordinator) and the cluster's
        latency (seconds; None: not known, this host steps on its own)."""
        self.cluster_latency = latency * self.hz if latency else None
        self.share = share
        self.hosts = max(1, hosts)
        self.correction = correction
        self.cap = cap if cap is not None and cap > 0 else float("inf")
        if total is not None and total > 0:
            self.total = total
        self.total = min(self.total, self._most())
        self._set_value(True)

    def _most(self) -> float:
        return max(1.0, min(float(self.maximum * self.hosts), self.cap))

    def _evaluate(self, now: int) -> None:
        elapsed = now - self.period_start
        done = self.done
        if done < MIN_COMPLETIONS and elapsed < self.hz:
            return  # too few to judge: extend the period
        latency = max(self.area / done, 1e-9)
        self.minima.append(latency)
        self.base = min(self.minima)
        self.latency = latency
        self.throughput = done * self.hz / max(1, elapsed)
        self.queued = (self.area - done * self.base) / elapsed
        used = self.area / elapsed  # mean in flight
        self.step(latency, used, self.full)
        self._restart(now)

    def step(self, latency: float, used: float, full: bool) -> None:
        """One period's PARDA step from the measured ``latency`` (jiffies), the mean in flight
        here ``used`` and whether requests waited for room here (``full``)."""
        total = self.total
        if self.cluster_latency is not None:
            latency = self.cluster_latency
        new = (1 - GAMMA) * total + GAMMA * (self.target / latency * total + BETA * self.hosts)
        self.filled = full or used >= self.value - 1
        if new > total and not self.filled:
            new = total  # the clients here do not fill their window: no sign it is too small
        self.total = min(self._most(), max(1.0, new))
        self._set_value()

    def _set_value(self, exchanged: bool = False) -> None:
        """The integer window for this host's part, ``share * correction * total``, dithered.
        A part of one request or more dithers at every call (its fraction); a part below one
        is a duty cycle, dithered only at exchanges (``exchanged``), which come at a steady
        interval: the window is one request for that fraction of the intervals and none for
        the rest. Without it a host's floor is one request in flight, and on a backend that
        serves a lone request at once (a token-bucket throttle releases what it has budget
        for without queueing it) that floor alone gave each of two such hosts 28 % of the
        backend where their weight said 17 %. It never goes below ``MIN_DUTY``: a host is
        paced, never stalled, whatever Redis says."""
        wanted = min(float(self.maximum), max(MIN_DUTY, self.share * self.correction * self.total))
        if wanted < 1.0:
            if exchanged:
                self.carry += wanted
                if self.carry >= 1.0:
                    self.carry -= 1.0
                    self.value = 1
                else:
                    self.value = 0
            return
        whole = math.floor(wanted)
        self.carry += wanted - whole
        if self.carry >= 1.0:
            self.carry -= 1.0
            whole += 1
        self.value = max(1, min(self.maximum, whole))
