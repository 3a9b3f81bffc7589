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
rather than below one request, where a window cannot go (in the simulator, 100 hosts against a
20,000 IOPS backend with a fixed ``BETA`` of 8 left the hosts of the tenant spread over 99 of
them at the floor of one request each: 2:1 weights gave 50:50). When the backend is not the
bottleneck its latency stays below the target and ``target / latency`` grows ``W``
multiplicatively up to the most the hosts may issue (work-conserving).

PARDA runs that loop on each host's own window (``beta`` in proportion to the host's weight);
its fixed point makes windows proportional to the ``beta``s only if every host measures the same
latency to within ``BETA / W`` — under 2 % for a 50,000 IOPS array — and per-period measurement
noise of hosts with few requests in flight breaks that (in the simulator, 100 hosts divided the
backend 14:1 where the weights said 99:1). So here the loop runs on the *cluster's* window
``W``: each host updates its estimate from its own latency, the hosts adopt the mean of their
estimates at every exchange (the coordinator), and each host's window is ``share * W``. The
ratio between hosts is then exact by construction; only the total follows the latency.

The latency and the in-flight count are measured as the adaptive window does (Little's law over
what the engine issues and completes, :class:`~ioband.core.window.AdaptiveWindow`), whose
measurement this class reuses; only the decision differs. A host window is an integer, its fair
value often is not (5.75): the fraction is dithered over periods (error diffusion), so the mean
in flight is the fraction. A window never goes below one request: a host is never stalled,
whatever Redis says. A host whose clients do not fill its window does not grow the cluster's
estimate (it would only hide their demand); the others' latency grows it if the backend has room.

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


class SharedBackendWindow(AdaptiveWindow):
    """A cluster-wide device group's window. The agent sets ``share`` and adopts the cluster's
    mean estimate with :meth:`adopt`; the engine reads ``value`` as usual."""

    __slots__ = ("cap", "carry", "correction", "filled", "hosts", "share", "target", "total")

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

    def adopt(
        self,
        total: float | None,
        share: float,
        hosts: int,
        cap: float | None = None,
        correction: float = 1.0,
    ) -> None:
        """An exchange's outcome: the cluster's mean window (None: keep this host's own), this
        host's share of the active weight, the hosts alive, the least of their caps on the
        cluster window, and this host's correction (see the coordinator)."""
        self.share = share
        self.hosts = max(1, hosts)
        self.correction = correction
        self.cap = cap if cap is not None and cap > 0 else float("inf")
        if total is not None and total > 0:
            self.total = total
        self.total = min(self.total, self._most())
        self._set_value()

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
        new = (1 - GAMMA) * total + GAMMA * (self.target / latency * total + BETA * self.hosts)
        self.filled = full or used >= self.value - 1
        if new > total and not self.filled:
            new = total  # the clients here do not fill their window: no sign it is too small
        self.total = min(self._most(), max(1.0, new))
        self._set_value()

    def _set_value(self) -> None:
        wanted = min(float(self.maximum), max(1.0, self.share * self.correction * self.total))
        whole = math.floor(wanted)
        self.carry += wanted - whole
        if self.carry >= 1.0:
            self.carry -= 1.0
            whole += 1
        self.value = max(1, min(self.maximum, whole))
