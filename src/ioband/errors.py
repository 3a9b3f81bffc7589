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


class ConfigError(InvalidArgument):
    """A configuration file was refused; ``key`` names the offending entry. ``errno_name``:
    the errno of the cause when it is not EINVAL (a missing file: ENOENT; a refusal of the
    engine: its own), so that it is said once."""

    def __init__(self, source: str, key: str, rule: str, errno_name: str | None = None) -> None:
        super().__init__(f"{source}: {key}: {rule}", errno_name=errno_name)
        self.source = source
        self.key = key
        self.rule = rule

    @classmethod
    def of(cls, source: str, key: str, err: IobandError, prefix: str = "") -> ConfigError:
        """The engine's (or another component's) refusal ``err``, as the entry ``key``'s."""
        return cls(source, key, f"{prefix}{err}", err.errno_name)


class ConfigErrors(ConfigError):
    """Every error a configuration file has (each entry checked on its own), one a line;
    ``errors[0]`` is the first (``key``/``rule`` are its)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.source, first.key, first.rule, first.errno_name)
        self.errors = errors
        self.message = "\n".join(str(e) for e in errors)
        self.args = (self.message,)


def os_errno_name(err: OSError) -> str | None:
    return _errno.errorcode.get(err.errno) if err.errno else None


def unusable_path(src: str, key: str, path: str, err: OSError, none: str = "none") -> ConfigError:
    """A path of the configuration the daemon cannot create or write (most often: started by
    a user who is not root, with the default paths under /run and /var/lib)."""
    return ConfigError(src, key, f"cannot use {path!r}: {err.strerror or err}: run the daemon as"
                       f" root, or set {key} to a path it may write ('' for {none})",
                       os_errno_name(err))  # fmt: skip


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
