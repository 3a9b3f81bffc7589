"""Wire constants of the NBD protocol (NetworkBlockDevice/nbd ``doc/proto.md``).

Magic numbers are plain ints; everything with a name in the spec is an :class:`~enum.IntEnum`
or :class:`~enum.IntFlag` here, so values print readably. The codec's hot path uses plain ints.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

# -- magic numbers -------------------------------------------------------------------------------

NBDMAGIC = 0x4E42444D41474943  # b"NBDMAGIC", start of the server greeting
IHAVEOPT = 0x49484156454F5054  # b"IHAVEOPT", greeting and every option request
OPTION_REPLY_MAGIC = 0x0003E889045565A9  # every fixed-newstyle option reply
REQUEST_MAGIC = 0x25609513  # transmission request
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
EXTENDED_REQUEST_MAGIC = 0x21E41C71  # experimental EXTENDED_HEADERS: never negotiated here

# -- sizes ---------------------------------------------------------------------------------------

MAX_STRING = 4096  # longest string (export name, message) the spec allows
DEFAULT_MAX_PAYLOAD = 1 << 25  # 32 MiB: "SHOULD NOT be considered a denial of service"
EXPORT_NAME_ZEROES = 124  # reserved zeroes after the NBD_OPT_EXPORT_NAME reply


class HandshakeFlag(IntFlag):
    """16-bit flags the server sends in its greeting."""

    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class ClientFlag(IntFlag):
    """32-bit flags the client answers the greeting with."""

    C_FIXED_NEWSTYLE = 1 << 0
    C_NO_ZEROES = 1 << 1


class TransmissionFlag(IntFlag):
    """16-bit per-export flags (NBD_INFO_EXPORT and the NBD_OPT_EXPORT_NAME reply)."""

    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    ROTATIONAL = 1 << 4
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6
    SEND_DF = 1 << 7
    CAN_MULTI_CONN = 1 << 8
    SEND_RESIZE = 1 << 9  # experimental RESIZE extension: never set here
    SEND_CACHE = 1 << 10
    SEND_FAST_ZERO = 1 << 11
    BLOCK_STATUS_PAYLOAD = 1 << 12  # experimental EXTENDED_HEADERS: never set here


class Opt(IntEnum):
    """Option numbers of the handshake."""

    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4  # withdrawn
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11  # experimental


class Rep(IntEnum):
    """Option reply types; errors have bit 31 set."""

    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = (1 << 31) + 1
    ERR_POLICY = (1 << 31) + 2
    ERR_INVALID = (1 << 31) + 3
    ERR_PLATFORM = (1 << 31) + 4
    ERR_TLS_REQD = (1 << 31) + 5
    ERR_UNKNOWN = (1 << 31) + 6
    ERR_SHUTDOWN = (1 << 31) + 7
    ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
    ERR_TOO_BIG = (1 << 31) + 9
    ERR_EXT_HEADER_REQD = (1 << 31) + 10


class Info(IntEnum):
    """Information types of NBD_REP_INFO (NBD_OPT_INFO / NBD_OPT_GO)."""

    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class Cmd(IntEnum):
    """Request (command) types of the transmission phase."""

    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7


class CmdFlag(IntFlag):
    """16-bit command flags of a request."""

    FUA = 1 << 0
    NO_HOLE = 1 << 1
    DF = 1 << 2
    REQ_ONE = 1 << 3
    FAST_ZERO = 1 << 4
    PAYLOAD_LEN = 1 << 5  # experimental EXTENDED_HEADERS: always refused here


class ReplyFlag(IntFlag):
    """Flags of a structured reply chunk."""

    DONE = 1 << 0


class ReplyType(IntEnum):
    """Structured reply chunk types; error chunks have bit 15 set."""

    NONE = 0
    OFFSET_DATA = 1
    OFFSET_HOLE = 2
    BLOCK_STATUS = 5
    ERROR = (1 << 15) + 1
    ERROR_OFFSET = (1 << 15) + 2


class NbdError(IntEnum):
    """The only error values allowed on the wire (they equal Linux errno values)."""

    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108


class BlockState(IntFlag):
    """Status flags of the ``base:allocation`` metadata context."""

    HOLE = 1 << 0
    ZERO = 1 << 1


BASE_ALLOCATION = "base:allocation"
