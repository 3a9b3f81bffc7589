"""A tiny closed-loop driver around the engine for tests: tracks every request's fate.

It drives the engine through ``ioband.core.driver.Driver``, the way every host does, and checks
what comes out of it: every request leaves the engine exactly once."""

from __future__ import annotations

from ioband.core.driver import Driver as CoreDriver
from ioband.core.engine import Engine
from ioband.core.model import Device
from ioband.core.request import DONE, HELD, ISSUED, WAITING, Request


class Driver:
    """Feeds an engine and checks that every request leaves it exactly once."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.core = CoreDriver(engine, self._issued, admit=self._admitted)
        self.inflight: list[Request] = []
        self.all: list[Request] = []
        self.issued_ids: set[int] = set()

    @property
    def now(self) -> int:
        return self.core.now

    @now.setter
    def now(self, value: int) -> None:
        self.core.now = value

    def _issued(self, req: Request) -> None:
        assert id(req) not in self.issued_ids, f"issued twice: {req!r}"
        assert req.state == ISSUED, req
        self.issued_ids.add(id(req))
        self.inflight.append(req)

    @staticmethod
    def _admitted(req: Request) -> None:
        assert req.state in (HELD, ISSUED), req

    def submit(self, dev: Device, req: Request) -> bool:
        """Whether ``req`` was issued at once (what comes out later is pumped after)."""
        self.all.append(req)
        with self.core:  # nothing is pumped before the batch ends: only ``req`` itself
            self.core.submit(dev, req)
            now_issued = id(req) in self.issued_ids
            if not now_issued:
                assert req.state in (HELD, WAITING), req
        return now_issued

    def complete(self, index: int = 0) -> Request:
        req = self.inflight.pop(index)
        self.core.complete(req)
        return req

    def tick(self, jiffies: int = 1) -> None:
        self.now += jiffies
        self.core.advance()

    def call(self, fn, *args):  # a configuration call: collect what it released
        with self.core:
            return fn(*args, now=self.now)

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
                self.core.advance()
        stuck = [r for r in self.all if r.state != DONE]
        raise AssertionError(f"{len(stuck)} requests never completed, e.g. {stuck[:3]}")
