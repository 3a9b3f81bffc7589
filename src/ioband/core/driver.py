"""The one way into and out of the engine, for every host: the daemon, the simulator, the tests
and the benchmark.

The engine has two outboxes (``take_issued``, ``take_admitted``) besides ``submit``'s own
``True``, and a timer to be armed after every call. A host that drives it by hand must handle
all of them after every call, in the right order, and not recurse when performing a request
completes another at once (a page-cached read). The ``Driver`` does that once:

- ``submit`` and ``complete`` are the way in; ``bypass`` runs a request that is not scheduled
  (an export or mount with ``control = false``) through the same way out.
- Every request the engine releases (at once or later) goes out through the host's one
  ``issue`` callback; every sleeper it admits through ``admit``; the earliest timer through
  ``deadline`` (the host arms one alarm and calls ``advance`` when it fires).
- ``with driver:`` makes a batch of events (the completions one wake-up of the I/O pool
  delivers, the commands one socket read parsed, a configuration change): the outboxes are
  pumped once, at its end. Outside a batch each call pumps. Each call still reads the clock:
  a batch may take longer than a jiffy, and a time stamped at its start would make what falls
  due in it (an mclock reservation tag) wait for the next one.

It is sans-I/O: time comes from the injected ``clock`` (jiffies); callbacks do the I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from ioband.core.request import Request

Perform = Callable[[Request], None]


class Scheduler(Protocol):
    """What the driver uses of an engine: ``Engine``, and the simulator's FIFO and SFQ(D)
    baselines."""

    def submit(self, dev: Any, req: Request, now: int) -> bool: ...
    def complete(self, req: Request, now: int) -> None: ...
    def advance(self, now: int) -> None: ...
    def take_issued(self) -> list[Request]: ...
    def take_admitted(self) -> list[Request]: ...
    def has_output(self) -> bool: ...
    def next_deadline(self) -> int | None: ...


def _nothing(req: Request) -> None:
    """The default ``admit``: the host's submitters never sleep, or need no waking."""


class Driver:
    """Feeds ``engine`` and carries out what it releases (see the module's docstring)."""

    __slots__ = ("_admit", "_clock", "_deadline", "_depth", "_issue", "engine", "now")

    def __init__(
        self,
        engine: Scheduler,
        issue: Perform,
        *,
        admit: Perform = _nothing,
        deadline: Callable[[int], None] | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.engine = engine
        self._issue = issue
        self._admit = admit
        self._deadline = deadline
        # No clock: the host moves ``now`` itself (the tests, the benchmark).
        self._clock = clock
        self.now = 0  # jiffies: the time of the last call (a batch's configuration calls
        # read the host's clock themselves)
        self._depth = 0  # batches open; the outboxes are pumped when the last one closes

    # -- batches ----------------------------------------------------------------------------
    def __enter__(self) -> Driver:
        self._depth += 1
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.pump()

    # -- the way in -------------------------------------------------------------------------
    def submit(self, dev: Any, req: Request) -> None:
        """Schedule ``req`` on ``dev``. Issued at once (the fast path: the window has room and
        nothing waits), it goes out through ``issue`` before this returns; otherwise later."""
        clock = self._clock  # inlined: a call per request costs what the engine's decision does
        now = self.now = clock() if clock is not None else self.now
        if self.engine.submit(dev, req, now):
            self._issue(req)
        if not self._depth:  # in a batch, its end pumps
            self.pump()

    def bypass(self, req: Request) -> None:
        """Run ``req`` without scheduling it (``control = false``): it goes out at once, and
        its completion is not the engine's (``req.state`` stays None)."""
        self._issue(req)

    def complete(self, req: Request) -> None:
        """The I/O of ``req`` is done. A bypassed request is not the engine's: nothing to do."""
        if req.state is None:
            return
        clock = self._clock
        now = self.now = clock() if clock is not None else self.now
        self.engine.complete(req, now)
        if not self._depth:
            self.pump()

    def advance(self) -> None:
        """The alarm armed for the engine's deadline fired: run its timers."""
        if self._clock is not None:
            self.now = self._clock()
        self.engine.advance(self.now)
        if not self._depth:
            self.pump()

    # -- the way out ------------------------------------------------------------------------
    def pump(self) -> None:
        """Carry out what the engine released: issue, then admit, until nothing is left
        (performing a request may complete it at once and release more); then report the
        engine's next deadline. Re-entrant calls (from inside ``issue``) leave it to this one."""
        engine = self.engine
        if not engine.has_output():
            if self._deadline is not None:
                due = engine.next_deadline()
                if due is not None:
                    self._deadline(due)
            return
        self._depth += 1  # what ``issue`` completes at once is pumped by the loop below
        try:
            issue = self._issue
            admit = self._admit
            while engine.has_output():
                for req in engine.take_issued():
                    issue(req)
                for req in engine.take_admitted():
                    admit(req)
        finally:
            self._depth -= 1
        if self._deadline is not None:
            due = engine.next_deadline()
            if due is not None:
                self._deadline(due)
