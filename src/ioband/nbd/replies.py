"""Transmission-phase reply builders and the errno mapping: pure functions returning bytes.

Replies that carry read data are split into a header (built here) and the data (sent by the
caller right after it), so a server can write both with ``writelines``/``sendmsg`` and never
concatenate a large buffer. :class:`~ioband.nbd.protocol.ServerConnection` has methods that
choose between simple and structured replies from what was negotiated; these functions are the
unconditional building blocks.
"""

from __future__ import annotations

import errno as _errno
import struct
from collections.abc import Iterable

from ioband.nbd.constants import (
    MAX_STRING,
    SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
    NbdError,
    ReplyFlag,
    ReplyType,
)

__all__ = [
    "block_status_chunk",
    "error_chunk",
    "error_offset_chunk",
    "nbd_error",
    "none_chunk",
    "offset_data_header",
    "offset_hole_chunk",
    "simple_reply",
    "structured_header",
]

_SIMPLE = struct.Struct(">IIQ")  # magic, error, cookie
_STRUCTURED = struct.Struct(">IHHQI")  # magic, flags, type, cookie, payload length
_OFFSET_DATA = struct.Struct(">IHHQIQ")  # structured header + offset
_OFFSET_HOLE = struct.Struct(">IHHQIQI")  # structured header + offset + hole size
_ERROR = struct.Struct(">IHHQIIH")  # structured header + error + message length
_U64 = struct.Struct(">Q")

_DONE = int(ReplyFlag.DONE)
_T_NONE = int(ReplyType.NONE)
_T_OFFSET_DATA = int(ReplyType.OFFSET_DATA)
_T_OFFSET_HOLE = int(ReplyType.OFFSET_HOLE)
_T_BLOCK_STATUS = int(ReplyType.BLOCK_STATUS)
_T_ERROR = int(ReplyType.ERROR)
_T_ERROR_OFFSET = int(ReplyType.ERROR_OFFSET)

_simple_pack = _SIMPLE.pack
_offset_data_pack = _OFFSET_DATA.pack


def simple_reply(cookie: int, error: int = 0) -> bytes:
    """A 16-byte simple reply. For a successful simple-reply READ, the data follows it."""
    return _simple_pack(SIMPLE_REPLY_MAGIC, error, cookie)


def structured_header(cookie: int, reply_type: int, length: int, flags: int = _DONE) -> bytes:
    """The 20-byte header of any structured reply chunk; ``length`` is its payload's size."""
    return _STRUCTURED.pack(STRUCTURED_REPLY_MAGIC, flags, reply_type, cookie, length)


def offset_data_header(cookie: int, offset: int, length: int, done: bool = True) -> bytes:
    """Header (28 bytes, offset included) of an ``NBD_REPLY_TYPE_OFFSET_DATA`` chunk.

    ``length`` is the number of data bytes the caller sends right after these bytes (>= 1).
    """
    if length < 1:
        raise ValueError("an OFFSET_DATA chunk carries at least one byte")
    return _offset_data_pack(
        STRUCTURED_REPLY_MAGIC, _DONE if done else 0, _T_OFFSET_DATA, cookie, length + 8, offset
    )


def offset_hole_chunk(cookie: int, offset: int, length: int, done: bool = True) -> bytes:
    """A whole ``NBD_REPLY_TYPE_OFFSET_HOLE`` chunk: ``length`` (>= 1) bytes read as zeroes.

    Only valid with structured replies, and not for a READ with ``NBD_CMD_FLAG_DF`` set unless
    the hole covers the whole request.
    """
    if length < 1:
        raise ValueError("a hole is at least one byte")
    return _OFFSET_HOLE.pack(
        STRUCTURED_REPLY_MAGIC, _DONE if done else 0, _T_OFFSET_HOLE, cookie, 12, offset, length
    )


def none_chunk(cookie: int) -> bytes:
    """``NBD_REPLY_TYPE_NONE`` with the DONE flag: ends a structured reply."""
    return _STRUCTURED.pack(STRUCTURED_REPLY_MAGIC, _DONE, _T_NONE, cookie, 0)


def _message_bytes(message: str) -> bytes:
    raw = message.replace("\0", " ").encode("utf-8", "replace")
    if len(raw) > MAX_STRING:
        raw = raw[:MAX_STRING].decode("utf-8", "ignore").encode("utf-8")
    return raw


def error_chunk(cookie: int, error: int, message: str = "", done: bool = True) -> bytes:
    """A whole ``NBD_REPLY_TYPE_ERROR`` chunk (structured replies only); ``error`` != 0.

    The message is for humans; it is cut to the spec's 4096 bytes and NUL bytes are replaced.
    """
    if not error:
        raise ValueError("an error chunk needs a nonzero error")
    msg = _message_bytes(message)
    size = len(msg)
    flags = _DONE if done else 0
    head = _ERROR.pack(STRUCTURED_REPLY_MAGIC, flags, _T_ERROR, cookie, 6 + size, error, size)
    return head + msg


def error_offset_chunk(
    cookie: int, error: int, offset: int, message: str = "", done: bool = True
) -> bytes:
    """A whole ``NBD_REPLY_TYPE_ERROR_OFFSET`` chunk: ``error`` happened at ``offset``."""
    if not error:
        raise ValueError("an error chunk needs a nonzero error")
    msg = _message_bytes(message)
    head = _ERROR.pack(
        STRUCTURED_REPLY_MAGIC,
        _DONE if done else 0,
        _T_ERROR_OFFSET,
        cookie,
        14 + len(msg),
        error,
        len(msg),
    )
    return head + msg + _U64.pack(offset)


def block_status_chunk(
    cookie: int, context_id: int, extents: Iterable[tuple[int, int]], done: bool = True
) -> bytes:
    """A whole ``NBD_REPLY_TYPE_BLOCK_STATUS`` chunk.

    ``extents`` are consecutive ``(length, status_flags)`` pairs from the request's offset;
    lengths are nonzero and below 2**32 (see :class:`~ioband.nbd.constants.BlockState`).
    """
    flat: list[int] = []
    for length, flags in extents:
        if not 0 < length < 1 << 32:
            raise ValueError(f"extent length {length} out of range")
        flat.append(length)
        flat.append(flags)
    if not flat:
        raise ValueError("a block status chunk needs at least one extent")
    body = struct.pack(f">I{len(flat)}I", context_id, *flat)
    return (
        _STRUCTURED.pack(
            STRUCTURED_REPLY_MAGIC, _DONE if done else 0, _T_BLOCK_STATUS, cookie, len(body)
        )
        + body
    )


# -- errno mapping -------------------------------------------------------------------------------

_ERRNO_MAP: dict[int, int] = {0: 0}


def _map(nbd: NbdError, *names: str) -> None:
    for name in names:
        value = getattr(_errno, name, None)
        if value is not None:
            _ERRNO_MAP.setdefault(value, int(nbd))


_map(NbdError.EPERM, "EPERM", "EROFS", "EACCES")
_map(NbdError.EIO, "EIO")
_map(NbdError.ENOMEM, "ENOMEM")
_map(NbdError.EINVAL, "EINVAL")
_map(NbdError.ENOSPC, "ENOSPC", "EDQUOT", "EFBIG")
_map(NbdError.EOVERFLOW, "EOVERFLOW")
_map(NbdError.ENOTSUP, "ENOTSUP", "EOPNOTSUPP")
_map(NbdError.ESHUTDOWN, "ESHUTDOWN")


def nbd_error(err: int | BaseException | None) -> int:
    """The NBD error value for a Python ``errno`` value (or an exception carrying one).

    EROFS and EACCES become EPERM; EDQUOT and EFBIG become ENOSPC (as the spec asks);
    EOPNOTSUPP becomes ENOTSUP; anything unknown, and an exception without an errno, becomes
    EIO. ``0`` stays ``0``. Note the spec wants ENOTSUP only for ``NBD_CMD_FLAG_FAST_ZERO``
    failures and EOVERFLOW only for DF reads / oversized payload-less commands.
    """
    if isinstance(err, BaseException):
        err = getattr(err, "errno", None)
    if err is None:
        return int(NbdError.EIO)
    return _ERRNO_MAP.get(err, int(NbdError.EIO))
