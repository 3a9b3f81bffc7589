"""Logging that a hostile client cannot turn into a flood.

Refusals (access denied, a connection limit reached, a handshake that timed out) must be
logged, but a local user can cause thousands of them a second. A :class:`LogLimiter` logs the
first of each key and then at most one line per interval, saying how many it left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable


class LogLimiter:
    """At most one record per key and interval; the next one counts the ones left out."""

    MAX_KEYS = 4096  # beyond this, forget the oldest keys (a flood of distinct keys)

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[Hashable, tuple[float, int]] = {}  # key -> (logged at, suppressed)

    def warn(self, key: Hashable, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def log(self, level: int, key: Hashable, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return
        if last is not None and last[1]:
            msg += f" (and {last[1]} more like it in the last {self.interval:g} s)"
        if last is None and len(self._last) >= self.MAX_KEYS:
            for old in list(self._last)[: self.MAX_KEYS // 2]:
                del self._last[old]
        self._last.pop(key, None)
        self._last[key] = (now, 0)
        self.logger.log(level, msg, *args)
