"""The event loop every asyncio process of ioband runs on: the daemon and the FUSE workers."""

from __future__ import annotations

import asyncio
import os


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (IOBAND_EVENT_LOOP=asyncio forces the stock loop, to compare)."""
    if os.environ.get("IOBAND_EVENT_LOOP") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
