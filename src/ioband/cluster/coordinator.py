"""The cluster coordinator of one cluster-wide device group on one host: a sans-I/O state machine.

Several hosts' daemons schedule one shared backend (an array, a Ceph pool). Each sees only its
own requests, so each publishes, every exchange interval, one record per device group: for every
group (named across hosts by its grammar key text — a cgroup path, a uid, a tenant label — never
by a local inode number) its weight, whether it is active here, and the service it received here
so far (completed I/Os and their cost). From every other host's record it learns two things:

- **dmClock's delta**: the service each group received *elsewhere* since the last exchange. The
  local policy is charged for it (``Policy.charge_remote``), so a group served on three hosts
  does not get three shares (Gulati et al., dmClock, OSDI'10: a client's request carries
  ``delta``, the service it got from other servers since its last request here).
- **PARDA's host weight**: the part of the cluster's active weight this host carries. A group
  active on ``n`` hosts contributes ``weight / n`` to each of them; this host's ``share`` is its
  contributions over the sum of every host's. The shared-backend window divides the backend's
  queue in proportion to ``share`` (Gulati et al., PARDA, FAST'09). Tenant A (weight 1) alone on
  host 1 and tenant B (weight 1) on hosts 2 and 3: host 1 carries 1, hosts 2 and 3 carry 1/2
  each, so host 1's window is half the cluster's and A gets half the backend.
- **the cluster's window**: each host's estimate of how many requests the cluster should keep
  in flight at the backend (its PARDA loop, see ``window.py``); the hosts adopt the mean of the
  alive hosts' estimates at every exchange, so every host divides the same total. It is
  bounded by the most any host can carry its part of (its ``maximum`` over its part), so that a
  host that cannot keep more in flight (its io_limit, its I/O threads) does not lose its share
  to the others: the ratios are kept, the total gives way.
- **each host's latency and throughput**: PARDA's premise is that the backend's queue is all
  that differs between hosts, so that windows in proportion to the weights give service in
  proportion to them. Real hosts differ too (a busier host's event loop completes later, its
  path to the array is longer), and by Little's law a host whose requests take ``k`` times the
  cluster's mean latency gets ``1/k`` of the service per request in flight. So each host's
  window is multiplied by ``correction`` = its latency over the cluster's (the throughput-
  weighted mean of the hosts' latencies), smoothed over about half a second, within 1/10..4.
  On a token-bucket backend (blk-throttle, a cloud volume's IOPS cap) the latencies differ
  threefold: a host with one request in flight has it served at once from the slice's budget,
  where a deep host's requests queue for the next slice. Bounded at 1/2..2 the correction held
  the shallow hosts at twice their part (three daemons over one throttled loop device, weights
  2:1: A got 59 % for 67 %; 63 % with 1/10..4).
- **each host's service** (the trim): the correction is exact only where a host's latency does
  not depend on its own window, and on a token bucket it does. So a slow trim multiplies it:
  the host's share of the weight over its share of the cluster's completions, integrated
  multiplicatively over two seconds, within 1/2..2, left alone within 5 % (``_trim``). On the
  throttled loop device it took the weights 2:1 from 62-65 % to 65.7-67.0 % and 1:1 from
  47.7-49.9 % to 49.1-50.3 %; on a plain queue the correction is 1 and the trim stays near 1.
  A proportional correction, not an integral one on the service got: in the simulator an
  integral controller with a second's time constant overshot after every change (A's share
  went to 60 % for three seconds after Redis returned). On a backend that is a plain queue
  every host sees the same latency and it stays at 1.

Nothing here waits on Redis or reads a clock: the agent (``agent.py``) passes the time in and
hands over what it read. Freshness is judged by this host's clock only (a peer is alive while
its sequence number keeps changing), so hosts' clocks need not agree. The first record read from
a peer is its baseline: service it got before this host saw it is never charged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

#: A peer whose record did not change for this many exchange intervals is dead: it stops
#: counting (its weight leaves the cluster's sum, its service is no longer charged).
EXPIRY_INTERVALS = 3
#: After this many intervals a dead peer's record is deleted from Redis (by whoever sees it).
PURGE_INTERVALS = 50
#: An exchange that timed out puts the host on local control once the last good one is older
#: than this many intervals: one lost reply does not (an exchange Redis refused does at once).
FALLBACK_INTERVALS = 2.5
#: Time constant, seconds, of the smoothing of the window correction by latency.
CORRECTION_TAU = 0.5
#: Bounds of the correction (see the module's docstring).
CORRECTION_RANGE = (0.1, 4.0)
#: Time constant, seconds, and bounds of the service trim (``Coordinator._trim``).
TRIM_TAU = 2.0
TRIM_RANGE = (0.5, 2.0)
#: Service within this of the share is left alone: the hosts' throughputs are measured over
#: short periods, and the trim should not integrate their noise. A precaution, not a measured
#: gain: in the simulator's short runs (10 hosts at 200 ms, a FIFO backend) A's error was 0.1
#: points without the trim, 2.0 with it and 2.5 with it and this dead band, the transient of
#: a 3 s run; in the full 8 s runs every case is within 1.3 points with both.
TRIM_DEADBAND = 0.05


@dataclass(frozen=True)
class GroupService:
    """What a host reports about one group: its weight there, whether it is active there (has
    requests held or in flight, or completed some in the last interval), and its cumulative
    service there (I/Os completed, and their cost in the policy's unit, of which ``reserved``
    was given to meet its reservation: dmClock's ``rho``)."""

    weight: float
    active: bool
    ios: int
    cost: float
    reserved: float = 0.0


@dataclass
class Peer:
    """Another host's last record, as this host read it."""

    seq: int
    seen: float  # this host's time when ``seq`` last changed
    groups: dict[str, GroupService]
    total: float  # its estimate of the cluster's window (requests in flight at the backend)
    cap: float  # the largest cluster window it can carry its part of
    share: float = 0.0  # its share of the active weight
    correction: float = 1.0  # its window factor, as its record says
    text: str | bytes = ""  # the record as read (an unchanged record is not parsed again)
    latency: float = 0.0  # its last measured latency, seconds
    throughput: float = 0.0  # and completions per second


@dataclass
class Exchange:
    """What one exchange decided: the cost to charge each local group for service received
    elsewhere, this host's share of the cluster's active weight, and how many peers count."""

    charges: dict[str, float]  # each group's service elsewhere since the last exchange
    share: float
    peers: int
    fallback: bool
    total: float | None  # the mean of the alive hosts' cluster windows (None: keep one's own)
    cap: float | None = None  # the least of the alive hosts' caps on the cluster window
    correction: float = 1.0  # this host's window factor: latency correction x service trim
    purge: list[str] = field(default_factory=list)
    latency: float | None = None  # the cluster's throughput-weighted latency, seconds, which
    # every host's PARDA step uses (None: not known yet, the host steps on its own)
    reserved: dict[str, float] = field(default_factory=dict)  # of ``charges``, what was given
    # to meet the group's reservation (dmClock's ``rho``)


@dataclass(frozen=True)
class Record:
    """What one host publishes for one device group."""

    seq: int
    total: float  # its estimate of the cluster's window
    cap: float  # the largest cluster window it can carry its part of
    groups: dict[str, GroupService]
    share: float = 1.0  # its share of the active weight, as it computed it
    correction: float = 1.0  # its window factor (latency correction x service trim)
    latency: float = 0.0  # its last measured service latency at the backend, seconds
    throughput: float = 0.0  # its completions per second then


def encode_record(record: Record) -> str:
    """A host's record as stored in Redis (one hash field per host): compact JSON."""
    g = {
        k: [v.weight, int(v.active), v.ios, round(v.cost, 3), round(v.reserved, 3)]
        for k, v in record.groups.items()
    }
    w, m = round(record.total, 3), round(min(record.cap, 1e9), 3)
    doc = {"seq": record.seq, "w": w, "m": m, "s": round(record.share, 6),
           "c": round(record.correction, 6), "l": round(record.latency, 6),
           "x": round(record.throughput, 3), "g": g}  # fmt: skip
    return json.dumps(doc, separators=(",", ":"))


def decode_record(text: str | bytes) -> Record:
    """Parse a record; ValueError naming the field and the rule if it is malformed (a peer of
    another version, or garbage written by hand): the caller skips that peer, counts it, and
    keeps going."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"record: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError("record: must be a JSON object")
    seq = data.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ValueError("record.seq: must be a non-negative integer")
    numbers = []
    for key in ("w", "m", "s", "c", "l", "x"):
        value = data.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
            raise ValueError(f"record.{key}: must be a non-negative number")
        numbers.append(float(value))
    raw = data.get("g")
    if not isinstance(raw, dict):
        raise ValueError("record.g: must be an object of groups")
    groups = {}
    for name, item in raw.items():
        if (
            not isinstance(item, list)
            or len(item) not in (4, 5)  # 4: a peer from before ``reserved``
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in item)
        ):
            raise ValueError(
                f"record.g[{name!r}]: must be [weight, active, ios, cost, reserved] numbers"
            )
        weight, active, ios, cost = item[:4]
        reserved = item[4] if len(item) == 5 else 0
        if weight < 0 or ios < 0 or cost < 0 or reserved < 0 or active not in (0, 1):
            raise ValueError(
                f"record.g[{name!r}]: weight, ios, cost and reserved must be >= 0, active 0 or 1"
            )
        groups[name] = GroupService(float(weight), bool(active), int(ios), float(cost),
                                    float(reserved))  # fmt: skip
    return Record(seq, numbers[0], numbers[1], groups, *numbers[2:])


class Coordinator:
    """One host's view of one cluster-wide device group (see the module's docstring).

    Each interval: :meth:`record` gives what to publish, :meth:`absorb` takes every host's
    record as read (or :meth:`failed` when Redis could not be reached), and returns an
    :class:`Exchange` to apply to the local scheduler."""

    def __init__(self, host: str, interval: float) -> None:
        self.host = host
        self.interval = interval
        self.seq = 0
        self.peers: dict[str, Peer] = {}
        self.local: dict[str, GroupService] = {}
        self.total = 0.0
        self.cap = 1e9  # the largest cluster window this host can carry its part of
        self.share = 1.0
        self.correction = 1.0  # by latency
        self.trim = 1.0  # by service (see ``_trim``)
        self.latency = 0.0  # this host's last measured latency, seconds (0: none yet)
        self.throughput = 0.0  # and completions per second
        self.cluster_latency = 0.0  # the throughput-weighted mean of the alive hosts'
        self._corrected_at: float | None = None
        self.fallback = False
        self.last_ok: float | None = None
        self.first_failure: float | None = None
        self.malformed = 0  # peers' records skipped as malformed, in all
        self.exchanges = 0
        self.failures = 0

    def record(
        self,
        groups: dict[str, GroupService],
        total: float,
        maximum: float,
        latency: float = 0.0,
        throughput: float = 0.0,
    ) -> str:
        """This host's record for the next exchange: its groups' service and weights, its
        estimate of the cluster's window (``total``), the most it can keep in flight, and its
        last measured latency (seconds) and throughput (completions a second)."""
        self.seq += 1
        self.local = groups
        self.total = total
        self.latency, self.throughput = latency, throughput
        part = self.share * self.correction * self.trim
        cap = maximum / part if part > 0 else 1e9
        self.cap = cap
        return encode_record(Record(self.seq, total, cap, groups, self.share, self.window_factor,
                                    latency, throughput))  # fmt: skip

    def absorb(
        self, now: float, records: dict[str, str | bytes], backlogged: bool = True
    ) -> Exchange:
        """Every host's record as read from Redis (this host's own included or not).
        ``backlogged``: this host's clients filled its window lately (a host that does not
        use its window is not owed a wider one for the service it did not ask for)."""
        self.exchanges += 1
        self.last_ok = now
        self.fallback = False
        charges: dict[str, float] = {}
        reserved: dict[str, float] = {}
        for host, text in records.items():
            if host == self.host:
                continue
            peer = self.peers.get(host)
            if peer is not None and text == peer.text:
                continue  # unchanged since the last read
            try:
                rec = decode_record(text)
            except ValueError:
                self.malformed += 1
                continue
            if peer is None:  # a baseline: nothing charged
                self.peers[host] = Peer(
                    rec.seq, now, rec.groups, rec.total, rec.cap, rec.share, rec.correction,
                    text, rec.latency, rec.throughput,
                )  # fmt: skip
                continue
            peer.text = text
            if rec.seq == peer.seq:
                continue
            if rec.seq > peer.seq and now - peer.seen <= self.expiry:
                for name, service in rec.groups.items():
                    before = peer.groups.get(name)
                    if before is not None and service.cost > before.cost:
                        charges[name] = charges.get(name, 0.0) + service.cost - before.cost
                        if service.reserved > before.reserved:
                            rho = min(service.reserved - before.reserved,
                                      service.cost - before.cost)  # fmt: skip
                            reserved[name] = reserved.get(name, 0.0) + rho
            # A restarted peer (its seq went back) or one back from the dead: a new baseline.
            peer.seq, peer.seen, peer.groups = rec.seq, now, rec.groups
            peer.total, peer.cap = rec.total, rec.cap
            peer.share, peer.correction = rec.share, rec.correction
            peer.latency, peer.throughput = rec.latency, rec.throughput
        purge = [h for h, p in self.peers.items() if now - p.seen > PURGE_INTERVALS * self.interval]
        for host in purge:
            del self.peers[host]
        alive = self.alive(now)
        self.share = self._share(alive)
        local = self.local
        charges = {k: v for k, v in charges.items() if k in local and local[k].active}
        reserved = {k: v for k, v in reserved.items() if k in charges}
        totals = [self.total, *(p.total for p in alive.values() if p.total > 0)]
        mean = sum(totals) / len(totals) if self.total > 0 else None
        caps = [self.cap, *(p.cap for p in alive.values() if p.cap > 0)]
        self._correct(now, alive, backlogged)
        latency = self.cluster_latency if alive and self.cluster_latency > 0 else None
        return Exchange(charges, self.share, len(alive), False, mean,
                        min(caps) if caps else None, self.window_factor, purge,
                        latency, reserved)  # fmt: skip

    def _correct(self, now: float, alive: dict[str, Peer], backlogged: bool) -> None:
        """The window correction: this host's latency over the cluster's (the throughput-
        weighted mean), smoothed over CORRECTION_TAU (see the module's docstring). Not raised
        for a host whose clients do not fill its window (its latency is not what limits it)."""
        last, self._corrected_at = self._corrected_at, now
        hosts = [(self.latency, self.throughput)]
        hosts += [(p.latency, p.throughput) for p in alive.values()]
        served = sum(x for _, x in hosts)
        if last is None or not alive or self.latency <= 0 or served <= 0:
            self.cluster_latency = 0.0
            return
        if any(lat <= 0 for lat, _ in hosts):
            self.cluster_latency = 0.0
            return  # a host has not measured yet
        mean = sum(lat * x for lat, x in hosts) / served
        self.cluster_latency = mean
        lo, hi = CORRECTION_RANGE
        want = min(hi, max(lo, self.latency / mean))
        if want <= self.correction or backlogged:
            self.correction += min(1.0, (now - last) / CORRECTION_TAU) * (want - self.correction)
        self._trim(now - last, served, backlogged)

    @property
    def window_factor(self) -> float:
        """What this host's part of the cluster's window is multiplied by."""
        return self.correction * self.trim

    def _trim(self, elapsed: float, served: float, backlogged: bool) -> None:
        """The slow service trim on top of the latency correction: this host's share of the
        cluster's completions against its share of the weight, integrated (multiplicatively)
        over ``TRIM_TAU``, within ``TRIM_RANGE``. The latency correction is exact only where
        a host's latency does not depend on its own window; on a token-bucket backend it does
        (a shallow host's lone request is served at once), and the correction alone left the
        weights 2:1 at 63 % for 67 % (see the module's docstring). Not raised for a host whose
        clients do not fill its window: it is not the window that keeps its service low."""
        got = self.throughput / served
        if got <= 0 or self.share <= 0:
            return
        ratio = self.share / got
        if abs(ratio - 1) < TRIM_DEADBAND or (ratio > 1 and not backlogged):
            return
        lo, hi = TRIM_RANGE
        self.trim = min(hi, max(lo, self.trim * ratio ** min(1.0, elapsed / TRIM_TAU)))

    def failed(self, now: float, refused: bool = False) -> Exchange | None:
        """Redis could not be reached. The host goes on local control (share 1, nothing
        charged, no correction) at once when Redis ``refused`` (connection refused or reset:
        it is down), else — a timeout, perhaps one lost reply — once the last good exchange is
        ``FALLBACK_INTERVALS`` old. Returns the exchange to apply when this call started the
        fallback (log it once), else None."""
        self.failures += 1
        if self.fallback:
            return None
        if self.last_ok is None and self.first_failure is None:
            self.first_failure = now  # never reached yet: timed out from the start
        last = self.last_ok if self.last_ok is not None else self.first_failure
        if not refused and last is not None and now - last < FALLBACK_INTERVALS * self.interval:
            return None
        self.fallback = True
        self.share = 1.0
        self.correction = 1.0
        self.trim = 1.0
        self._corrected_at = None
        self.peers.clear()  # on return, every peer is a new baseline (no charge for the gap)
        return Exchange({}, 1.0, 0, True, None)

    @property
    def expiry(self) -> float:
        return EXPIRY_INTERVALS * self.interval

    def alive(self, now: float) -> dict[str, Peer]:
        return {h: p for h, p in self.peers.items() if now - p.seen <= self.expiry}

    def _share(self, alive: dict[str, Peer]) -> float:
        """This host's part of the cluster's active weight: a group active on ``n`` hosts
        contributes ``weight / n`` to each (see the module's docstring)."""
        hosts: list[dict[str, GroupService]] = [self.local, *(p.groups for p in alive.values())]
        spread: dict[str, int] = {}
        for groups in hosts:
            for name, s in groups.items():
                if s.active and s.weight > 0:
                    spread[name] = spread.get(name, 0) + 1
        if not spread:
            return 1.0
        mine = 0.0
        total = 0.0
        for i, groups in enumerate(hosts):
            carried = sum(
                s.weight / spread[name] for name, s in groups.items() if s.active and s.weight > 0
            )
            total += carried
            if i == 0:
                mine = carried
        if total <= 0:
            return 1.0
        return mine / total
