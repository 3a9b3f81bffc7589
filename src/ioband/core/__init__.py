"""The sans-I/O scheduling core: no sockets, files, threads, asyncio or clock reads.

Front ends and the simulator create an :class:`Engine`, pass requests in with the current time
(integer jiffies), perform the I/O of what it issues and report completions.
"""

from ioband.core.engine import BackingInfo, Engine
from ioband.core.model import Device, DeviceGroup, Group
from ioband.core.request import ASYNC, SYNC, Request, Submitter

__all__ = [
    "ASYNC",
    "SYNC",
    "BackingInfo",
    "Device",
    "DeviceGroup",
    "Engine",
    "Group",
    "Request",
    "Submitter",
]
