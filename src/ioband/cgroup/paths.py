"""Cgroup paths and inodes, both ways, for a mounted hierarchy (v1 ``blkio`` or v2 unified).

Groups may be attached by cgroup path (``machine.slice/vm1.scope``); the sans-I/O engine
matches them against the path in a request's ``Submitter``. Front ends that only know a
cgroup's inode (the FUSE workers send it over their channel) ask ``CgroupPaths.path_of``, which
walks the hierarchy once for an inode it has not seen and remembers the answer: a cgroup keeps
its inode for its life, and a cgroup re-created at the same path gets a new one, which the
next walk finds under the same path.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ioband.cgroup.proc import Hierarchy

MISS_TTL = 0.2  # seconds an inode that no walk found stays unknown before the next walk


class CgroupPaths:
    def __init__(self, hierarchy: Hierarchy) -> None:
        self.hierarchy = hierarchy
        self._paths: dict[int, str | None] = {}  # inode -> path (None: the root)
        self._misses: dict[int, float] = {}  # inode -> when a walk did not find it

    def path_of(self, ino: int) -> str | None:
        """The path (relative, no leading ``/``) of the cgroup with this inode; None for the
        root cgroup or an inode no cgroup has now."""
        if ino in self._paths:
            return self._paths[ino]
        if not ino:
            return None
        missed = self._misses.get(ino)
        now = time.monotonic()
        if missed is not None and now - missed < MISS_TTL:
            return None
        self._walk()
        if ino in self._paths:
            self._misses.pop(ino, None)
            return self._paths[ino]
        self._misses[ino] = now
        return None

    def _walk(self) -> None:
        mount = self.hierarchy.mount
        found: dict[int, str | None] = {}
        for top, _, _ in os.walk(mount):
            try:
                ino = os.stat(top).st_ino
            except OSError:
                continue
            rel = os.path.relpath(top, mount)
            found[ino] = None if rel == "." else rel
        self._paths = found  # inodes of removed cgroups go with the new walk

    def exists(self, path: str) -> bool:
        """Whether a cgroup directory is at ``path`` now."""
        return (self.hierarchy.mount / path).is_dir()

    def inode(self, path: str) -> int | None:
        """The inode of the cgroup at ``path`` now (None: no such cgroup)."""
        try:
            return os.stat(Path(self.hierarchy.mount, path)).st_ino
        except OSError:
            return None
