"""Sans-I/O NBD server codec (fixed newstyle handshake + transmission phase).

No sockets, no asyncio, no clock: feed received bytes to :meth:`ServerConnection.receive_data`,
pull events with :meth:`ServerConnection.next_event` until it returns :data:`NEED_DATA`, and
send what :meth:`ServerConnection.data_to_send` returns (handshake replies the codec makes
itself). Transmission replies are built by the caller with the connection's reply methods
(which pick simple or structured replies as negotiated) or the pure builders in
:mod:`ioband.nbd.replies`.

A minimal server loop::

    conn = ServerConnection(exports.get, lambda: list(exports))
    sock.sendall(conn.data_to_send())                  # the greeting
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            sock.sendall(conn.data_to_send())
            conn.receive_data(sock.recv(65536))        # b"" means end of stream
        elif isinstance(event, ExportChosen):
            sock.sendall(conn.data_to_send())          # the final GO / EXPORT_NAME reply
        elif isinstance(event, Command):
            ...                                        # do the I/O, send conn.*_reply(...)
        elif isinstance(event, Invalid):
            sock.sendall(conn.error_reply(event.cookie, event.error, event.message))
        else:                                          # Disconnect or ProtocolError
            sock.sendall(conn.data_to_send())
            break

TLS (doc/proto.md, "TLS support"): the codec is given a mode, :class:`TlsMode`. ``OFF`` is the
spec's NOTLS (NBD_OPT_STARTTLS gets NBD_REP_ERR_UNSUP); ``ON`` offers TLS at the client's choice
(SELECTIVETLS where no export is TLS-only); ``REQUIRE`` is FORCEDTLS: before TLS every option but
STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD, NBD_OPT_EXPORT_NAME ends the session (it has no
error reply) and a client without NBD_FLAG_C_FIXED_NEWSTYLE (which must be served NOTLS) is
closed at once. An accepted STARTTLS is answered ACK and returned as :class:`StartTls`: send the
ACK, run the TLS handshake, and feed only decrypted bytes from then on. Plaintext that arrived
after the STARTTLS (a client may send nothing before the ACK: it can only be injected) closes the
connection, and what was negotiated in plaintext (structured replies, the meta context) is
forgotten, so a man in the middle cannot slip options into the encrypted session
(CVE-2021-3716 in nbdkit).

Every request reaching the server as a :class:`Command` has been validated against the export
(bounds, alignment, flags, read-only, negotiated features); anything else becomes an
:class:`Invalid` (answer it with an error, do no I/O) or a :class:`ProtocolError` (close).

Validation order for a request (first failure wins):

1. bad magic → ProtocolError; ``NBD_CMD_DISC`` → Disconnect(clean=True), whatever its fields;
2. unknown type → EINVAL (no payload is assumed);
3. WRITE longer than the export's ``max_block``: above ``max(max_block, 32 MiB)`` →
   ProtocolError (the payload is not read); otherwise the payload is discarded → EINVAL;
4. after :meth:`ServerConnection.start_shutdown` → ESHUTDOWN;
5. WRITE / TRIM / WRITE_ZEROES on a read-only export → EPERM;
6. a command the export does not offer (FLUSH, TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS
   without ``base:allocation`` negotiated) → EINVAL;
7. a flag not valid for the command (FUA needs SEND_FUA, DF needs structured replies and
   READ, NO_HOLE/FAST_ZERO need WRITE_ZEROES, REQ_ONE needs BLOCK_STATUS) → EINVAL;
8. FLUSH with nonzero offset or length → EINVAL;
9. length 0 (READ, WRITE, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS) → EINVAL;
10. READ longer than ``max_block`` → EINVAL;
11. offset + length beyond the export size → ENOSPC for WRITE / WRITE_ZEROES, else EINVAL;
12. offset or length not a multiple of ``min_block`` → EINVAL;
13. WRITE_ZEROES with FAST_ZERO on an export without ``fast_zero`` → ENOTSUP.

A WRITE payload is always consumed, also when the request is refused (the Invalid event comes
after it); refused payloads are discarded as they arrive, never buffered.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from ioband.nbd.constants import (
    BASE_ALLOCATION,
    DEFAULT_MAX_PAYLOAD,
    EXPORT_NAME_ZEROES,
    IHAVEOPT,
    MAX_STRING,
    NBDMAGIC,
    OPTION_REPLY_MAGIC,
    REQUEST_MAGIC,
    BlockState,
    ClientFlag,
    Cmd,
    CmdFlag,
    HandshakeFlag,
    Info,
    NbdError,
    Opt,
    Rep,
    TransmissionFlag,
)
from ioband.nbd.replies import (
    block_status_chunk,
    error_chunk,
    error_offset_chunk,
    nbd_error,
    none_chunk,
    offset_data_header,
    offset_hole_chunk,
    simple_reply,
    structured_header,
)

__all__ = [
    "BASE_ALLOCATION_ID",
    "CMD_BLOCK_STATUS",
    "CMD_CACHE",
    "CMD_DISC",
    "CMD_FLAG_DF",
    "CMD_FLAG_FAST_ZERO",
    "CMD_FLAG_FUA",
    "CMD_FLAG_NO_HOLE",
    "CMD_FLAG_REQ_ONE",
    "CMD_FLUSH",
    "CMD_READ",
    "CMD_TRIM",
    "CMD_WRITE",
    "CMD_WRITE_ZEROES",
    "GREETING",
    "NEED_DATA",
    "BlockState",
    "Cmd",
    "CmdFlag",
    "Command",
    "ConnectionState",
    "Disconnect",
    "Event",
    "ExportChosen",
    "ExportInfo",
    "Invalid",
    "NbdError",
    "ProtocolError",
    "ServerConnection",
    "StartTls",
    "TlsMode",
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

# Flat aliases, for ``from ioband.nbd import protocol as nbd; nbd.CMD_READ``.
CMD_READ = Cmd.READ
CMD_WRITE = Cmd.WRITE
CMD_DISC = Cmd.DISC
CMD_FLUSH = Cmd.FLUSH
CMD_TRIM = Cmd.TRIM
CMD_CACHE = Cmd.CACHE
CMD_WRITE_ZEROES = Cmd.WRITE_ZEROES
CMD_BLOCK_STATUS = Cmd.BLOCK_STATUS
CMD_FLAG_FUA = CmdFlag.FUA
CMD_FLAG_NO_HOLE = CmdFlag.NO_HOLE
CMD_FLAG_DF = CmdFlag.DF
CMD_FLAG_REQ_ONE = CmdFlag.REQ_ONE
CMD_FLAG_FAST_ZERO = CmdFlag.FAST_ZERO

BASE_ALLOCATION_ID = 1
"""Metadata context id this server gives ``base:allocation`` in NBD_OPT_SET_META_CONTEXT."""

DEFAULT_MAX_OPTION_LENGTH = 1 << 16
"""Longest option payload buffered (GO/INFO/meta-context data); longer → NBD_REP_ERR_TOO_BIG."""

DEFAULT_MAX_OPTION_SKIP = 1 << 20
"""Longest option payload skipped (unsupported or too big); longer → close the connection."""

_EINVAL = int(NbdError.EINVAL)
_EPERM = int(NbdError.EPERM)
_ENOSPC = int(NbdError.ENOSPC)
_ENOTSUP = int(NbdError.ENOTSUP)
_ESHUTDOWN = int(NbdError.ESHUTDOWN)

_READ, _WRITE, _DISC, _FLUSH, _TRIM, _CACHE, _WRITE_ZEROES, _BLOCK_STATUS = range(8)
_CMDS: tuple[Cmd, ...] = tuple(Cmd)
_FUA = int(CmdFlag.FUA)
_NO_HOLE = int(CmdFlag.NO_HOLE)
_DF = int(CmdFlag.DF)
_REQ_ONE = int(CmdFlag.REQ_ONE)
_FAST_ZERO = int(CmdFlag.FAST_ZERO)

_REQUEST = struct.Struct(">IHHQQI")
_REQUEST_SIZE = _REQUEST.size  # 28
_OPTION_HEADER = struct.Struct(">QII")  # IHAVEOPT, option, length
_OPTION_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_EXPORT_NAME_REPLY = struct.Struct(">QH")  # size, transmission flags
_INFO_EXPORT = struct.Struct(">HQH")
_INFO_BLOCK_SIZE = struct.Struct(">HIII")

_SERVER_FLAGS = int(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES)
GREETING = struct.pack(">QQH", NBDMAGIC, IHAVEOPT, _SERVER_FLAGS)
_KNOWN_CLIENT_FLAGS = int(ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES)

# Options whose payload is buffered and parsed; every other option's payload is skipped.
_BUFFERED_OPTIONS = frozenset(
    {Opt.EXPORT_NAME, Opt.INFO, Opt.GO, Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT}
)


def _option_name(option: int) -> str:
    try:
        return f"NBD_OPT_{Opt(option).name}"
    except ValueError:
        return f"option {option}"


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _check_string(what: str, text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > MAX_STRING or b"\0" in raw:
        raise ValueError(f"{what} must be at most {MAX_STRING} UTF-8 bytes without NUL")
    return raw


def _decode_string(raw: bytes) -> str | None:
    """A client string (export name), or None when it breaks the spec's string rules."""
    if len(raw) > MAX_STRING or b"\0" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


# -- export description --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """What the codec needs to know about one export.

    ``can_*`` say which optional commands are offered (they also set the transmission flags);
    a ``read_only`` export offers none of FUA, TRIM and WRITE_ZEROES. ``fast_zero`` says the
    server can honour ``NBD_CMD_FLAG_FAST_ZERO``; without it the codec advertises
    ``NBD_FLAG_SEND_FAST_ZERO`` anyway (as the spec allows) and answers such requests with
    ENOTSUP itself, so clients learn quickly that zeroing is not faster than writing.
    ``block_status`` offers the ``base:allocation`` metadata context; the server must then
    answer ``Cmd.BLOCK_STATUS`` commands (:meth:`ServerConnection.block_status_reply`).
    ``min_block`` / ``preferred_block`` / ``max_block`` are the NBD_INFO_BLOCK_SIZE values;
    requests are checked against them (alignment, READ/WRITE payload size).
    """

    name: str
    size: int
    read_only: bool = False
    can_flush: bool = True
    can_fua: bool = True
    can_trim: bool = True
    can_zero: bool = True
    fast_zero: bool = False
    can_cache: bool = True
    multi_conn: bool = True
    rotational: bool = False
    block_status: bool = False
    min_block: int = 1
    preferred_block: int = 4096
    max_block: int = DEFAULT_MAX_PAYLOAD
    description: str = ""

    def __post_init__(self) -> None:
        _check_string("export name", self.name)
        _check_string("export description", self.description)
        if not 0 <= self.size < 1 << 63:
            raise ValueError(f"export size {self.size} out of range")
        if not _is_power_of_two(self.min_block) or self.min_block > 1 << 16:
            raise ValueError("min_block must be a power of two, at most 65536")
        if not _is_power_of_two(self.preferred_block) or self.preferred_block < max(
            self.min_block, 512
        ):
            raise ValueError("preferred_block must be a power of two >= max(min_block, 512)")
        if not self.preferred_block <= self.max_block <= 0xFFFFFFFF:
            raise ValueError("max_block must be >= preferred_block and fit in 32 bits")

    def transmission_flags(self, structured_replies: bool = False) -> int:
        """The 16-bit transmission flags sent for this export."""
        flags = TransmissionFlag.HAS_FLAGS
        if self.read_only:
            flags |= TransmissionFlag.READ_ONLY
        else:
            if self.can_fua:
                flags |= TransmissionFlag.SEND_FUA
            if self.can_trim:
                flags |= TransmissionFlag.SEND_TRIM
            if self.can_zero:
                flags |= TransmissionFlag.SEND_WRITE_ZEROES | TransmissionFlag.SEND_FAST_ZERO
        if self.can_flush:
            flags |= TransmissionFlag.SEND_FLUSH
        if self.rotational:
            flags |= TransmissionFlag.ROTATIONAL
        if structured_replies:
            flags |= TransmissionFlag.SEND_DF  # a READ is always answered with one data chunk
        if self.multi_conn:
            flags |= TransmissionFlag.CAN_MULTI_CONN
        if self.can_cache:
            flags |= TransmissionFlag.SEND_CACHE
        return int(flags)


class ExportRefused(Exception):
    """Raised by the ``exports`` callable to refuse this client an export: the client gets
    NBD_REP_ERR_POLICY with the message (NBD_OPT_EXPORT_NAME: the session ends)."""


# -- events --------------------------------------------------------------------------------------


class Event:
    """Base class of everything :meth:`ServerConnection.next_event` returns (but NEED_DATA)."""

    __slots__ = ()


@dataclass(slots=True)
class ExportChosen(Event):
    """The handshake is over (NBD_OPT_GO acknowledged or NBD_OPT_EXPORT_NAME answered).

    Send :meth:`ServerConnection.data_to_send` before any transmission reply.
    ``name`` is the export's canonical name (the default export's for an empty request);
    ``block_size_agreed`` is true when the client asked for NBD_INFO_BLOCK_SIZE in its GO and
    so promised to honour the block sizes; ``base_allocation`` is true when BLOCK_STATUS
    commands may follow.
    """

    name: str
    export: ExportInfo
    transmission_flags: int
    structured_replies: bool
    block_size_agreed: bool
    base_allocation: bool


@dataclass(slots=True)
class Command(Event):
    """A validated request to perform. DISC never appears here (it is :class:`Disconnect`).

    ``data`` is the WRITE payload, else None: exactly ``length`` bytes, a read-only view of
    the received bytes, or of a buffer of its own when the payload came in pieces. The codec
    never writes to memory it has lent out, so the view may go to another thread; it keeps
    the whole received chunk alive, so copy it if you hold on to it for long."""

    cookie: int
    kind: Cmd
    flags: int
    offset: int
    length: int
    data: memoryview | None = None

    @property
    def fua(self) -> bool:
        """``NBD_CMD_FLAG_FUA``: persist before replying."""
        return bool(self.flags & _FUA)

    @property
    def no_hole(self) -> bool:
        """``NBD_CMD_FLAG_NO_HOLE`` (WRITE_ZEROES): allocate, don't punch a hole."""
        return bool(self.flags & _NO_HOLE)

    @property
    def fast_zero(self) -> bool:
        """``NBD_CMD_FLAG_FAST_ZERO`` (WRITE_ZEROES; only if the export has ``fast_zero``)."""
        return bool(self.flags & _FAST_ZERO)

    @property
    def req_one(self) -> bool:
        """``NBD_CMD_FLAG_REQ_ONE`` (BLOCK_STATUS): answer with exactly one extent."""
        return bool(self.flags & _REQ_ONE)

    @property
    def df(self) -> bool:
        """``NBD_CMD_FLAG_DF`` (READ): at most one content chunk (no hole chunks mixed in)."""
        return bool(self.flags & _DF)


@dataclass(slots=True)
class Invalid(Event):
    """A request refused without I/O: answer it with ``error`` (an NBD error value), e.g.
    ``conn.error_reply(ev.cookie, ev.error, ev.message)``. ``kind`` is the raw command type
    (a :class:`Cmd` when known)."""

    cookie: int
    error: int
    kind: int
    message: str


@dataclass(slots=True)
class Disconnect(Event):
    """The session ended: ``clean`` after NBD_OPT_ABORT (its ACK is in data_to_send) or
    NBD_CMD_DISC (finish in-flight requests first), not clean at end of stream between
    messages. Close the connection."""

    clean: bool = True


@dataclass(slots=True)
class ProtocolError(Event):
    """The client broke the protocol (or asked for something answerable only by closing):
    close the connection without replying. ``reason`` is for logs."""

    reason: str


@dataclass(slots=True)
class StartTls(Event):
    """NBD_OPT_STARTTLS was accepted: send :meth:`ServerConnection.data_to_send` (the ACK), then
    run the TLS handshake as the server before reading anything more; every later byte in
    both directions goes through TLS. If the handshake fails, close the connection (it is too
    late to go on in plaintext)."""


class TlsMode(Enum):
    """How a connection offers TLS; the values are the configuration's ``tls`` strings."""

    OFF = "off"  # NOTLS: NBD_OPT_STARTTLS is unsupported
    ON = "on"  # TLS at the client's choice; plaintext clients are served too
    REQUIRE = "require"  # FORCEDTLS: nothing but STARTTLS and ABORT before TLS


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()
"""Returned by next_event when it needs more bytes (send data_to_send() first)."""


class ConnectionState(Enum):
    GREETING = "greeting"  # waiting for the client flags
    OPTIONS = "options"  # option haggling
    TRANSMISSION = "transmission"
    CLOSED = "closed"  # after Disconnect or ProtocolError


_GREETING_STATE = ConnectionState.GREETING
_OPTIONS_STATE = ConnectionState.OPTIONS
_TRANSMISSION_STATE = ConnectionState.TRANSMISSION
_CLOSED_STATE = ConnectionState.CLOSED


def _option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return _OPTION_REPLY.pack(OPTION_REPLY_MAGIC, option, reply, len(data)) + data


def _error_reply(option: int, reply: int, message: str) -> bytes:
    return _option_reply(option, reply, message.encode("utf-8", "replace")[:MAX_STRING])


# -- the connection ------------------------------------------------------------------------------


class ServerConnection:
    """Server side of one NBD connection.

    ``exports(name)`` returns the :class:`ExportInfo` for a name, or None; it is called during
    the handshake only, so exports can come and go at run time. ``list_exports()`` gives the
    names for NBD_OPT_LIST. An empty requested name means ``default_export`` when that is set
    (otherwise ``exports("")`` decides).

    ``tls`` is the connection's :class:`TlsMode` (see the module doc); after a
    :class:`StartTls` event ``tls_active`` is true.

    The greeting is queued at construction: send :meth:`data_to_send` first.
    """

    def __init__(
        self,
        exports: Callable[[str], ExportInfo | None],
        list_exports: Callable[[], Iterable[str]] = tuple,
        *,
        default_export: str | None = None,
        max_option_length: int = DEFAULT_MAX_OPTION_LENGTH,
        max_option_skip: int = DEFAULT_MAX_OPTION_SKIP,
        tls: TlsMode | str = TlsMode.OFF,
    ) -> None:
        self._exports = exports
        self.tls_mode = TlsMode(tls)
        self.tls_active = False  # STARTTLS was acknowledged: everything since goes through TLS
        self._list_exports = list_exports
        self.default_export = default_export
        self._max_option_length = max_option_length
        self._max_option_skip = max(max_option_skip, max_option_length)

        self._out = bytearray(GREETING)
        # Receive buffer: _buf[_pos:] is unparsed. _mutable: _buf is our own bytearray with no
        # views lent out, so it may be resized in place; otherwise appends start a new one.
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._mutable = False
        self._eof = False
        # A message body in progress (while one is, the receive buffer is empty):
        self._skip = 0  # bytes still to discard
        self._payload: bytearray | None = None  # WRITE payload being collected
        self._payload_fill = 0
        self._after_reply: bytes | None = None  # option reply to queue once the body is done
        self._after_event: Event | None = None  # event to return once the body is done

        self._state = _GREETING_STATE
        self._terminal: Event | None = None
        self._shutting_down = False

        self.client_flags = 0
        self.structured_replies = False
        self.export: ExportInfo | None = None
        self.transmission_flags = 0
        self.base_allocation = False
        self._meta_name: str | None = None  # export name of the last successful SET_META

        # Per-command tables, filled when transmission starts.
        self._cmd_error: list[int] = [_EINVAL] * 8
        self._cmd_flags: list[int] = [0] * 8
        self._size = 0
        self._min_mask = 0
        self._max_block = 0
        self._skip_limit = 0

    # -- I/O side --------------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def buffered_bytes(self) -> int:
        """Received bytes held by the codec (unparsed data and a partial WRITE payload)."""
        return len(self._buf) - self._pos + (self._payload_fill if self._payload is not None else 0)

    def data_to_send(self) -> bytes:
        """Bytes the codec produced (greeting, option replies); empties the outgoing buffer."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Hand over received bytes; ``b""`` means the peer closed its side.

        ``bytes`` are kept as they are (WRITE payloads become views of them); other buffers
        are copied, so the caller may reuse them. Data after the end or after the connection
        closed is ignored.
        """
        if self._eof or self._state is _CLOSED_STATE:
            return
        if type(data) is not bytes and type(data) is not bytearray:
            data = memoryview(data).cast("B")
        n = len(data)
        if not n:
            self._eof = True
            return
        if self._skip or self._payload is not None:
            # A body is in progress, so the buffer is empty: take the body straight from data.
            view = memoryview(data)
            if self._skip:
                k = min(n, self._skip)
                self._skip -= k
            else:
                payload = self._payload
                fill = self._payload_fill
                k = min(n, len(payload) - fill)
                payload[fill : fill + k] = view[:k]
                self._payload_fill = fill + k
            if k == n:
                return
            data = view[k:]
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            if type(data) is bytes:
                self._buf = data
                self._mutable = False
            else:
                self._buf = bytearray(data)
                self._mutable = True
            self._pos = 0
        elif self._mutable:
            if pos:
                del buf[:pos]  # O(1): bytearray drops a prefix by moving its start
                self._pos = 0
            buf += data
        else:
            fresh = bytearray(memoryview(buf)[pos:])
            fresh += data
            self._buf = fresh
            self._pos = 0
            self._mutable = True

    def next_event(self) -> Event | _NeedData:
        """The next event, or NEED_DATA. After Disconnect/ProtocolError it keeps returning
        that same event."""
        state = self._state
        if state is _TRANSMISSION_STATE:
            return self._next_request()
        if state is _OPTIONS_STATE:
            return self._next_option()
        if state is _GREETING_STATE:
            return self._next_client_flags()
        return self._terminal  # type: ignore[return-value]

    def start_shutdown(self) -> None:
        """The server is going away: further options (but ABORT) get NBD_REP_ERR_SHUTDOWN and
        further requests (but DISC) an ESHUTDOWN Invalid, as the spec recommends."""
        self._shutting_down = True
        for kind in range(8):
            if kind != _DISC:
                self._cmd_error[kind] = _ESHUTDOWN

    # -- reply helpers (transmission phase) ------------------------------------------------------

    def read_reply_header(self, cookie: int, offset: int, length: int) -> bytes:
        """Header for a successful READ of ``length`` bytes at ``offset``: a structured
        OFFSET_DATA chunk with DONE (28 bytes) or a simple reply (16 bytes). Send the data
        right after it."""
        if self.structured_replies:
            return offset_data_header(cookie, offset, length)
        return simple_reply(cookie, 0)

    def read_reply(self, cookie: int, offset: int, data: bytes | memoryview) -> tuple:
        """``(header, data)`` for a successful READ, ready for ``transport.writelines``.
        ``data`` must be exactly the requested length."""
        return self.read_reply_header(cookie, offset, len(data)), data

    def ok_reply(self, cookie: int) -> bytes:
        """Success for any command but READ (a simple reply is valid in both modes)."""
        return simple_reply(cookie, 0)

    def error_reply(self, cookie: int, error: int, message: str = "") -> bytes:
        """Failure for any command (READ included): an NBD_REPLY_TYPE_ERROR chunk carrying
        ``message`` with structured replies, else a simple reply (the message is dropped).
        ``error`` is an NBD error or a Python errno value: it goes through :func:`nbd_error`,
        which leaves NBD values alone."""
        if not error:
            raise ValueError("error_reply needs a nonzero error")
        error = nbd_error(error)
        if self.structured_replies:
            return error_chunk(cookie, error, message)
        return simple_reply(cookie, error)

    def block_status_reply(self, cookie: int, extents: Iterable[tuple[int, int]]) -> bytes:
        """The whole successful reply to a BLOCK_STATUS command: ``(length, BlockState)``
        extents from the request offset (with REQ_ONE: one extent, not longer than asked)."""
        if not self.base_allocation:
            raise RuntimeError("base:allocation was not negotiated on this connection")
        return block_status_chunk(cookie, BASE_ALLOCATION_ID, extents)

    # -- internals: buffer and terminal states ---------------------------------------------------

    def _close(self, event: Event) -> Event:
        self._state = _CLOSED_STATE
        self._terminal = event
        self._buf = b""
        self._pos = 0
        self._skip = 0
        self._payload = None
        self._after_reply = None
        self._after_event = None
        return event

    def _fail(self, reason: str) -> Event:
        return self._close(ProtocolError(reason))

    def _need_data(self) -> Event | _NeedData:
        if not self._eof:
            return NEED_DATA
        if self._pos < len(self._buf) or self._skip or self._payload is not None:
            return self._fail("end of stream in the middle of a message")
        return self._close(Disconnect(clean=False))

    def _continue_body(self) -> Event | _NeedData | None:
        """Advance the body in progress: NEED_DATA (or a terminal event) while incomplete,
        then the pending event, or None when the caller should go on parsing."""
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if self._skip:
            k = min(avail, self._skip)
            self._pos = pos + k
            self._skip -= k
            if self._skip:
                return self._need_data()
        elif self._payload is not None:
            payload = self._payload
            fill = self._payload_fill
            k = min(avail, len(payload) - fill)
            if k:  # not reached today (receive_data fills the payload directly); kept for safety
                payload[fill : fill + k] = memoryview(buf)[pos : pos + k]
                self._pos = pos + k
                fill += k
                self._payload_fill = fill
            if fill < len(payload):
                return self._need_data()
            self._payload = None
            self._after_event.data = memoryview(payload).toreadonly()  # type: ignore[union-attr]
        if self._after_reply is not None:
            self._out += self._after_reply
            self._after_reply = None
        event = self._after_event
        if event is None:
            return None
        self._after_event = None
        if isinstance(event, Disconnect):
            return self._close(event)
        return event

    def _skip_then(self, length: int, reply: bytes | None, event: Event | None) -> None:
        self._skip = length
        self._after_reply = reply
        self._after_event = event

    # -- internals: handshake --------------------------------------------------------------------

    def _next_client_flags(self) -> Event | _NeedData:
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 4:
            return self._need_data()
        (flags,) = _U32.unpack_from(buf, pos)
        self._pos = pos + 4
        if flags & ~_KNOWN_CLIENT_FLAGS:
            return self._fail(f"unknown client flags {flags:#x}")
        if self.tls_mode is TlsMode.REQUIRE and not flags & ClientFlag.C_FIXED_NEWSTYLE:
            # The spec serves such a client NOTLS, and this server serves nobody without TLS.
            return self._fail("TLS is required and needs fixed newstyle negotiation")
        # A client without C_FIXED_NEWSTYLE is served fixed newstyle anyway (the spec allows
        # it); such a client only sends NBD_OPT_EXPORT_NAME, which works the same.
        self.client_flags = flags
        self._state = _OPTIONS_STATE
        return self._next_option()

    def _next_option(self) -> Event | _NeedData:
        while True:
            if self._skip or self._after_reply is not None or self._after_event is not None:
                event = self._continue_body()
                if event is not None:
                    return event
            buf = self._buf
            pos = self._pos
            avail = len(buf) - pos
            if avail < 16:
                return self._need_data()
            magic, option, length = _OPTION_HEADER.unpack_from(buf, pos)
            if magic != IHAVEOPT:
                if magic >> 32 == REQUEST_MAGIC:
                    return self._fail("transmission request before an export was chosen")
                return self._fail(f"bad option magic {magic:#x}")
            name = _option_name(option)
            if length > self._max_option_skip:
                return self._fail(f"{name}: absurd option length {length}")
            if self._shutting_down and option != Opt.ABORT:
                if option == Opt.EXPORT_NAME:
                    return self._fail("NBD_OPT_EXPORT_NAME while shutting down")
                self._pos = pos + 16
                reply = _error_reply(option, Rep.ERR_SHUTDOWN, "server is shutting down")
                self._skip_then(length, reply, None)
                continue
            if option == Opt.STARTTLS and self.tls_mode is not TlsMode.OFF:
                self._pos = pos + 16
                event = self._starttls(option, name, length)
                if event is not None:
                    return event
                continue
            if (
                self.tls_mode is TlsMode.REQUIRE
                and not self.tls_active
                and option not in (Opt.ABORT, Opt.STARTTLS)
            ):
                if option == Opt.EXPORT_NAME:  # no error reply exists: end the session
                    return self._fail("NBD_OPT_EXPORT_NAME before TLS, which is required")
                self._pos = pos + 16
                msg = f"{name}: TLS is required, send NBD_OPT_STARTTLS first"
                self._skip_then(length, _error_reply(option, Rep.ERR_TLS_REQD, msg), None)
                continue
            if option in _BUFFERED_OPTIONS:
                if option == Opt.EXPORT_NAME and length > MAX_STRING:
                    return self._fail(f"{name}: export name of {length} bytes")
                if length > self._max_option_length:
                    self._pos = pos + 16
                    reply = _error_reply(option, Rep.ERR_TOO_BIG, f"{name}: {length} bytes")
                    self._skip_then(length, reply, None)
                    continue
                if avail < 16 + length:
                    return self._need_data()
                data = bytes(memoryview(buf)[pos + 16 : pos + 16 + length])
                self._pos = pos + 16 + length
                event = self._buffered_option(option, data)
                if event is not None:
                    return event
                continue
            self._pos = pos + 16
            self._unbuffered_option(option, name, length)

    def _starttls(self, option: int, name: str, length: int) -> Event | None:
        """NBD_OPT_STARTTLS in a mode that offers TLS (the header is consumed)."""
        if length:
            reply = _error_reply(option, Rep.ERR_INVALID, f"{name} takes no data")
        elif self.tls_active:
            reply = _error_reply(option, Rep.ERR_INVALID, "TLS is already active")
        elif not self.client_flags & ClientFlag.C_FIXED_NEWSTYLE:
            # Only reachable in ON mode (REQUIRE closed such a client): it is served NOTLS.
            reply = _error_reply(option, Rep.ERR_POLICY, "TLS needs fixed newstyle negotiation")
        else:
            if self._pos < len(self._buf):
                return self._fail(f"{name}: data after it before the TLS handshake")
            self.tls_active = True
            # Nothing negotiated in plaintext survives into the TLS session.
            self.structured_replies = False
            self._meta_name = None
            self._out += _option_reply(option, Rep.ACK)
            return StartTls()
        self._skip_then(length, reply, None)
        return None

    def _unbuffered_option(self, option: int, name: str, length: int) -> None:
        """Options whose payload is skipped: the reply goes out once it has been."""
        if option == Opt.ABORT:
            # The spec: ignore any data, reply ACK; the client then closes.
            self._skip_then(length, _option_reply(option, Rep.ACK), Disconnect(clean=True))
            return
        if option in (Opt.LIST, Opt.STRUCTURED_REPLY):
            if length:
                reply = _error_reply(option, Rep.ERR_INVALID, f"{name} takes no data")
            elif option == Opt.LIST:
                reply = self._list_reply()
            else:
                self.structured_replies = True
                reply = _option_reply(option, Rep.ACK)
            self._skip_then(length, reply, None)
            return
        # STARTTLS in OFF mode (NOTLS), EXTENDED_HEADERS, PEEK_EXPORT and anything unknown.
        reply = _error_reply(option, Rep.ERR_UNSUP, f"{name} is not supported")
        self._skip_then(length, reply, None)

    def _lookup(self, name: str) -> ExportInfo | None:
        """The export, or None if unknown; ExportRefused passes through with its reason."""
        if not name and self.default_export is not None:
            name = self.default_export
        return self._exports(name)

    def _list_reply(self) -> bytes:
        """NBD_REP_SERVER for every export this client may open: one the ``exports``
        callable refuses it (ExportRefused) is left out, so a client sees no more than it
        could use (the spec lets a server omit exports, e.g. TLS-only ones)."""
        out = bytearray()
        for name in self._list_exports():
            raw = name.encode("utf-8")
            try:
                export = self._exports(name)
            except ExportRefused:
                continue
            extra = export.description.encode("utf-8") if export is not None else b""
            out += _option_reply(Opt.LIST, Rep.SERVER, _U32.pack(len(raw)) + raw + extra)
        out += _option_reply(Opt.LIST, Rep.ACK)
        return bytes(out)

    def _buffered_option(self, option: int, data: bytes) -> Event | None:
        if option == Opt.EXPORT_NAME:
            return self._export_name(data)
        if option in (Opt.INFO, Opt.GO):
            return self._info_or_go(option, data)
        self._meta_context(option, data)
        return None

    def _export_name(self, data: bytes) -> Event:
        name = _decode_string(data)
        if name is None:
            return self._fail("NBD_OPT_EXPORT_NAME: export name is not a valid string")
        try:
            export = self._lookup(name)
        except ExportRefused as err:
            return self._fail(f"NBD_OPT_EXPORT_NAME: export {name!r} refused: {err}")
        if export is None:
            # No error reply exists for EXPORT_NAME: the spec says terminate the session.
            return self._fail(f"NBD_OPT_EXPORT_NAME: unknown export {name!r}")
        flags = export.transmission_flags(self.structured_replies)
        self._out += _EXPORT_NAME_REPLY.pack(export.size, flags)
        if not self.client_flags & ClientFlag.C_NO_ZEROES:
            self._out += bytes(EXPORT_NAME_ZEROES)
        return self._enter_transmission(name, export, flags, block_size_agreed=False)

    def _info_or_go(self, option: int, data: bytes) -> Event | None:
        name_text = _option_name(option)
        invalid = _error_reply(option, Rep.ERR_INVALID, f"{name_text}: malformed request")
        if len(data) < 6:
            self._out += invalid
            return None
        (name_length,) = _U32.unpack_from(data, 0)
        if name_length > len(data) - 6:
            self._out += invalid
            return None
        (count,) = _U16.unpack_from(data, 4 + name_length)
        if 6 + name_length + 2 * count != len(data):
            self._out += invalid
            return None
        name = _decode_string(data[4 : 4 + name_length])
        if name is None:
            self._out += _error_reply(option, Rep.ERR_INVALID, f"{name_text}: bad export name")
            return None
        requests = struct.unpack_from(f">{count}H", data, 6 + name_length)
        try:
            export = self._lookup(name)
        except ExportRefused as err:
            self._out += _error_reply(option, Rep.ERR_POLICY, str(err))
            return None
        if export is None:
            self._out += _error_reply(option, Rep.ERR_UNKNOWN, f"unknown export {name!r}")
            return None
        flags = export.transmission_flags(self.structured_replies)
        out = self._out
        out += _option_reply(option, Rep.INFO, _INFO_EXPORT.pack(Info.EXPORT, export.size, flags))
        block_size = _option_reply(
            option,
            Rep.INFO,
            _INFO_BLOCK_SIZE.pack(
                Info.BLOCK_SIZE, export.min_block, export.preferred_block, export.max_block
            ),
        )
        sent: set[int] = {Info.EXPORT}
        for info in requests:
            if info in sent:
                continue
            sent.add(info)
            if info == Info.NAME:
                raw = export.name.encode("utf-8")
                out += _option_reply(option, Rep.INFO, _U16.pack(Info.NAME) + raw)
            elif info == Info.DESCRIPTION and export.description:
                raw = export.description.encode("utf-8")
                out += _option_reply(option, Rep.INFO, _U16.pack(Info.DESCRIPTION) + raw)
            elif info == Info.BLOCK_SIZE:
                out += block_size
        asked_block_size = Info.BLOCK_SIZE in sent
        if not asked_block_size:
            out += block_size  # unrequested but harmless; clients ignore what they don't use
        out += _option_reply(option, Rep.ACK)
        if option == Opt.GO:
            return self._enter_transmission(name, export, flags, asked_block_size)
        return None

    def _meta_context(self, option: int, data: bytes) -> None:
        setting = option == Opt.SET_META_CONTEXT
        name_text = _option_name(option)
        if setting:
            self._meta_name = None  # replaced even when this request fails
        if not self.structured_replies:
            msg = f"{name_text} needs NBD_OPT_STRUCTURED_REPLY first"
            self._out += _error_reply(option, Rep.ERR_INVALID, msg)
            return
        parsed = _parse_meta_request(data)
        if parsed is None:
            self._out += _error_reply(option, Rep.ERR_INVALID, f"{name_text}: malformed request")
            return
        raw_name, queries = parsed
        name = _decode_string(raw_name)
        if name is None:
            self._out += _error_reply(option, Rep.ERR_INVALID, f"{name_text}: bad export name")
            return
        try:
            export = self._lookup(name)
        except ExportRefused as err:
            self._out += _error_reply(option, Rep.ERR_POLICY, str(err))
            return
        if export is None:
            self._out += _error_reply(option, Rep.ERR_UNKNOWN, f"unknown export {name!r}")
            return
        wanted = (b"base:allocation",) if setting else (b"base:allocation", b"base:")
        match = export.block_status and (
            any(q in wanted for q in queries) or (not setting and not queries)
        )
        if match:
            context_id = BASE_ALLOCATION_ID if setting else 0
            payload = _U32.pack(context_id) + BASE_ALLOCATION.encode()
            self._out += _option_reply(option, Rep.META_CONTEXT, payload)
            if setting:
                self._meta_name = name
        self._out += _option_reply(option, Rep.ACK)

    def _enter_transmission(
        self, name: str, export: ExportInfo, flags: int, block_size_agreed: bool
    ) -> Event:
        self.export = export
        self.transmission_flags = flags
        self.base_allocation = (
            export.block_status and self.structured_replies and self._meta_name == name
        )
        self._state = _TRANSMISSION_STATE
        self._size = export.size
        self._min_mask = export.min_block - 1
        self._max_block = export.max_block
        self._skip_limit = max(export.max_block, DEFAULT_MAX_PAYLOAD)

        fua = _FUA if flags & TransmissionFlag.SEND_FUA else 0
        zero_flags = fua | _NO_HOLE
        if flags & TransmissionFlag.SEND_FAST_ZERO:
            zero_flags |= _FAST_ZERO
        self._cmd_flags = [
            fua | (_DF if self.structured_replies else 0),  # READ
            fua,  # WRITE
            0xFFFF,  # DISC: fields ignored
            fua,  # FLUSH
            fua,  # TRIM
            fua,  # CACHE
            zero_flags,  # WRITE_ZEROES
            fua | _REQ_ONE,  # BLOCK_STATUS
        ]
        ro = export.read_only
        self._cmd_error = [
            0,  # READ
            _EPERM if ro else 0,  # WRITE
            0,  # DISC
            0 if export.can_flush else _EINVAL,
            _EPERM if ro else (0 if export.can_trim else _EINVAL),
            0 if export.can_cache else _EINVAL,
            _EPERM if ro else (0 if export.can_zero else _EINVAL),
            0 if self.base_allocation else _EINVAL,
        ]
        return ExportChosen(
            name=export.name,
            export=export,
            transmission_flags=flags,
            structured_replies=self.structured_replies,
            block_size_agreed=block_size_agreed,
            base_allocation=self.base_allocation,
        )

    # -- internals: transmission -----------------------------------------------------------------

    def _next_request(self) -> Event | _NeedData:
        if self._skip or self._payload is not None or self._after_event is not None:
            event = self._continue_body()
            if event is not None:
                return event
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < _REQUEST_SIZE:
            return self._need_data()
        magic, flags, kind, cookie, offset, length = _REQUEST.unpack_from(buf, pos)
        if magic != REQUEST_MAGIC:
            return self._fail(f"bad request magic {magic:#x}")
        pos += _REQUEST_SIZE
        self._pos = pos

        if kind == _WRITE:
            if length > self._max_block:
                if length > self._skip_limit:
                    return self._fail(f"WRITE payload of {length} bytes is too large")
                message = f"WRITE of {length} bytes exceeds the maximum {self._max_block}"
                return self._refuse_write(cookie, _EINVAL, message, length)
            error = self._check(kind, flags, offset, length)
            if error:
                return self._refuse_write(cookie, error[0], error[1], length)
            avail -= _REQUEST_SIZE
            if avail >= length:
                end = pos + length
                self._pos = end
                if self._mutable:
                    self._mutable = False  # a view of it is lent out from now on
                data = memoryview(buf)[pos:end].toreadonly()
                return Command(cookie, _CMDS[1], flags, offset, length, data)
            payload = bytearray(length)
            if avail:
                payload[:avail] = memoryview(buf)[pos:]
            self._pos = len(buf)
            self._payload = payload
            self._payload_fill = avail
            self._after_event = Command(cookie, _CMDS[1], flags, offset, length, None)
            return self._need_data()

        if kind == _READ:
            # Fast path for the common case; _check gives the precise error otherwise.
            if (
                not flags & ~self._cmd_flags[0]
                and 0 < length <= self._max_block
                and offset + length <= self._size
                and not (offset | length) & self._min_mask
                and not self._cmd_error[0]
            ):
                return Command(cookie, _CMDS[0], flags, offset, length, None)
        elif kind == _DISC:
            return self._close(Disconnect(clean=True))
        elif kind > _BLOCK_STATUS:
            return Invalid(cookie, _EINVAL, kind, f"unknown command type {kind}")
        error = self._check(kind, flags, offset, length)
        if error:
            return Invalid(cookie, error[0], _CMDS[kind], error[1])
        return Command(cookie, _CMDS[kind], flags, offset, length, None)

    def _refuse_write(
        self, cookie: int, error: int, message: str, length: int
    ) -> Event | _NeedData:
        self._skip_then(length, None, Invalid(cookie, error, Cmd.WRITE, message))
        event = self._continue_body()
        return NEED_DATA if event is None else event

    def _check(self, kind: int, flags: int, offset: int, length: int) -> tuple[int, str] | None:
        """Validation of a known command other than DISC (rules 4-13 of the module doc)."""
        cmd = _CMDS[kind]
        error = self._cmd_error[kind]
        if error:
            if error == _ESHUTDOWN:
                return error, "server is shutting down"
            if error == _EPERM:
                return error, f"{cmd.name} on a read-only export"
            return error, f"{cmd.name} is not supported on this export"
        bad = flags & ~self._cmd_flags[kind]
        if bad:
            return _EINVAL, f"{cmd.name}: command flags {bad:#x} not allowed"
        if kind == _FLUSH:
            if offset or length:
                return _EINVAL, "FLUSH with nonzero offset or length"
            return None
        if not length:
            return _EINVAL, f"{cmd.name} of length 0"
        if kind == _READ and length > self._max_block:
            return _EINVAL, f"READ of {length} bytes exceeds the maximum {self._max_block}"
        if offset + length > self._size:
            error = _ENOSPC if kind in (_WRITE, _WRITE_ZEROES) else _EINVAL
            return error, f"{cmd.name} beyond the end of the export ({offset}+{length})"
        if (offset | length) & self._min_mask:
            return _EINVAL, f"{cmd.name} not aligned to {self._min_mask + 1} bytes"
        if flags & _FAST_ZERO and not self.export.fast_zero:  # type: ignore[union-attr]
            return _ENOTSUP, "fast zeroing is not supported"
        return None


def _parse_meta_request(data: bytes) -> tuple[bytes, list[bytes]] | None:
    """(export name, queries) of a LIST/SET_META_CONTEXT payload, or None if malformed."""
    size = len(data)
    if size < 8:
        return None
    (name_length,) = _U32.unpack_from(data, 0)
    if name_length > size - 8:
        return None
    name = data[4 : 4 + name_length]
    pos = 4 + name_length
    (count,) = _U32.unpack_from(data, pos)
    pos += 4
    if count > (size - pos) // 4:
        return None
    queries = []
    for _ in range(count):
        if size - pos < 4:
            return None
        (query_length,) = _U32.unpack_from(data, pos)
        pos += 4
        if query_length > size - pos:
            return None
        queries.append(data[pos : pos + query_length])
        pos += query_length
    if pos != size:
        return None
    return name, queries
