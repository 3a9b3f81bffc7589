"""A daemon running on its own event loop in a background thread (tests, the demo)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

from ioband.control.config import Config
from ioband.control.daemon import Daemon
from ioband.eventloop import new_event_loop

T = TypeVar("T")


class EmbeddedDaemon:
    """``with EmbeddedDaemon(config) as d: ...`` starts the daemon and drains it on exit."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.daemon = Daemon(config)
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self._run, name="ioband-daemon", daemon=True)
        self._started = concurrent.futures.Future()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> None:
        try:
            await self.daemon.start()
        except BaseException as err:
            self._started.set_exception(err)
            return
        self._started.set_result(None)
        await self.daemon._stopped.wait()
        await self.daemon.drain()
        await self.daemon.close()

    def start(self) -> EmbeddedDaemon:
        self._thread.start()
        self._started.result(timeout=30)
        return self

    def call(self, fn: Callable[[], T], timeout: float = 10) -> T:
        """Run ``fn`` on the daemon's loop (the engine is not thread-safe) and return its result."""

        async def wrapper() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def stop(self, timeout: float = 30) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.daemon.request_stop)
            self._thread.join(timeout)

    def __enter__(self) -> EmbeddedDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
