"""Group types: how a request's submitter maps to a group id on a device."""

from __future__ import annotations

from collections.abc import Callable

from ioband.core.request import Submitter

IdOf = Callable[[Submitter], int | None]


def _zero(owner: Submitter) -> int:
    return 0  # 'node' and 'cpuset' were never implemented: every request is id 0


#: type name -> id function; None means no classifier (everything to the default group).
GROUP_TYPES: dict[str, IdOf | None] = {
    "none": None,
    "pgrp": lambda o: o.pgrp,
    "pid": lambda o: o.pid,
    "node": _zero,
    "cpuset": _zero,
    "cgroup": lambda o: o.cgroup,
    "user": lambda o: o.uid,
    "uid": lambda o: o.uid,
    "gid": lambda o: o.gid,
    "client": lambda o: o.client,
}
