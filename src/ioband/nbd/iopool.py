"""Worker threads for the backing store's blocking calls.

Completions go back to the event loop in batches: a worker wakes the loop only when the
completion queue was empty, so a busy server pays one wake-up per batch, not one per request
(``run_in_executor`` pays one per request). The batch is delivered inside ``batch`` (the
daemon's ``Driver``), so that what the completions release is pumped out once, not once each.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

Done = Callable[[Any, BaseException | None], None]


class IoPool:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threads: int,
        batch: AbstractContextManager[object] | None = None,
    ) -> None:
        self._loop = loop
        self._batch = batch if batch is not None else nullcontext()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done: deque[tuple[Done, Any, BaseException | None]] = deque()
        self._lock = threading.Lock()
        self._signalled = False
        self._threads = [
            threading.Thread(target=self._work, name=f"ioband-io-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], args: tuple, done: Done) -> None:
        self._jobs.put((fn, args, done))

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, args, done = job
            try:
                result, error = fn(*args), None
            except BaseException as err:  # handed to the loop, which replies with an error
                result, error = None, err
            with self._lock:
                self._done.append((done, result, error))
                if self._signalled:
                    continue
                self._signalled = True
            try:
                self._loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                return

    def _deliver(self) -> None:
        with self._lock:
            batch = list(self._done)
            self._done.clear()
            self._signalled = False
        with self._batch:
            for done, result, error in batch:
                done(result, error)

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for t in self._threads:
            t.join(timeout=5)
