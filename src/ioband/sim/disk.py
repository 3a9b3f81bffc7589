"""Device models: how long the lower device takes to serve a request.

A model serves up to ``queue_depth`` requests in parallel (one per *slot*) and queues the rest in
FIFO order. Subclasses only say how long one request occupies a slot (``service_time``); a model
that needs its own ordering (``hdd``: one head and an elevator) overrides ``submit``/``finish``.
Requests carry ``lba``, their byte offset on the whole disk (devices are laid out one after the
other on their disk, in declaration order); only position-aware models look at it.

Add a model: subclass ``DiskModel``, set ``model`` and ``PARAMS``, decorate with ``@register``.
The scenario loader validates the keys against ``PARAMS`` and then calls ``check``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from ioband.core.request import WRITE, Request

PAGE = 4096


@dataclass(frozen=True)
class Param:
    """One model parameter in the scenario file.

    kind: ``count`` (integer), ``size`` (bytes, "4KiB"), ``rate`` (bytes/s, "500MiB"),
    ``number`` (float), ``seconds`` (duration, "1ms"), ``choice`` (one of ``choices``).
    ``positive``: must be > 0 (else >= 0). ``default`` None means the key is optional with no
    value (the model decides).
    """

    kind: str
    default: Any = None
    positive: bool = True
    required: bool = False
    help: str = ""
    choices: tuple[str, ...] = ()

    def describe_default(self) -> str:
        """The default as a scenario file would spell it."""
        d = self.default
        if d is None:
            return "-"
        if self.kind in ("size", "rate"):
            from ioband.sim.units import format_size

            return format_size(d) + ("/s" if self.kind == "rate" else "")
        if self.kind == "seconds":
            from ioband.sim.units import format_duration

            return format_duration(d)
        if self.kind == "number" and float(d).is_integer():
            return str(int(d))
        return str(d)


class ModelParamError(ValueError):
    """A model parameter breaks a rule: ``key`` is the scenario key, ``rule`` the explanation."""

    def __init__(self, key: str, rule: str) -> None:
        super().__init__(f"{key}: {rule}")
        self.key = key
        self.rule = rule


MODELS: dict[str, type[DiskModel]] = {}


def register(cls: type[DiskModel]) -> type[DiskModel]:
    """Class decorator: make a model selectable with ``model = "<cls.model>"``."""
    MODELS[cls.model] = cls
    return cls


class DiskModel:
    """Parallel slots plus a FIFO; subclasses define ``service_time``."""

    model: ClassVar[str] = ""
    description: ClassVar[str] = ""
    PARAMS: ClassVar[dict[str, Param]] = {
        "nr_requests": Param("count", 128, help="request-queue size reported to ioband (io_limit)"),
        "queue_depth": Param("count", 1, help="requests served in parallel"),
    }

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        self.name = name
        self.params = dict(params)
        self.queue_depth: int = params["queue_depth"]
        self.nr_requests: int = params["nr_requests"]
        self.free = self.queue_depth  # idle slots
        self.waiting: deque[Request] = deque()  # requests waiting for a slot, FIFO
        self.busy = 0.0  # slot-seconds of service started so far
        self.ios = 0  # completed requests
        self.bytes = 0  # completed bytes

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        """Cross-parameter rules; raise ``ModelParamError``. ``params`` has every default filled."""

    def service_time(self, req: Request) -> float:
        """Seconds one slot is busy serving ``req``."""
        raise NotImplementedError

    def submit(self, req: Request, now: float) -> float | None:
        """Accept ``req`` at ``now``: its completion time if a slot is free, else None (queued)."""
        if self.free:
            self.free -= 1
            s = self.service_time(req)
            self.busy += s
            return now + s
        self.waiting.append(req)
        return None

    def finish(self, req: Request, now: float) -> tuple[Request, float] | None:
        """``req`` completed at ``now``: its slot takes the next queued request, if any.

        Returns ``(next_request, its_completion_time)`` or None when the slot became idle.
        """
        self.ios += 1
        self.bytes += req.length
        if self.waiting:
            nxt = self.waiting.popleft()
            s = self.service_time(nxt)
            self.busy += s
            return nxt, now + s
        self.free += 1
        return None

    @property
    def in_flight(self) -> int:
        """Requests in service or queued."""
        return self.queue_depth - self.free + len(self.waiting)

    def utilization(self, elapsed: float, overhang: float = 0.0) -> float:
        """Mean fraction of slots busy over ``elapsed`` seconds (``overhang``: service after it)."""
        if elapsed <= 0:
            return 0.0
        return max(0.0, min(1.0, (self.busy - overhang) / (self.queue_depth * elapsed)))


@register
class FixedModel(DiskModel):
    """s(bytes) = service_time + byte_time * bytes per slot; exact and simple, for checks."""

    model = "fixed"
    description = "constant service time per request and/or per byte"
    PARAMS = {
        **DiskModel.PARAMS,
        "service_time": Param("seconds", 0.0, positive=False, help="seconds per request"),
        "byte_time": Param("number", 0.0, positive=False, help="seconds per byte"),
    }

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        super().__init__(name, params)
        self.a: float = params["service_time"]
        self.b: float = params["byte_time"]

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        if params["service_time"] <= 0 and params["byte_time"] <= 0:
            raise ModelParamError(
                "service_time", "the fixed model needs service_time > 0 or byte_time > 0"
            )

    def service_time(self, req: Request) -> float:
        return self.a + self.b * req.length


@register
class SSDModel(DiskModel):
    """Flash device: per-request + per-byte slot time, no seek penalty.

    From the 4 KiB random IOPS at full queue depth and the sequential bandwidth:
    b = queue_depth / bandwidth, a = max(0, queue_depth / iops - 4096 * b),
    s(bytes) = a + b * bytes.
    ``write_iops``/``write_bandwidth`` default to the read figures.
    """

    model = "ssd"
    description = "flash: 4 KiB random IOPS and sequential bandwidth, parallel up to queue_depth"
    PARAMS = {
        **DiskModel.PARAMS,
        "queue_depth": Param("count", 32, help="requests served in parallel"),
        "iops": Param("number", 20000.0, help="4 KiB random IOPS at full queue depth"),
        "bandwidth": Param("rate", 500 << 20, help="sequential bytes per second"),
        "write_iops": Param("number", None, help="write IOPS (default: iops)"),
        "write_bandwidth": Param("rate", None, help="write bandwidth (default: bandwidth)"),
    }

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        super().__init__(name, params)
        qd = self.queue_depth
        self.read_ab = self.coefficients(qd, params["iops"], params["bandwidth"])
        self.write_ab = self.coefficients(
            qd,
            params["write_iops"] or params["iops"],
            params["write_bandwidth"] or params["bandwidth"],
        )

    @staticmethod
    def coefficients(queue_depth: int, iops: float, bandwidth: float) -> tuple[float, float]:
        """(a, b) of s(bytes) = a + b * bytes."""
        b = queue_depth / bandwidth
        a = max(0.0, queue_depth / iops - PAGE * b)
        return a, b

    def service_time(self, req: Request) -> float:
        a, b = self.write_ab if req.dir == WRITE else self.read_ab
        return a + b * req.length


@register
class HDDModel(DiskModel):
    """A rotating disk: one head, so one request at a time; the rest wait in an elevator.

    Service time of a request at byte ``lba`` of the disk, ``bytes`` long, started at ``now``:

    - ``overhead`` (controller/command time), then
    - a seek: none when the request starts where the previous one ended (the sequential fast
      path: the drive's read-ahead/track buffer makes it a pure transfer) or on the same track;
      otherwise ``min_seek + (max_seek - min_seek) * sqrt(distance / capacity)`` (the classic
      square-root seek curve: short seeks are dominated by settle time);
    - rotational latency after a seek or a same-track jump: the platter turns at ``rpm``; the
      sector's angle is ``(lba mod track_size) / track_size``, so the wait is the time the platter
      needs to bring it under the head (deterministic, between 0 and one revolution);
    - the transfer, ``bytes / transfer_rate``.

    ``elevator``: ``fifo`` serves waiting requests in arrival order (the noop scheduler of a
    disk without NCQ), ``clook`` picks the next request at or after the head, wrapping to the
    lowest (circular LOOK, what NCQ/deadline-style reordering approximates).
    """

    model = "hdd"
    description = "rotating disk: one head, seek curve, rotational latency, transfer rate"
    PARAMS = {
        "nr_requests": DiskModel.PARAMS["nr_requests"],
        "rpm": Param("number", 7200.0, help="spindle speed, revolutions per minute"),
        "min_seek": Param("seconds", 0.0005, help="track-to-track seek time"),
        "max_seek": Param("seconds", 0.016, help="full-stroke seek time"),
        "transfer_rate": Param("rate", 120 << 20, help="media transfer rate, bytes per second"),
        "capacity": Param("size", 500 << 30, help="disk size: seek distances are relative to it"),
        "track_size": Param("size", 1 << 20, help="bytes per track (sets rotational positions)"),
        "overhead": Param("seconds", 0.0001, positive=False, help="command overhead per request"),
        "elevator": Param(
            "choice", "fifo", choices=("fifo", "clook"), help="order of waiting requests"
        ),
    }

    def __init__(self, name: str, params: dict[str, Any]) -> None:
        params = {**params, "queue_depth": 1}
        super().__init__(name, params)
        self.revolution = 60.0 / params["rpm"]
        self.min_seek: float = params["min_seek"]
        self.seek_span = params["max_seek"] - params["min_seek"]
        self.rate: float = params["transfer_rate"]
        self.capacity: int = params["capacity"]
        self.track: int = params["track_size"]
        self.overhead: float = params["overhead"]
        self.clook = params["elevator"] == "clook"
        self.head = 0  # byte position of the head: the end of the last request served
        self.seeks = 0  # requests that needed a seek
        self.sequential = 0  # requests served by the sequential fast path

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        if params["max_seek"] < params["min_seek"]:
            raise ModelParamError(
                "max_seek", f"must not be below min_seek ({params['min_seek']} s)"
            )
        if params["track_size"] > params["capacity"]:
            raise ModelParamError("track_size", "must not exceed capacity")

    def seek_time(self, distance: int) -> float:
        """Seconds to move the head ``distance`` bytes (0 for the same track)."""
        if distance < self.track:
            return 0.0
        return self.min_seek + self.seek_span * math.sqrt(min(1.0, distance / self.capacity))

    def position_time(self, lba: int, start: float) -> float:
        """Seconds from ``start`` until the head is over ``lba``'s first sector."""
        if lba == self.head:
            self.sequential += 1
            return 0.0
        seek = self.seek_time(abs(lba - self.head))
        if seek:
            self.seeks += 1
        arrive = start + seek
        rev = self.revolution
        angle = (lba % self.track) / self.track
        under_head = (arrive / rev) % 1.0
        return seek + ((angle - under_head) % 1.0) * rev

    def serve(self, req: Request, now: float) -> float:
        """Start ``req`` now: its completion time; the head ends after its last byte."""
        lba = getattr(req, "lba", req.offset)
        start = now + self.overhead
        done = start + self.position_time(lba, start) + req.length / self.rate
        self.head = lba + req.length
        self.busy += done - now
        return done

    def submit(self, req: Request, now: float) -> float | None:
        if self.free:
            self.free = 0
            return self.serve(req, now)
        self.waiting.append(req)
        return None

    def finish(self, req: Request, now: float) -> tuple[Request, float] | None:
        self.ios += 1
        self.bytes += req.length
        waiting = self.waiting
        if not waiting:
            self.free = 1
            return None
        if self.clook and len(waiting) > 1:
            nxt = self.pick_clook()
        else:
            nxt = waiting.popleft()
        return nxt, self.serve(nxt, now)

    def pick_clook(self) -> Request:
        """The waiting request with the lowest lba at or after the head, else the lowest."""
        head = self.head
        ahead = None
        lowest = None
        for i, r in enumerate(self.waiting):
            lba = getattr(r, "lba", r.offset)
            if lba >= head and (ahead is None or lba < ahead[0]):
                ahead = (lba, i)
            if lowest is None or lba < lowest[0]:
                lowest = (lba, i)
        assert lowest is not None
        i = (ahead or lowest)[1]
        req = self.waiting[i]
        del self.waiting[i]
        return req


def describe_models() -> list[str]:
    """Lines for ``ioband sim --describe-models``: each model, its keys, defaults and meaning."""
    lines: list[str] = []
    for name in sorted(MODELS):
        cls = MODELS[name]
        lines.append(f'model = "{name}": {cls.description}')
        width = max(len(k) for k in cls.PARAMS)
        for key, p in cls.PARAMS.items():
            kind = "|".join(p.choices) if p.kind == "choice" else p.kind
            req = "required" if p.required else f"default {p.describe_default()}"
            lines.append(f"  {key:<{width}}  {kind:<10} {req:<18} {p.help}")
        lines.append("")
    return lines[:-1]


def create_disk(name: str, model: str, params: dict[str, Any]) -> DiskModel:
    """An instance of the registered model ``model`` (params already validated)."""
    return MODELS[model](name, params)
