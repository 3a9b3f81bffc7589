"""Device models: how long the lower device takes to serve a request.

A model serves up to ``queue_depth`` requests in parallel (one per *slot*) and queues the rest in
FIFO order. Subclasses only say how long one request occupies a slot (``service_time``); a model
that needs its own ordering (an elevator for a future ``hdd``) overrides ``submit``/``finish``.

Add a model: subclass ``DiskModel``, set ``model`` and ``PARAMS``, decorate with ``@register``.
The scenario loader validates the keys against ``PARAMS`` and then calls ``check``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from ioband.core.request import WRITE, Request

PAGE = 4096


@dataclass(frozen=True)
class Param:
    """One model parameter in the scenario file.

    kind: ``count`` (integer), ``size`` (bytes, "4KiB"), ``rate`` (bytes/s, "500MiB"),
    ``number`` (float), ``seconds`` (duration, "1ms"). ``positive``: must be > 0 (else >= 0).
    ``default`` None means the key is optional with no value (the model decides).
    """

    kind: str
    default: Any = None
    positive: bool = True
    required: bool = False
    help: str = ""


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


def create_disk(name: str, model: str, params: dict[str, Any]) -> DiskModel:
    """An instance of the registered model ``model`` (params already validated)."""
    return MODELS[model](name, params)
