"""One exception hierarchy for every entry point.

Each error carries the original's errno name (EINVAL, EEXIST, ...) so that the CLI, the control
socket and the simulator can all report the same text and map it to the same exit status.
"""

from __future__ import annotations

import errno as _errno


class IobandError(Exception):
    """A refused command or request. ``str(err)`` is the message text; ``errno_name`` its class."""

    errno_name = "EINVAL"

    def __init__(self, message: str, *, errno_name: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if errno_name is not None:
            self.errno_name = errno_name

    @property
    def errno(self) -> int:
        return getattr(_errno, self.errno_name)

    def __str__(self) -> str:
        return self.message

    def describe(self) -> str:
        """``message (ENAME)``: the form every front end prints."""
        return f"{self.message} ({self.errno_name})"


class InvalidArgument(IobandError):
    errno_name = "EINVAL"


class AlreadyExists(IobandError):
    errno_name = "EEXIST"


class Busy(IobandError):
    errno_name = "EBUSY"


class NoSuchDevice(IobandError):
    errno_name = "ENODEV"


class NoQueue(IobandError):
    errno_name = "ENXIO"


class AccessDenied(IobandError):
    errno_name = "EACCES"


class NotFound(IobandError):
    errno_name = "ENOENT"


#: Distinct exit status per errno name, shared by every command-line entry point.
EXIT_STATUS = {
    "EINVAL": 2,
    "EEXIST": 3,
    "EBUSY": 4,
    "ENODEV": 5,
    "ENXIO": 6,
    "EACCES": 7,
    "ENOENT": 8,
}
