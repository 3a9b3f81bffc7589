"""What the daemon gives its front ends: a narrow object, not the daemon.

An NBD connection and a FUSE mount's admission channel need the ``Driver`` (the one way into
and out of the engine), the event loop, the I/O threads and the cgroup lookups; they need
nothing of the control plane (configuration reloads, persistence, the control socket), and
import nothing from ``ioband.control``. The daemon assembles the pieces: it fills this in as it
starts, and hands the same object to every front end (as uvicorn hands its protocols a config
and a server state rather than the server).

Each request a front end gives the driver carries the front end in ``tag[0]``; the driver's
``issue`` and ``admit`` callbacks (``start_io``/``admitted`` here) hand the request back to it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ioband.aio import BufferPool
from ioband.core.driver import Driver
from ioband.core.request import Request

if TYPE_CHECKING:
    from ioband.aio import Aio
    from ioband.cgroup.paths import CgroupPaths
    from ioband.cgroup.proc import Hierarchy
    from ioband.nbd.iopool import IoPool


class Performer(Protocol):
    """A front end: it performs the I/O of the requests it submitted, once released."""

    def start_io(self, req: Request) -> None:
        """The core released ``req``: do its I/O, then ``driver.complete(req)``."""

    def admitted(self, req: Request) -> None:
        """The core admitted ``req``, whose submitter was asleep: let it go on."""


def start_io(req: Request) -> None:
    """The driver's ``issue``: to the front end that submitted ``req``."""
    performer: Performer = req.tag[0]
    performer.start_io(req)


def admitted(req: Request) -> None:
    """The driver's ``admit``: to the front end that submitted ``req``."""
    performer: Performer = req.tag[0]
    performer.admitted(req)


@dataclass(eq=False)
class Runtime:
    """The daemon's pieces a front end may use (see the module's docstring). ``loop``, ``pool``,
    ``aio`` (where Linux AIO works) and the cgroup lookups are set when the daemon starts (a
    daemon that only validates a configuration has none)."""

    driver: Driver
    loop: asyncio.AbstractEventLoop | None = None
    pool: IoPool | None = None
    aio: Aio | None = None  # O_DIRECT reads and writes of the NBD exports, without threads
    buffers: BufferPool = field(default_factory=BufferPool)  # aligned buffers for ``aio``
    hierarchy: Hierarchy | None = None
    cgroup_paths: CgroupPaths | None = None  # a cgroup inode's path (FUSE requests)
