"""Requests and the identity of whoever submitted them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from mypy_extensions import mypyc_attr

SECTOR_SHIFT: Final = 9
ASYNC: Final = 0  # class index of async (buffered) writes, as BLK_RW_ASYNC
SYNC: Final = 1  # class index of reads and sync writes, as BLK_RW_SYNC
READ: Final = 0
WRITE: Final = 1

# Request states, in the order a request moves through them.
WAITING: Final = "waiting"  # its submitter sleeps (backpressure); the request is not admitted yet
HELD: Final = "held"  # admitted and queued in its group
ISSUED: Final = "issued"  # released to the lower device; the caller performs the I/O
DONE: Final = "done"  # completed


@dataclass(frozen=True, slots=True)
class Submitter:
    """Who asked for the I/O: what classification by group type looks at.

    ``cgroup`` is the owner cgroup's id (for delayed writes: the page owner's, not the flusher's).
    ``client`` is the front end's id for a connection peer (group type ``client``).
    ``cgroup_path`` is that cgroup's path in the hierarchy (``machine.slice/vm1.scope``, None
    when unknown): groups attached by path, and cgroup rules, match on it.
    """

    pid: int = 0
    pgrp: int = 0
    uid: int = 0
    gid: int = 0
    cgroup: int = 0
    kthread: bool = False
    client: int | None = None
    cgroup_path: str | None = None


ROOT = Submitter()


@mypyc_attr(allow_interpreted_subclasses=True)  # the simulator's requests add their fields
class Request:
    """One block request (a bio). The core fills in group, state and timing fields."""

    __slots__ = (
        "arrival_ns",
        "delayed",
        "device",
        "dir",
        "dispatch_ns",
        "group",
        "issue_time",
        "length",
        "offset",
        "owner",
        "sectors",
        "state",
        "submit_time",
        "sync",
        "tag",
        "urgent",
    )

    def __init__(
        self,
        write: bool,
        offset: int,
        length: int,
        owner: Submitter = ROOT,
        *,
        sync: bool | None = None,
        urgent: bool = False,
        tag: object = None,
    ) -> None:
        self.dir = WRITE if write else READ
        # Reads are always sync; writes are sync only when flagged (O_DIRECT, O_SYNC, FUA).
        self.sync = SYNC if (not write or sync) else ASYNC
        self.offset = offset
        self.length = length
        self.sectors = length >> SECTOR_SHIFT
        self.owner = owner
        self.urgent = urgent
        self.tag = tag
        self.state: str | None = None
        # The scheduler's group and device of the request: the engine's ``Group`` and ``Device``
        # (the engine reads them into typed names); the simulator's baseline schedulers put their
        # own objects here, hence ``Any``. None until it is submitted (the group: until it is
        # classified, which waits while its device is suspended).
        self.group: Any = None
        self.device: Any = None
        self.delayed = False
        self.submit_time = 0
        self.issue_time = 0
        # The engine's fine clock (nanoseconds): arrival at ioband and dispatch to the store.
        self.arrival_ns = 0
        self.dispatch_ns = 0

    @property
    def write(self) -> bool:
        return self.dir == WRITE

    def __repr__(self) -> str:
        kind = "W" if self.dir else "R"
        return (
            f"<Request {kind}{'s' if self.sync else 'a'} {self.offset}+{self.length} {self.state}>"
        )
