"""Group types: how a request's submitter maps to a group id on a device."""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter

from ioband.core.request import Submitter

IdOf = Callable[[Submitter], int | None]


def _zero(owner: Submitter) -> int:
    return 0  # 'node' and 'cpuset' were never implemented: every request is id 0


#: type name -> id function; None means no classifier (everything to the default group).
GROUP_TYPES: dict[str, IdOf | None] = {
    "none": None,
    "pgrp": attrgetter("pgrp"),
    "pid": attrgetter("pid"),
    "node": _zero,
    "cpuset": _zero,
    "cgroup": attrgetter("cgroup"),
    "user": attrgetter("uid"),
    "uid": attrgetter("uid"),
    "gid": attrgetter("gid"),
    "client": attrgetter("client"),
}
