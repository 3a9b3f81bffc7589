"""Who may use an export: access rules from the configuration, matched against the peer.

A device's ``allow`` rules say who may connect read-write, its ``allow_ro`` rules who may
connect read-only. With neither, everyone who can reach the listener may connect (the unix
socket's owner, group and mode decide who can, see ``[nbd] socket_mode``/``socket_group``).
Root on the unix socket is always allowed: it can open the backing store anyway.

A rule is one word, in the vocabulary of nbdkit's ip filter::

    all                 anyone
    unix | tcp          any peer of the unix socket / of the TCP listener
    uid:N | user:NAME   a unix peer with that user id
    gid:N | group:NAME  a unix peer with that primary or supplementary group
    cgroup:/PATH        a unix peer whose process is in that cgroup or below it
    net:ADDR[/PREFIX]   a TCP peer in that network (IPv4 or IPv6)

Parsing is pure (names are resolved with the user and group databases); matching is pure and
takes a :class:`Peer` that the front end built from the kernel's view of the connection
(``SO_PEERCRED``, ``SO_PEERGROUPS``, the process's cgroup; the TCP peer address).
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ioband.errors import AccessDenied, InvalidArgument

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The words a rule may start with, for error messages.
RULE_FORMS = ("all", "unix", "tcp", "uid:N", "user:NAME", "gid:N", "group:NAME", "cgroup:/PATH",
              "net:ADDR[/PREFIX]")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Peer:
    """The kernel's view of a connecting client. A unix peer has ``uid``; a TCP peer
    ``address``. ``cgroup`` is None when it could not be read reliably (the process exited)."""

    uid: int | None = None
    gids: frozenset[int] = frozenset()
    cgroup: str | None = None
    address: Address | None = None
    pid: int | None = None

    def describe(self) -> str:
        if self.address is not None:
            return f"address {self.address}"
        return f"uid {self.uid} (pid {self.pid})"


@dataclass(frozen=True, slots=True)
class Rule:
    """One parsed rule; ``text`` is what the user wrote (shown back in tables and logs)."""

    text: str
    kind: Literal["all", "unix", "tcp", "uid", "gid", "cgroup", "net"]
    number: int = -1
    path: str = ""
    network: Network | None = None

    def matches(self, peer: Peer) -> bool:
        kind = self.kind
        if kind == "all":
            return True
        if kind == "net":
            return peer.address is not None and peer.address in self.network  # type: ignore[operator]
        if kind == "tcp":
            return peer.address is not None
        if peer.uid is None:  # the rest name unix peers only
            return False
        if kind == "unix":
            return True
        if kind == "uid":
            return peer.uid == self.number
        if kind == "gid":
            return self.number in peer.gids
        cgroup = peer.cgroup
        return cgroup is not None and (
            self.path == "/" or cgroup == self.path or cgroup.startswith(self.path + "/")
        )


def parse_rule(text: object, where: str) -> Rule:
    """One rule, or InvalidArgument naming ``where`` and the rule that was broken."""
    if not isinstance(text, str):
        raise InvalidArgument(f"{where}: a rule must be a string, got {text!r}")
    word = text.strip()
    kind, sep, value = word.partition(":")
    if not sep:
        if word in ("all", "unix", "tcp"):
            return Rule(word, word)  # type: ignore[arg-type]
        raise _bad(where, text, "unknown rule")
    if not value:
        raise _bad(where, text, f"{kind}: needs a value")
    if kind in ("uid", "gid"):
        if not value.isdigit() or int(value) > 0xFFFFFFFE:
            raise _bad(where, text, f"{kind}: must be a number 0..4294967294")
        return Rule(word, kind, number=int(value))  # type: ignore[arg-type]
    if kind == "user":
        try:
            return Rule(word, "uid", number=pwd.getpwnam(value).pw_uid)
        except KeyError:
            raise _bad(where, text, f"no user {value!r} on this host") from None
    if kind == "group":
        try:
            return Rule(word, "gid", number=grp.getgrnam(value).gr_gid)
        except KeyError:
            raise _bad(where, text, f"no group {value!r} on this host") from None
    if kind == "cgroup":
        if not value.startswith("/") or "\0" in value or "/../" in value + "/":
            raise _bad(where, text, "cgroup: must be an absolute cgroup path such as"
                       " /machine.slice")  # fmt: skip
        return Rule(word, "cgroup", path=value.rstrip("/") or "/")
    if kind == "net":
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError as err:
            raise _bad(where, text, f"net: {err}") from None
        return Rule(word, "net", network=network)
    raise _bad(where, text, "unknown rule")


def _bad(where: str, text: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"{where}: {text!r}: {why} (rules: {', '.join(RULE_FORMS)})")


def parse_rules(texts: Iterable[object], where: str) -> tuple[Rule, ...]:
    return tuple(parse_rule(t, f"{where}[{i}]") for i, t in enumerate(texts))


#: Why ``allow``/``allow_ro`` are refused on a directory device.
NOT_FOR_MOUNTS = ("applies to NBD exports only: a FUSE mount is guarded by the backing tree's"
                  " own permissions")  # fmt: skip

Decision = Literal["rw", "ro"] | None


@dataclass(frozen=True)
class Access:
    """A device's rules. ``decide`` answers "rw", "ro" or None (refused)."""

    allow: tuple[Rule, ...] = ()
    allow_ro: tuple[Rule, ...] = ()

    @classmethod
    def parse(cls, allow: Iterable[object], allow_ro: Iterable[object], where: str = "") -> Access:
        return cls(parse_rules(allow, f"{where}allow"), parse_rules(allow_ro, f"{where}allow_ro"))

    @property
    def open(self) -> bool:
        """No rules: whoever reaches the listener."""
        return not self.allow and not self.allow_ro

    def decide(self, peer: Peer) -> Decision:
        if self.open or peer.uid == 0:
            return "rw"
        if any(rule.matches(peer) for rule in self.allow):
            return "rw"
        if any(rule.matches(peer) for rule in self.allow_ro):
            return "ro"
        return None


OPEN = Access()


@dataclass(frozen=True)
class Confinement:
    """Where a caller that is not root (a member of ``daemon.admin_group``) may create devices:
    backing stores under ``daemon.allowed_backing``, mount points under
    ``daemon.allowed_mounts``. Empty lists (the default) allow nothing: being in the admin
    group lets one change weights and bands, not choose what root opens or mounts.

    A backing file is judged by what was actually opened (``/proc/self/fd``), after every
    symlink, so a link swapped in after the check gains nothing. A directory and a mount point
    are judged by their resolved paths, which must contain no symlink."""

    backing_dirs: tuple[str, ...]
    mount_dirs: tuple[str, ...]

    @staticmethod
    def _under(path: str, dirs: tuple[str, ...]) -> bool:
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)

    def _refuse(self, key: str, path: str, what: str) -> AccessDenied:
        allowed = ", ".join(self.backing_dirs if key.endswith("backing") else self.mount_dirs)
        return AccessDenied(f"Permission denied: {what} {path!r} is not under daemon.{key}"
                            f" ({allowed or 'empty: root only'})")  # fmt: skip

    def check_backing(self, fd: int, path: str) -> None:
        real = os.readlink(f"/proc/self/fd/{fd}")
        if not self._under(real, self.backing_dirs):
            raise self._refuse("allowed_backing", real, "the backing store")

    def _resolved(self, path: str, key: str, what: str, dirs: tuple[str, ...]) -> None:
        absolute = os.path.normpath(os.path.abspath(path))
        real = os.path.realpath(absolute)
        if real != absolute:
            raise AccessDenied(f"Permission denied: {what} {path!r} goes through a symlink"
                               f" (to {real!r}): give the real path")  # fmt: skip
        if not self._under(real, dirs):
            raise self._refuse(key, real, what)

    def check_mount(self, backing: str, mountpoint: str | None) -> None:
        self._resolved(backing, "allowed_backing", "the backing directory", self.backing_dirs)
        if mountpoint:
            self._resolved(mountpoint, "allowed_mounts", "the mount point", self.mount_dirs)
