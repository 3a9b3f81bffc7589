"""A tiny closed-loop driver around the engine for tests: tracks every request's fate."""

from __future__ import annotations

from ioband.core.engine import Engine
from ioband.core.model import Device
from ioband.core.request import DONE, HELD, ISSUED, WAITING, Request


class Driver:
    """Feeds an engine and checks that every request leaves it exactly once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.now = 0
        self.inflight: list[Request] = []
        self.all: list[Request] = []
        self.issued_ids: set[int] = set()

    def _collect(self) -> None:
        for req in self.engine.take_issued():
            self._issued(req)
        for req in self.engine.take_admitted():
            assert req.state in (HELD, ISSUED), req

    def _issued(self, req: Request) -> None:
        assert id(req) not in self.issued_ids, f"issued twice: {req!r}"
        assert req.state == ISSUED, req
        self.issued_ids.add(id(req))
        self.inflight.append(req)

    def submit(self, dev: Device, req: Request) -> bool:
        self.all.append(req)
        now_issued = self.engine.submit(dev, req, self.now)
        if now_issued:
            self._issued(req)
        else:
            assert req.state in (HELD, WAITING), req
        self._collect()
        return now_issued

    def complete(self, index: int = 0) -> Request:
        req = self.inflight.pop(index)
        self.engine.complete(req, self.now)
        self._collect()
        return req

    def tick(self, jiffies: int = 1) -> None:
        self.now += jiffies
        self.engine.advance(self.now)
        self._collect()

    def call(self, fn, *args):  # a configuration call: collect what it released
        try:
            return fn(*args, now=self.now)
        finally:
            self._collect()

    def drain(self, limit: int = 200_000) -> None:
        """Complete everything; time moves on when nothing is in flight."""
        for _ in range(limit):
            if self.inflight:
                self.complete(0)
            elif all(r.state == DONE for r in self.all):
                return
            else:
                deadline = self.engine.next_deadline()
                self.now = max(self.now + 1, deadline or 0)
                self.engine.advance(self.now)
                self._collect()
        stuck = [r for r in self.all if r.state != DONE]
        raise AssertionError(f"{len(stuck)} requests never completed, e.g. {stuck[:3]}")
