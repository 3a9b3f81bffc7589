"""The sans-I/O NBD codec (ioband.nbd.protocol): handshakes byte for byte, every command and
each validation error, chunking, the reply builders, fuzzing, and real clients (nbdinfo,
qemu-io, nbdcopy) against a small threaded server built on the codec.

Wire bytes are written out here with literal magic numbers and values, independently of
ioband.nbd.constants, so a wrong constant there shows up as a test failure.

Throughput of the codec itself: ``python benchmarks/nbd_codec.py``.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ioband.nbd.protocol import (
    NEED_DATA,
    Cmd,
    Command,
    ConnectionState,
    Disconnect,
    Event,
    ExportChosen,
    ExportInfo,
    ExportRefused,
    Invalid,
    ProtocolError,
    ServerConnection,
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
from tests.conftest import require_real

# -- wire helpers (literal values from doc/proto.md) ---------------------------------------------

GREETING = b"NBDMAGIC" + b"IHAVEOPT" + b"\x00\x03"  # FIXED_NEWSTYLE | NO_ZEROES
OPT_REPLY_MAGIC = bytes.fromhex("0003e889045565a9")
REQ_MAGIC = 0x25609513

EXPORT_NAME, ABORT, LIST, PEEK, STARTTLS, INFO, GO, STRUCTURED = 1, 2, 3, 4, 5, 6, 7, 8
LIST_META, SET_META, EXTENDED_HEADERS = 9, 10, 11
ACK, SERVER, REP_INFO, META_CONTEXT = 1, 2, 3, 4
ERR = 1 << 31
ERR_UNSUP, ERR_INVALID, ERR_UNKNOWN, ERR_SHUTDOWN, ERR_TOO_BIG = (
    ERR + 1,
    ERR + 3,
    ERR + 6,
    ERR + 7,
    ERR + 9,
)
I_EXPORT, I_NAME, I_DESCRIPTION, I_BLOCK_SIZE = 0, 1, 2, 3
READ, WRITE, DISC, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS = range(8)
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO = 1, 2, 4, 8, 16
EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN = 1, 5, 12, 22, 28, 75, 95, 108

# Transmission flags: HAS_FLAGS 1, READ_ONLY 2, SEND_FLUSH 4, SEND_FUA 8, ROTATIONAL 16,
# SEND_TRIM 32, SEND_WRITE_ZEROES 64, SEND_DF 128, CAN_MULTI_CONN 256, SEND_CACHE 1024,
# SEND_FAST_ZERO 2048.
RW_FLAGS = 1 | 4 | 8 | 32 | 64 | 256 | 1024 | 2048  # 3437
RO_FLAGS = 1 | 2 | 4 | 256 | 1024  # 1287
DF_FLAG = 128

MiB = 1 << 20


def opt(option: int, data: bytes = b"") -> bytes:
    return b"IHAVEOPT" + struct.pack(">II", option, len(data)) + data


def rep(option: int, reply: int, data: bytes = b"") -> bytes:
    return OPT_REPLY_MAGIC + struct.pack(">III", option, reply, len(data)) + data


def rep_err(option: int, reply: int, message: str) -> bytes:
    return rep(option, reply, message.encode())


def go_data(name: bytes, *infos: int) -> bytes:
    return (
        struct.pack(">I", len(name))
        + name
        + struct.pack(">H", len(infos))
        + b"".join(struct.pack(">H", i) for i in infos)
    )


def meta_data(name: bytes, *queries: bytes) -> bytes:
    out = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
    for q in queries:
        out += struct.pack(">I", len(q)) + q
    return out


def info_export(option: int, size: int, flags: int) -> bytes:
    return rep(option, REP_INFO, struct.pack(">HQH", I_EXPORT, size, flags))


def info_block_size(option: int, minimum: int = 1, preferred: int = 4096, maximum: int = 32 * MiB):
    return rep(option, REP_INFO, struct.pack(">HIII", I_BLOCK_SIZE, minimum, preferred, maximum))


def req(
    kind: int, cookie: int = 1, offset: int = 0, length: int = 0, flags: int = 0, data=b""
) -> bytes:
    return struct.pack(">IHHQQI", REQ_MAGIC, flags, kind, cookie, offset, length) + data


def simple(cookie: int, error: int = 0) -> bytes:
    return struct.pack(">IIQ", 0x67446698, error, cookie)


def chunk_header(cookie: int, rtype: int, length: int, flags: int = 1) -> bytes:
    return struct.pack(">IHHQI", 0x668E33EF, flags, rtype, cookie, length)


# -- fixtures ------------------------------------------------------------------------------------

EXPORTS = {
    "disk": ExportInfo("disk", MiB, description="the disk"),
    "ro": ExportInfo("ro", MiB, read_only=True),
    "aligned": ExportInfo("aligned", MiB, min_block=512, max_block=64 * 1024),
    "meta": ExportInfo("meta", MiB, block_status=True),
    "bare": ExportInfo(
        "bare",
        MiB,
        can_flush=False,
        can_fua=False,
        can_trim=False,
        can_zero=False,
        can_cache=False,
        multi_conn=False,
    ),
    "fast": ExportInfo("fast", MiB, fast_zero=True, rotational=True),
}


def make(default: str | None = "disk", **kw) -> ServerConnection:
    return ServerConnection(EXPORTS.get, lambda: list(EXPORTS), default_export=default, **kw)


def drain(conn: ServerConnection, limit: int = 100_000) -> list[Event]:
    """Events until NEED_DATA, or up to and including a terminal event."""
    events: list[Event] = []
    for _ in range(limit):
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, Disconnect | ProtocolError):
            return events
    raise AssertionError("next_event never asked for data")


def feed(conn: ServerConnection, data: bytes) -> list[Event]:
    conn.receive_data(data)
    return drain(conn)


def started(client_flags: int = 3, **kw) -> ServerConnection:
    conn = make(**kw)
    assert conn.data_to_send() == GREETING
    assert feed(conn, struct.pack(">I", client_flags)) == []
    assert conn.state is ConnectionState.OPTIONS
    return conn


def transmitting(export: str = "disk", structured: bool = False, meta: bool = False, **kw):
    conn = started(**kw)
    data = b""
    if structured or meta:
        data += opt(STRUCTURED)
    if meta:
        data += opt(SET_META, meta_data(export.encode(), b"base:allocation"))
    data += opt(GO, go_data(export.encode(), I_BLOCK_SIZE))
    events = feed(conn, data)
    assert len(events) == 1 and isinstance(events[0], ExportChosen), events
    conn.data_to_send()
    assert conn.state is ConnectionState.TRANSMISSION
    return conn


def one(conn: ServerConnection, data: bytes) -> Event:
    events = feed(conn, data)
    assert len(events) == 1, events
    return events[0]


# -- greeting and client flags -------------------------------------------------------------------


def test_greeting_bytes():
    conn = make()
    assert conn.state is ConnectionState.GREETING
    assert conn.data_to_send() == GREETING
    assert conn.data_to_send() == b""
    assert conn.next_event() is NEED_DATA
    assert repr(NEED_DATA) == "NEED_DATA"


@pytest.mark.parametrize("flags", [4, 0x80000000, 0xFFFFFFFF])
def test_unknown_client_flags_close(flags):
    conn = make()
    conn.data_to_send()
    [event] = feed(conn, struct.pack(">I", flags))
    assert isinstance(event, ProtocolError) and "client flags" in event.reason
    assert conn.state is ConnectionState.CLOSED
    assert conn.next_event() is event  # terminal events repeat
    conn.receive_data(opt(ABORT))  # ignored once closed
    assert conn.next_event() is event


def test_client_flags_split_byte_by_byte():
    conn = make()
    for b in struct.pack(">I", 3)[:3]:
        assert feed(conn, bytes([b])) == []
        assert conn.state is ConnectionState.GREETING
    assert feed(conn, b"\x03") == []
    assert conn.state is ConnectionState.OPTIONS
    assert conn.client_flags == 3


def test_eof_before_client_flags_is_unclean_disconnect():
    conn = make()
    assert feed(conn, b"") == [Disconnect(clean=False)]


def test_eof_inside_client_flags_is_protocol_error():
    conn = make()
    conn.receive_data(b"\x00\x00")
    [event] = feed(conn, b"")
    assert isinstance(event, ProtocolError)


# -- NBD_OPT_EXPORT_NAME -------------------------------------------------------------------------


def test_export_name_with_no_zeroes():
    conn = started(client_flags=3)
    [event] = feed(conn, opt(EXPORT_NAME, b"disk"))
    assert event == ExportChosen(
        name="disk",
        export=EXPORTS["disk"],
        transmission_flags=RW_FLAGS,
        structured_replies=False,
        block_size_agreed=False,
        base_allocation=False,
    )
    assert conn.data_to_send() == struct.pack(">QH", MiB, RW_FLAGS)
    assert conn.state is ConnectionState.TRANSMISSION


def test_export_name_without_no_zeroes_sends_124_zeroes():
    conn = started(client_flags=1)
    [event] = feed(conn, opt(EXPORT_NAME, b"ro"))
    assert isinstance(event, ExportChosen) and event.name == "ro"
    assert conn.data_to_send() == struct.pack(">QH", MiB, RO_FLAGS) + bytes(124)


def test_export_name_from_plain_newstyle_client():
    conn = started(client_flags=0)  # no C_FIXED_NEWSTYLE: still served
    [event] = feed(conn, opt(EXPORT_NAME, b"disk"))
    assert isinstance(event, ExportChosen)
    assert conn.data_to_send() == struct.pack(">QH", MiB, RW_FLAGS) + bytes(124)


def test_export_name_empty_means_default():
    conn = started()
    [event] = feed(conn, opt(EXPORT_NAME))
    assert isinstance(event, ExportChosen) and event.name == "disk"


def test_export_name_empty_without_default_closes():
    conn = started(default=None)
    [event] = feed(conn, opt(EXPORT_NAME))
    assert isinstance(event, ProtocolError) and "unknown export" in event.reason
    assert conn.data_to_send() == b""


def test_export_name_unknown_closes():
    conn = started()
    [event] = feed(conn, opt(EXPORT_NAME, b"nope"))
    assert isinstance(event, ProtocolError) and "'nope'" in event.reason
    assert conn.data_to_send() == b""
    assert conn.state is ConnectionState.CLOSED


@pytest.mark.parametrize("name", [b"\xff\xfe", b"di\x00sk"])
def test_export_name_bad_string_closes(name):
    conn = started()
    [event] = feed(conn, opt(EXPORT_NAME, name))
    assert isinstance(event, ProtocolError)


def test_export_name_too_long_closes_without_buffering():
    conn = started()
    [event] = feed(conn, b"IHAVEOPT" + struct.pack(">II", EXPORT_NAME, 4097))
    assert isinstance(event, ProtocolError) and "4097" in event.reason


# -- NBD_OPT_GO / NBD_OPT_INFO -------------------------------------------------------------------


def test_go_with_info_requests_byte_for_byte():
    conn = started()
    data = go_data(b"disk", I_NAME, I_DESCRIPTION, I_BLOCK_SIZE, 77, I_NAME)
    [event] = feed(conn, opt(GO, data))
    assert event == ExportChosen("disk", EXPORTS["disk"], RW_FLAGS, False, True, False)
    assert conn.data_to_send() == (
        info_export(GO, MiB, RW_FLAGS)
        + rep(GO, REP_INFO, struct.pack(">H", I_NAME) + b"disk")
        + rep(GO, REP_INFO, struct.pack(">H", I_DESCRIPTION) + b"the disk")
        + info_block_size(GO)
        + rep(GO, ACK)
    )


def test_go_without_requests_still_sends_block_size():
    conn = started()
    [event] = feed(conn, opt(GO, go_data(b"aligned")))
    assert isinstance(event, ExportChosen) and not event.block_size_agreed
    assert conn.data_to_send() == (
        info_export(GO, MiB, RW_FLAGS) + info_block_size(GO, 512, 4096, 65536) + rep(GO, ACK)
    )


def test_go_empty_name_is_default_and_name_info_gives_canonical_name():
    conn = started()
    [event] = feed(conn, opt(GO, go_data(b"", I_NAME)))
    assert isinstance(event, ExportChosen) and event.name == "disk"
    assert rep(GO, REP_INFO, struct.pack(">H", I_NAME) + b"disk") in conn.data_to_send()


def test_description_info_omitted_when_empty():
    conn = started()
    assert isinstance(one(conn, opt(GO, go_data(b"ro", I_DESCRIPTION))), ExportChosen)
    assert conn.data_to_send() == (
        info_export(GO, MiB, RO_FLAGS) + info_block_size(GO) + rep(GO, ACK)
    )


def test_info_unknown_export_then_go():
    conn = started()
    assert feed(conn, opt(INFO, go_data(b"nope", I_BLOCK_SIZE))) == []
    assert conn.data_to_send() == rep_err(INFO, ERR_UNKNOWN, "unknown export 'nope'")
    assert conn.state is ConnectionState.OPTIONS
    assert feed(conn, opt(GO, go_data(b"nope"))) == []
    assert conn.data_to_send() == rep_err(GO, ERR_UNKNOWN, "unknown export 'nope'")
    [event] = feed(conn, opt(GO, go_data(b"ro")))
    assert isinstance(event, ExportChosen) and event.name == "ro"


def test_info_known_export_stays_in_options():
    conn = started()
    assert feed(conn, opt(INFO, go_data(b"disk", I_BLOCK_SIZE))) == []
    assert conn.data_to_send() == (
        info_export(INFO, MiB, RW_FLAGS) + info_block_size(INFO) + rep(INFO, ACK)
    )
    assert conn.state is ConnectionState.OPTIONS
    [event] = feed(conn, opt(GO, go_data(b"disk", I_BLOCK_SIZE)))
    assert isinstance(event, ExportChosen)
    assert conn.data_to_send() == (
        info_export(GO, MiB, RW_FLAGS) + info_block_size(GO) + rep(GO, ACK)
    )


def test_go_default_missing_is_unknown():
    conn = started(default=None)
    assert feed(conn, opt(GO, go_data(b""))) == []
    assert conn.data_to_send() == rep_err(GO, ERR_UNKNOWN, "unknown export ''")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00\x00",
        struct.pack(">I", 10) + b"disk" + b"\x00\x00",  # name longer than the option
        go_data(b"disk", 3)[:-1],  # odd number of request bytes
        go_data(b"disk") + b"\x00\x03",  # count says 0 but a request follows
        go_data(b"disk", 3, 1)[:-2],  # count says 2, only one present
    ],
)
def test_go_malformed_is_invalid(data):
    conn = started()
    assert feed(conn, opt(GO, data)) == []
    assert conn.data_to_send() == rep_err(GO, ERR_INVALID, "NBD_OPT_GO: malformed request")
    assert conn.state is ConnectionState.OPTIONS


@pytest.mark.parametrize("name", [b"\xc3\x28", b"a\x00b", b"x" * 4097])
def test_go_bad_name_is_invalid(name):
    conn = started()
    assert feed(conn, opt(INFO, go_data(name))) == []
    assert conn.data_to_send() == rep_err(INFO, ERR_INVALID, "NBD_OPT_INFO: bad export name")


# -- NBD_OPT_LIST, NBD_OPT_ABORT, NBD_OPT_STRUCTURED_REPLY, unsupported options ------------------


def test_list_byte_for_byte():
    conn = started()
    assert feed(conn, opt(LIST)) == []
    expected = b""
    for name, export in EXPORTS.items():
        body = struct.pack(">I", len(name)) + name.encode() + export.description.encode()
        expected += rep(LIST, SERVER, body)
    assert conn.data_to_send() == expected + rep(LIST, ACK)


def test_list_with_vanished_export_and_empty_list():
    conn = ServerConnection(lambda name: None, lambda: ["gone"])
    conn.data_to_send()
    assert feed(conn, struct.pack(">I", 3) + opt(LIST)) == []
    assert conn.data_to_send() == rep(LIST, SERVER, b"\x00\x00\x00\x04gone") + rep(LIST, ACK)
    conn = ServerConnection(lambda name: None)
    conn.data_to_send()
    assert feed(conn, struct.pack(">I", 3) + opt(LIST)) == []
    assert conn.data_to_send() == rep(LIST, ACK)


def test_list_leaves_out_exports_refused_to_this_client():
    """An export the ``exports`` callable refuses (ExportRefused) is not listed, and the
    connection goes on: LIST used to let the exception escape the codec."""

    def exports(name: str) -> ExportInfo | None:
        if name == "secret":
            raise ExportRefused("not for you")
        return EXPORTS.get(name)

    conn = ServerConnection(exports, lambda: ["disk", "secret", "ro", "gone"])
    conn.data_to_send()
    assert feed(conn, struct.pack(">I", 3) + opt(LIST)) == []
    listed = (
        rep(LIST, SERVER, b"\x00\x00\x00\x04disk" + b"the disk")
        + rep(LIST, SERVER, b"\x00\x00\x00\x02ro")
        + rep(LIST, SERVER, b"\x00\x00\x00\x04gone")  # vanished (None): still listed
    )
    assert conn.data_to_send() == listed + rep(LIST, ACK)
    assert conn.state is ConnectionState.OPTIONS
    # Asking for it anyway gives the refusal, and the session still goes on to a GO.
    assert feed(conn, opt(INFO, go_data(b"secret"))) == []
    assert conn.data_to_send() == rep_err(INFO, ERR + 2, "not for you")  # NBD_REP_ERR_POLICY
    [event] = feed(conn, opt(GO, go_data(b"disk")))
    assert isinstance(event, ExportChosen) and event.name == "disk"


def test_list_when_every_export_is_refused():
    def exports(name: str) -> ExportInfo | None:
        raise ExportRefused(f"{name} refused")

    conn = ServerConnection(exports, lambda: ["a", "b"])
    conn.data_to_send()
    assert feed(conn, struct.pack(">I", 3) + opt(LIST) + opt(LIST)) == []
    assert conn.data_to_send() == rep(LIST, ACK) * 2


def test_list_with_data_is_invalid_and_data_discarded():
    conn = started()
    assert feed(conn, opt(LIST, b"junk" * 10) + opt(LIST)) == []
    out = conn.data_to_send()
    assert out.startswith(rep_err(LIST, ERR_INVALID, "NBD_OPT_LIST takes no data"))
    assert out.endswith(rep(LIST, ACK))


def test_abort():
    conn = started()
    [event] = feed(conn, opt(ABORT))
    assert event == Disconnect(clean=True)
    assert conn.data_to_send() == rep(ABORT, ACK)
    assert conn.state is ConnectionState.CLOSED
    assert conn.next_event() is event


def test_abort_with_data_ignores_it():
    conn = started()
    conn.receive_data(opt(ABORT, b"whatever")[:-3])
    assert drain(conn) == []
    assert conn.data_to_send() == b""
    [event] = feed(conn, b"ver" + b"trailing garbage never parsed")
    assert event == Disconnect(clean=True)
    assert conn.data_to_send() == rep(ABORT, ACK)


def test_structured_reply_then_go():
    conn = started()
    assert feed(conn, opt(STRUCTURED)) == []
    assert conn.data_to_send() == rep(STRUCTURED, ACK)
    [event] = feed(conn, opt(GO, go_data(b"disk", I_BLOCK_SIZE)))
    assert event.structured_replies and event.transmission_flags == RW_FLAGS | DF_FLAG
    assert conn.data_to_send() == (
        info_export(GO, MiB, RW_FLAGS | DF_FLAG) + info_block_size(GO) + rep(GO, ACK)
    )
    assert conn.structured_replies


def test_structured_reply_with_data_is_invalid():
    conn = started()
    assert feed(conn, opt(STRUCTURED, b"x")) == []
    assert conn.data_to_send() == rep_err(
        STRUCTURED, ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data"
    )
    assert not conn.structured_replies


@pytest.mark.parametrize(
    ("option", "name"),
    [
        (STARTTLS, "NBD_OPT_STARTTLS"),
        (EXTENDED_HEADERS, "NBD_OPT_EXTENDED_HEADERS"),
        (PEEK, "NBD_OPT_PEEK_EXPORT"),
        (12345, "option 12345"),
        (0, "option 0"),
        (0xFFFFFFFF, "option 4294967295"),
    ],
)
def test_unsupported_option_is_unsup_and_data_discarded(option, name):
    conn = started()
    payload = bytes(range(256)) * 3  # contains option magic look-alikes? no: just noise
    stream = opt(option, payload) + opt(option) + opt(GO, go_data(b"disk"))
    events = []
    for i in range(0, len(stream), 7):  # also in small pieces
        events += feed(conn, stream[i : i + 7])
    assert [type(e) for e in events] == [ExportChosen]
    unsup = rep_err(option, ERR_UNSUP, f"{name} is not supported")
    assert conn.data_to_send() == unsup + unsup + (
        info_export(GO, MiB, RW_FLAGS) + info_block_size(GO) + rep(GO, ACK)
    )


def test_option_payload_that_looks_like_an_option_is_skipped():
    conn = started()
    assert feed(conn, opt(STARTTLS, opt(ABORT))) == []
    assert conn.state is ConnectionState.OPTIONS
    assert conn.data_to_send() == rep_err(STARTTLS, ERR_UNSUP, "NBD_OPT_STARTTLS is not supported")


def test_whole_handshake_one_byte_at_a_time():
    stream = (
        struct.pack(">I", 3)
        + opt(EXTENDED_HEADERS)
        + opt(STRUCTURED)
        + opt(LIST)
        + opt(INFO, go_data(b"nope"))
        + opt(PEEK, b"abc")
        + opt(GO, go_data(b"disk", I_NAME, I_BLOCK_SIZE))
        + req(READ, 5, 4096, 512)
    )
    whole = make()
    whole_events = feed(whole, stream)
    whole_out = whole.data_to_send()
    conn = make()
    events: list[Event] = []
    for b in stream:
        events += feed(conn, bytes([b]))
    assert events == whole_events
    assert conn.data_to_send() == whole_out
    assert [type(e) for e in events] == [ExportChosen, Command]
    assert events[1] == Command(5, Cmd.READ, 0, 4096, 512, None)


def test_option_too_big_is_skipped_with_too_big():
    conn = started(max_option_length=100, max_option_skip=1000)
    data = go_data(b"d" * 200)
    conn.receive_data(opt(GO, data)[:50])
    assert drain(conn) == []
    assert conn.buffered_bytes == 0  # skipped as it arrives, not buffered
    assert feed(conn, opt(GO, data)[50:]) == []
    assert conn.data_to_send() == rep_err(GO, ERR_TOO_BIG, f"NBD_OPT_GO: {len(data)} bytes")
    [event] = feed(conn, opt(GO, go_data(b"disk")))
    assert isinstance(event, ExportChosen)


def test_option_absurdly_long_closes():
    conn = started(max_option_length=100, max_option_skip=1000)
    [event] = feed(conn, b"IHAVEOPT" + struct.pack(">II", STARTTLS, 1001))
    assert isinstance(event, ProtocolError) and "absurd" in event.reason
    conn = started()
    [event] = feed(conn, b"IHAVEOPT" + struct.pack(">II", GO, 0xFFFFFFFF))
    assert isinstance(event, ProtocolError)


def test_option_buffering_is_bounded_by_max_option_length():
    conn = started(max_option_length=1000)
    data = go_data(b"disk").ljust(1000, b"\x00")
    conn.receive_data(opt(GO, data)[:-1])
    assert drain(conn) == []
    assert conn.buffered_bytes == 16 + 999


def test_bad_option_magic_closes():
    conn = started()
    [event] = feed(conn, b"IHAVEOPX" + struct.pack(">II", GO, 0))
    assert isinstance(event, ProtocolError) and "magic" in event.reason


def test_request_before_go_is_protocol_error():
    conn = started()
    [event] = feed(conn, req(READ, 1, 0, 512))
    assert isinstance(event, ProtocolError) and "before an export" in event.reason


def test_eof_between_options_and_inside_one():
    conn = started()
    assert feed(conn, opt(LIST)) == []
    assert feed(conn, b"") == [Disconnect(clean=False)]
    conn = started()
    conn.receive_data(opt(GO, go_data(b"disk"))[:-1])
    [event] = feed(conn, b"")
    assert isinstance(event, ProtocolError) and "end of stream" in event.reason
    conn = started()
    conn.receive_data(opt(STARTTLS, b"abcdef")[:-2])  # inside a skipped payload
    [event] = feed(conn, b"")
    assert isinstance(event, ProtocolError)


# -- metadata contexts ---------------------------------------------------------------------------

BA = b"base:allocation"


def meta_context(option: int, context_id: int) -> bytes:
    return rep(option, META_CONTEXT, struct.pack(">I", context_id) + BA)


@pytest.mark.parametrize("option", [SET_META, LIST_META])
def test_meta_context_needs_structured_replies(option):
    conn = started()
    assert feed(conn, opt(option, meta_data(b"meta", BA))) == []
    name = "NBD_OPT_SET_META_CONTEXT" if option == SET_META else "NBD_OPT_LIST_META_CONTEXT"
    message = f"{name} needs NBD_OPT_STRUCTURED_REPLY first"
    assert conn.data_to_send() == rep_err(option, ERR_INVALID, message)


@pytest.mark.parametrize(
    ("queries", "listed"),
    [((), True), ((b"base:",), True), ((BA,), True), ((b"qemu:dirty-bitmap:x",), False)],
)
def test_list_meta_context(queries, listed):
    conn = started()
    feed(conn, opt(STRUCTURED))
    conn.data_to_send()
    assert feed(conn, opt(LIST_META, meta_data(b"meta", *queries))) == []
    expected = (meta_context(LIST_META, 0) if listed else b"") + rep(LIST_META, ACK)
    assert conn.data_to_send() == expected


def test_set_meta_context_then_go_enables_block_status():
    conn = started()
    feed(conn, opt(STRUCTURED))
    conn.data_to_send()
    queries = (b"qemu:dirty-bitmap:x", b"base:", BA, b"nonsense")
    assert feed(conn, opt(SET_META, meta_data(b"meta", *queries))) == []
    assert conn.data_to_send() == meta_context(SET_META, 1) + rep(SET_META, ACK)
    [event] = feed(conn, opt(GO, go_data(b"meta")))
    assert event.base_allocation and conn.base_allocation
    conn.data_to_send()
    cmd = one(conn, req(BLOCK_STATUS, 9, 4096, 8192, REQ_ONE))
    assert cmd == Command(9, Cmd.BLOCK_STATUS, REQ_ONE, 4096, 8192, None) and cmd.req_one
    assert conn.block_status_reply(9, [(8192, 3)]) == (
        chunk_header(9, 5, 12) + struct.pack(">III", 1, 8192, 3)
    )


def test_set_meta_context_for_other_export_or_unsupported_selects_nothing():
    conn = started()
    feed(conn, opt(STRUCTURED))
    conn.data_to_send()
    assert feed(conn, opt(SET_META, meta_data(b"disk", BA))) == []  # no block_status there
    assert conn.data_to_send() == rep(SET_META, ACK)
    feed(conn, opt(SET_META, meta_data(b"meta", BA)))
    assert conn.data_to_send() == meta_context(SET_META, 1) + rep(SET_META, ACK)
    # GO names a different export than the last SET: no base:allocation.
    [event] = feed(conn, opt(GO, go_data(b"", I_BLOCK_SIZE)))
    assert not event.base_allocation
    conn.data_to_send()
    assert one(conn, req(BLOCK_STATUS, 3, 0, 512)) == Invalid(
        3, EINVAL, Cmd.BLOCK_STATUS, "BLOCK_STATUS is not supported on this export"
    )
    with pytest.raises(RuntimeError):
        conn.block_status_reply(3, [(512, 0)])


def test_failed_set_meta_context_clears_selection():
    conn = started()
    feed(conn, opt(STRUCTURED) + opt(SET_META, meta_data(b"meta", BA)))
    conn.data_to_send()
    feed(conn, opt(SET_META, b"\x00"))  # malformed
    assert conn.data_to_send() == rep_err(
        SET_META, ERR_INVALID, "NBD_OPT_SET_META_CONTEXT: malformed request"
    )
    [event] = feed(conn, opt(GO, go_data(b"meta")))
    assert not event.base_allocation


def test_meta_context_bad_export_name():
    conn = started()
    feed(conn, opt(STRUCTURED))
    conn.data_to_send()
    feed(conn, opt(SET_META, meta_data(b"\xff", BA)))
    assert conn.data_to_send() == rep_err(
        SET_META, ERR_INVALID, "NBD_OPT_SET_META_CONTEXT: bad export name"
    )


def test_set_meta_context_unknown_export():
    conn = started()
    feed(conn, opt(STRUCTURED))
    conn.data_to_send()
    feed(conn, opt(SET_META, meta_data(b"nope", BA)))
    assert conn.data_to_send() == rep_err(SET_META, ERR_UNKNOWN, "unknown export 'nope'")


@pytest.mark.parametrize(
    "data",
    [
        meta_data(b"meta", BA)[:-1],
        meta_data(b"meta", BA) + b"x",
        struct.pack(">I", 99) + b"meta" + struct.pack(">I", 0),
        meta_data(b"meta")[:-4] + struct.pack(">I", 1000),  # count far beyond the data
        meta_data(b"meta")[:-4] + struct.pack(">I", 1) + struct.pack(">I", 50) + b"base",
        struct.pack(">I4sII4s", 4, b"meta", 2, 4, b"abcd"),  # the second query is missing
    ],
)
def test_meta_context_malformed(data):
    conn = started()
    feed(conn, opt(STRUCTURED))
    conn.data_to_send()
    feed(conn, opt(LIST_META, data))
    assert conn.data_to_send() == rep_err(
        LIST_META, ERR_INVALID, "NBD_OPT_LIST_META_CONTEXT: malformed request"
    )


# -- shutdown ------------------------------------------------------------------------------------


def test_shutdown_during_options():
    conn = started()
    conn.start_shutdown()
    assert feed(conn, opt(GO, go_data(b"disk")) + opt(LIST, b"xx")) == []
    err = rep_err(GO, ERR_SHUTDOWN, "server is shutting down")
    assert conn.data_to_send() == err + rep_err(LIST, ERR_SHUTDOWN, "server is shutting down")
    [event] = feed(conn, opt(ABORT))
    assert event == Disconnect(clean=True)
    assert conn.data_to_send() == rep(ABORT, ACK)
    conn = started()
    conn.start_shutdown()
    [event] = feed(conn, opt(EXPORT_NAME, b"disk"))
    assert isinstance(event, ProtocolError)


def test_shutdown_during_transmission():
    conn = transmitting()
    conn.start_shutdown()
    events = feed(conn, req(WRITE, 1, 0, 4, data=b"abcd") + req(READ, 2, 0, 512) + req(DISC))
    assert events == [
        Invalid(1, ESHUTDOWN, Cmd.WRITE, "server is shutting down"),
        Invalid(2, ESHUTDOWN, Cmd.READ, "server is shutting down"),
        Disconnect(clean=True),
    ]


# -- transmission: valid commands ----------------------------------------------------------------


def test_every_command():
    conn = transmitting("fast")
    stream = (
        req(READ, 1, 0, 4096)
        + req(WRITE, 2, 4096, 5, FUA, b"hello")
        + req(FLUSH, 3)
        + req(TRIM, 4, 8192, 4096, FUA)
        + req(CACHE, 5, 0, MiB)
        + req(WRITE_ZEROES, 6, 0, 512, NO_HOLE | FUA | FAST_ZERO)
        + req(FLUSH, 7, flags=FUA)
        + req(DISC, 8)
        + req(READ, 9, 0, 512)  # after DISC: never parsed
    )
    events = feed(conn, stream)
    assert events[:7] == [
        Command(1, Cmd.READ, 0, 0, 4096, None),
        Command(2, Cmd.WRITE, FUA, 4096, 5, memoryview(b"hello")),
        Command(3, Cmd.FLUSH, 0, 0, 0, None),
        Command(4, Cmd.TRIM, FUA, 8192, 4096, None),
        Command(5, Cmd.CACHE, 0, 0, MiB, None),
        Command(6, Cmd.WRITE_ZEROES, NO_HOLE | FUA | FAST_ZERO, 0, 512, None),
        Command(7, Cmd.FLUSH, FUA, 0, 0, None),
    ]
    assert events[7] == Disconnect(clean=True)
    assert len(events) == 8
    write, zero = events[1], events[5]
    assert write.fua and not write.no_hole and bytes(write.data) == b"hello"
    assert write.data.readonly
    assert zero.no_hole and zero.fast_zero and zero.fua
    assert conn.state is ConnectionState.CLOSED
    assert conn.next_event() == Disconnect(clean=True)


def test_disc_with_junk_fields_still_disconnects():
    conn = transmitting()
    assert one(conn, req(DISC, 1, 77, 99, 0xFFFF)) == Disconnect(clean=True)


def test_read_whole_export_and_last_byte():
    conn = transmitting()
    assert one(conn, req(READ, 1, 0, MiB)) == Command(1, Cmd.READ, 0, 0, MiB, None)
    assert one(conn, req(READ, 2, MiB - 1, 1)) == Command(2, Cmd.READ, 0, MiB - 1, 1, None)


def test_df_read_with_structured_replies():
    conn = transmitting(structured=True)
    cmd = one(conn, req(READ, 1, 0, 512, DF))
    assert isinstance(cmd, Command) and cmd.df


def test_cookies_are_full_64_bits():
    conn = transmitting()
    cookie = 0xFEDCBA9876543210
    assert one(conn, req(READ, cookie, 0, 1)).cookie == cookie


# -- transmission: validation --------------------------------------------------------------------

INVALID_CASES = [
    # (export, structured, request, error, message fragment)
    ("disk", False, req(9, 1, 0, 512), EINVAL, "unknown command type 9"),
    ("disk", False, req(0xFFFF, 1), EINVAL, "unknown command"),
    ("disk", False, req(READ, 1, MiB - 511, 512), EINVAL, "beyond the end"),
    ("disk", False, req(READ, 1, MiB, 1), EINVAL, "beyond the end"),
    ("disk", False, req(READ, 1, (1 << 64) - 1, 4096), EINVAL, "beyond the end"),
    ("disk", False, req(TRIM, 1, MiB, 4096), EINVAL, "beyond the end"),
    ("disk", False, req(CACHE, 1, 0, MiB + 1), EINVAL, "beyond the end"),
    ("disk", False, req(WRITE_ZEROES, 1, MiB - 1, 2), ENOSPC, "beyond the end"),
    ("disk", False, req(WRITE, 1, MiB - 1, 2, data=b"ab"), ENOSPC, "beyond the end"),
    ("disk", False, req(READ, 1, 0, 0), EINVAL, "length 0"),
    ("disk", False, req(WRITE, 1, 0, 0), EINVAL, "length 0"),
    ("disk", False, req(TRIM, 1, 0, 0), EINVAL, "length 0"),
    ("disk", False, req(CACHE, 1, 0, 0), EINVAL, "length 0"),
    ("disk", False, req(WRITE_ZEROES, 1, 0, 0), EINVAL, "length 0"),
    ("meta", True, req(BLOCK_STATUS, 1, 0, 0), EINVAL, "length 0"),
    ("meta", True, req(BLOCK_STATUS, 1, MiB - 512, 1024), EINVAL, "beyond the end"),
    ("disk", False, req(FLUSH, 1, 512, 0), EINVAL, "nonzero offset"),
    ("disk", False, req(FLUSH, 1, 0, 512), EINVAL, "nonzero offset"),
    ("disk", False, req(WRITE, 1, 0, 1, NO_HOLE, b"x"), EINVAL, "flags 0x2"),
    ("disk", False, req(READ, 1, 0, 512, DF), EINVAL, "flags 0x4"),  # DF needs structured
    ("disk", True, req(WRITE, 1, 0, 1, DF, b"x"), EINVAL, "flags 0x4"),
    ("disk", False, req(READ, 1, 0, 512, REQ_ONE), EINVAL, "flags 0x8"),
    ("disk", False, req(TRIM, 1, 0, 512, FAST_ZERO), EINVAL, "flags 0x10"),
    ("disk", False, req(READ, 1, 0, 512, 0x20), EINVAL, "flags 0x20"),  # PAYLOAD_LEN
    ("disk", False, req(READ, 1, 0, 512, 0x8000), EINVAL, "flags 0x8000"),
    ("ro", False, req(READ, 1, 0, 512, FUA), EINVAL, "flags 0x1"),  # no SEND_FUA
    ("bare", False, req(WRITE, 1, 0, 1, FUA, b"x"), EINVAL, "flags 0x1"),
    ("bare", False, req(WRITE_ZEROES, 1, 0, 1), EINVAL, "not supported"),
    ("disk", False, req(WRITE_ZEROES, 1, 0, 512, FAST_ZERO), ENOTSUP, "fast zero"),
    ("disk", False, req(READ, 1, 0, 32 * MiB + 1), EINVAL, "exceeds the maximum"),
    ("aligned", False, req(READ, 1, 0, 65536 + 512), EINVAL, "exceeds the maximum"),
    ("aligned", False, req(READ, 1, 100, 512), EINVAL, "not aligned to 512"),
    ("aligned", False, req(READ, 1, 0, 100), EINVAL, "not aligned"),
    ("aligned", False, req(TRIM, 1, 512, 513), EINVAL, "not aligned"),
    ("aligned", False, req(WRITE, 1, 1, 512, 0, bytes(512)), EINVAL, "not aligned"),
    ("aligned", False, req(WRITE_ZEROES, 1, 512, 1), EINVAL, "not aligned"),
    ("ro", False, req(WRITE, 1, 0, 4, 0, b"abcd"), EPERM, "read-only"),
    ("ro", False, req(TRIM, 1, 0, 4096), EPERM, "read-only"),
    ("ro", False, req(WRITE_ZEROES, 1, 0, 4096), EPERM, "read-only"),
    ("ro", False, req(WRITE, 1, MiB, 4, FUA, b"abcd"), EPERM, "read-only"),  # EPERM first
    ("bare", False, req(FLUSH, 1), EINVAL, "FLUSH is not supported"),
    ("bare", False, req(TRIM, 1, 0, 512), EINVAL, "TRIM is not supported"),
    ("bare", False, req(CACHE, 1, 0, 512), EINVAL, "CACHE is not supported"),
    ("disk", True, req(BLOCK_STATUS, 1, 0, 512), EINVAL, "BLOCK_STATUS is not supported"),
]


@pytest.mark.parametrize(
    ("export", "structured", "request_bytes", "error", "fragment"), INVALID_CASES
)
def test_invalid_requests(export, structured, request_bytes, error, fragment):
    conn = transmitting(export, structured=structured, meta=export == "meta")
    # The payload (if any) is consumed: the request after it parses normally.
    events = feed(conn, request_bytes + req(READ, 77, 0, 512))
    assert len(events) == 2, events
    invalid, after = events
    assert isinstance(invalid, Invalid), invalid
    assert invalid.cookie == 1 and invalid.error == error
    assert fragment in invalid.message, invalid.message
    assert after == Command(77, Cmd.READ, 0, 0, 512, None)
    assert conn.buffered_bytes == 0


def test_invalid_kind_is_cmd_when_known():
    conn = transmitting()
    assert one(conn, req(READ, 1, 0, 0)).kind is Cmd.READ
    assert one(conn, req(42, 1, 0, 0)).kind == 42


def test_flags_allowed_where_documented():
    conn = transmitting("meta", meta=True)
    assert isinstance(one(conn, req(BLOCK_STATUS, 1, 0, 512, REQ_ONE | FUA)), Command)
    assert isinstance(one(conn, req(CACHE, 1, 0, 512, FUA)), Command)
    assert isinstance(one(conn, req(READ, 1, 0, 512, FUA | DF)), Command)
    assert isinstance(one(conn, req(WRITE_ZEROES, 1, 0, 512, NO_HOLE)), Command)


def test_block_status_and_trim_may_exceed_max_block():
    conn = transmitting("aligned")
    assert isinstance(one(conn, req(TRIM, 1, 0, MiB)), Command)
    assert isinstance(one(conn, req(WRITE_ZEROES, 1, 0, MiB)), Command)
    assert isinstance(one(conn, req(CACHE, 1, 0, MiB)), Command)


def test_oversized_write_is_skipped_then_einval():
    conn = transmitting("aligned")  # max_block 64 KiB
    length = 256 * 1024
    stream = req(WRITE, 1, 0, length, data=bytes(length)) + req(FLUSH, 2)
    events: list[Event] = []
    for i in range(0, len(stream), 10_000):
        events += feed(conn, stream[i : i + 10_000])
        assert conn.buffered_bytes < 10_000  # never buffered
    assert events == [
        Invalid(1, EINVAL, Cmd.WRITE, f"WRITE of {length} bytes exceeds the maximum 65536"),
        Command(2, Cmd.FLUSH, 0, 0, 0, None),
    ]


def test_huge_write_closes_at_once():
    conn = transmitting()
    [event] = feed(conn, req(WRITE, 1, 0, 32 * MiB + 1))
    assert isinstance(event, ProtocolError) and "too large" in event.reason
    assert conn.buffered_bytes == 0


def test_write_of_max_block_is_accepted_and_collected():
    conn = transmitting("aligned")
    payload = os.urandom(65536)
    stream = req(WRITE, 1, 512, 65536, data=payload)
    assert feed(conn, stream[:1000]) == []
    assert conn.buffered_bytes == 1000 - 28
    [cmd] = feed(conn, stream[1000:])
    assert bytes(cmd.data) == payload


def test_bad_request_magic_closes():
    conn = transmitting()
    [event] = feed(conn, b"\x25\x60\x95\x14" + req(READ, 1, 0, 512)[4:])
    assert isinstance(event, ProtocolError) and "magic" in event.reason
    conn = transmitting()  # extended headers were never negotiated
    [event] = feed(conn, struct.pack(">I", 0x21E41C71) + bytes(28))
    assert isinstance(event, ProtocolError)


def test_eof_in_transmission():
    conn = transmitting()
    assert feed(conn, b"") == [Disconnect(clean=False)]
    conn = transmitting()
    conn.receive_data(req(READ, 1, 0, 512)[:20])
    [event] = feed(conn, b"")
    assert isinstance(event, ProtocolError)
    conn = transmitting()
    conn.receive_data(req(WRITE, 1, 0, 512, data=bytes(100)))
    assert drain(conn) == []
    [event] = feed(conn, b"")
    assert isinstance(event, ProtocolError)
    conn = transmitting("ro")  # inside a refused (skipped) payload
    conn.receive_data(req(WRITE, 1, 0, 512, data=bytes(100)))
    assert drain(conn) == []
    [event] = feed(conn, b"")
    assert isinstance(event, ProtocolError)
    conn.receive_data(b"more")  # ignored after the end
    assert conn.next_event() is event


# -- chunking, pipelining, zero copy -------------------------------------------------------------


def test_writes_split_across_chunks_and_pipelined():
    rng = random.Random(7)
    payloads = [os.urandom(rng.choice([1, 512, 4096, 70_000, 200_000])) for _ in range(20)]
    stream = b""
    expected = []
    offset = 0
    for i, p in enumerate(payloads):
        stream += req(WRITE, i, offset % (MiB - len(p)), len(p), data=p)
        expected.append((i, offset % (MiB - len(p)), p))
        offset += len(p)
        stream += req(READ, 1000 + i, 0, 4096)
    for _ in range(5):
        conn = transmitting()
        events: list[Event] = []
        pos = 0
        while pos < len(stream):
            n = rng.choice([1, 3, 28, 100, 4096, 65536, 300_000])
            events += feed(conn, stream[pos : pos + n])
            pos += n
        writes = [e for e in events if e.kind == Cmd.WRITE]
        assert [(e.cookie, e.offset, bytes(e.data)) for e in writes] == expected
        assert len(events) == 40


def test_write_views_stay_valid_after_more_data():
    conn = transmitting()
    stream = req(WRITE, 1, 0, 4, data=b"aaaa") + req(WRITE, 2, 0, 4, data=b"bbbb")
    conn.receive_data(bytearray(stream + req(WRITE, 3, 0, 4)[:10]))  # a bytearray: copied
    first, second = drain(conn)
    conn.receive_data(req(WRITE, 3, 0, 4, data=b"cccc")[10:])
    conn.receive_data(req(WRITE, 4, 0, 4, data=b"dddd"))
    third, fourth = drain(conn)
    assert [bytes(e.data) for e in (first, second, third, fourth)] == [
        b"aaaa",
        b"bbbb",
        b"cccc",
        b"dddd",
    ]


def test_receive_data_copies_mutable_buffers():
    conn = transmitting()
    buf = bytearray(req(WRITE, 1, 0, 4, data=b"abcd"))
    conn.receive_data(buf)
    buf[-4:] = b"XXXX"
    [cmd] = drain(conn)
    assert bytes(cmd.data) == b"abcd"
    view = memoryview(bytearray(req(WRITE, 2, 0, 4, data=b"wxyz")))
    conn.receive_data(view)
    view[-1] = ord("!")
    [cmd] = drain(conn)
    assert bytes(cmd.data) == b"wxyz"


def test_many_small_requests_in_one_chunk():
    conn = transmitting()
    stream = b"".join(req(READ, i, (i * 4096) % MiB, 4096) for i in range(1000))
    events = feed(conn, stream)
    assert [e.cookie for e in events] == list(range(1000))
    assert conn.buffered_bytes == 0


# -- reply builders ------------------------------------------------------------------------------


def test_simple_reply_bytes():
    assert simple_reply(0x0102030405060708) == bytes.fromhex("67446698000000000102030405060708")
    assert simple_reply(9, EIO) == bytes.fromhex("67446698000000050000000000000009")


def test_structured_builders_bytes():
    assert offset_data_header(7, 4096, 512) == (
        bytes.fromhex("668e33ef00010001000000000000000700000208") + struct.pack(">Q", 4096)
    )
    assert offset_data_header(7, 0, 1, done=False)[4:6] == b"\x00\x00"
    assert offset_hole_chunk(8, 512, 1024) == (
        chunk_header(8, 2, 12) + struct.pack(">QI", 512, 1024)
    )
    assert none_chunk(3) == chunk_header(3, 0, 0)
    assert structured_header(3, 0x1234, 99, flags=0) == chunk_header(3, 0x1234, 99, flags=0)
    assert error_chunk(4, EIO, "disk on fire") == (
        chunk_header(4, 0x8001, 6 + 12) + struct.pack(">IH", EIO, 12) + b"disk on fire"
    )
    assert error_chunk(4, EIO) == chunk_header(4, 0x8001, 6) + struct.pack(">IH", EIO, 0)
    assert error_offset_chunk(5, EIO, 4096, "bad") == (
        chunk_header(5, 0x8002, 14 + 3)
        + struct.pack(">IH", EIO, 3)
        + b"bad"
        + struct.pack(">Q", 4096)
    )
    assert block_status_chunk(6, 1, [(4096, 0), (8192, 3)], done=False) == (
        chunk_header(6, 5, 20, flags=0) + struct.pack(">IIIII", 1, 4096, 0, 8192, 3)
    )


def test_error_message_is_cleaned_and_capped():
    raw = error_chunk(1, EIO, "a\0b" + "é" * 3000)
    (length,) = struct.unpack_from(">H", raw, 24)
    message = raw[26:]
    assert len(message) == length <= 4096
    assert b"\0" not in message and message.startswith(b"a b")
    message.decode("utf-8")  # not cut inside a character


@pytest.mark.parametrize(
    "call",
    [
        lambda: offset_data_header(1, 0, 0),
        lambda: offset_hole_chunk(1, 0, 0),
        lambda: error_chunk(1, 0),
        lambda: error_offset_chunk(1, 0, 0),
        lambda: block_status_chunk(1, 1, []),
        lambda: block_status_chunk(1, 1, [(0, 0)]),
        lambda: block_status_chunk(1, 1, [(1 << 32, 0)]),
    ],
)
def test_builders_refuse_nonsense(call):
    with pytest.raises(ValueError):
        call()


def test_connection_replies_follow_negotiation():
    plain = transmitting()
    assert plain.read_reply_header(5, 4096, 512) == simple(5)
    header, data = plain.read_reply(5, 4096, b"x" * 512)
    assert header == simple(5) and data == b"x" * 512
    assert plain.ok_reply(5) == simple(5)
    assert plain.error_reply(5, EIO, "ignored") == simple(5, EIO)
    assert plain.error_reply(5, errno.EROFS) == simple(5, EPERM)  # Python errno mapped
    with pytest.raises(ValueError):
        plain.error_reply(5, 0)
    sr = transmitting(structured=True)
    assert sr.read_reply_header(5, 4096, 512) == offset_data_header(5, 4096, 512)
    assert sr.read_reply(5, 0, b"abc")[0] == offset_data_header(5, 0, 3)
    assert sr.ok_reply(5) == simple(5)
    assert sr.error_reply(5, EINVAL, "bad") == error_chunk(5, EINVAL, "bad")
    assert sr.error_reply(5, errno.EDQUOT) == error_chunk(5, ENOSPC)


def test_nbd_error_mapping():
    assert nbd_error(0) == 0
    for value in (EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN):
        assert nbd_error(value) == value  # the NBD values are Linux errno values
    assert nbd_error(errno.EROFS) == EPERM
    assert nbd_error(errno.EACCES) == EPERM
    assert nbd_error(errno.EDQUOT) == ENOSPC
    assert nbd_error(errno.EFBIG) == ENOSPC
    assert nbd_error(errno.EOPNOTSUPP) == ENOTSUP
    assert nbd_error(errno.ENXIO) == EIO
    assert nbd_error(123456) == EIO
    assert nbd_error(OSError(errno.ENOSPC, "full")) == ENOSPC
    assert nbd_error(ValueError("no errno")) == EIO
    assert nbd_error(None) == EIO


# -- ExportInfo ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"name": "x" * 4097},
        {"name": "a\0b"},
        {"description": "d" * 5000},
        {"size": -1},
        {"size": 1 << 63},
        {"min_block": 3},
        {"min_block": 1 << 17, "preferred_block": 1 << 17},
        {"preferred_block": 256},
        {"min_block": 8192, "preferred_block": 4096},
        {"preferred_block": 6000},
        {"max_block": 1024},
        {"max_block": 1 << 32},
    ],
)
def test_export_info_validation(kw):
    args = {"name": "x", "size": 4096} | kw
    with pytest.raises(ValueError):
        ExportInfo(**args)


def test_transmission_flags():
    assert EXPORTS["disk"].transmission_flags() == RW_FLAGS
    assert EXPORTS["disk"].transmission_flags(True) == RW_FLAGS | DF_FLAG
    assert EXPORTS["ro"].transmission_flags() == RO_FLAGS
    assert EXPORTS["bare"].transmission_flags() == 1
    assert EXPORTS["fast"].transmission_flags() == RW_FLAGS | 16  # ROTATIONAL


# -- fuzzing -------------------------------------------------------------------------------------

FUZZ_MAX_OPTION = 2048
FUZZ_EXPORTS = {
    "": ExportInfo("", 64 * 1024, max_block=8192, block_status=True),
    "disk": ExportInfo("disk", 64 * 1024, min_block=512, max_block=16384, block_status=True),
    "ro": ExportInfo("ro", 8192, read_only=True, max_block=4096),
}
# After draining, at most one incomplete message is held: an option header and its data, or a
# request header and a partial WRITE payload.
FUZZ_BOUND = max(16 + FUZZ_MAX_OPTION, 28 + 16384)


def fuzz_conn() -> ServerConnection:
    return ServerConnection(
        FUZZ_EXPORTS.get,
        lambda: list(FUZZ_EXPORTS),
        max_option_length=FUZZ_MAX_OPTION,
        max_option_skip=4 * FUZZ_MAX_OPTION,
    )


def run_chunks(chunks: list[bytes], eof: bool = True, drains: list[bool] = ()) -> list[Event]:
    """Feed the chunks, draining events after each one (or only where ``drains`` says so,
    cyclically, and after the last), checking the events and the buffering bound."""
    conn = fuzz_conn()
    conn.data_to_send()
    events: list[Event] = []
    for i, piece in enumerate(chunks):
        conn.receive_data(piece)
        if drains and not drains[i % len(drains)] and i < len(chunks) - 1:
            continue  # a server that paused reading events: bytes pile up, order must hold
        got = drain(conn)
        for event in got:
            assert isinstance(event, Event)
            if isinstance(event, Command) and event.kind == Cmd.WRITE:
                assert len(event.data) == event.length
        events += got
        assert conn.buffered_bytes <= FUZZ_BOUND
        conn.data_to_send()
        if events and isinstance(events[-1], Disconnect | ProtocolError):
            break
    if eof and not (events and isinstance(events[-1], Disconnect | ProtocolError)):
        conn.receive_data(b"")
        got = drain(conn)
        assert len(got) == 1 and isinstance(got[0], Disconnect | ProtocolError), got
        events += got
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        if p > last:
            pieces.append(data[last:p])
            last = p
    return pieces


@given(st.lists(st.binary(max_size=300), max_size=30))
def test_fuzz_random_bytes(chunks):
    run_chunks(chunks)


@given(st.binary(max_size=200), st.lists(st.binary(max_size=400), max_size=10))
def test_fuzz_random_after_handshake(prefix_noise, chunks):
    """Random bytes behind a valid handshake: both option parsing and request parsing."""
    handshake = struct.pack(">I", 3) + opt(STRUCTURED)
    run_chunks([handshake, prefix_noise, *chunks])
    run_chunks([handshake + opt(GO, go_data(b"disk")), prefix_noise, *chunks])


def command_strategy():
    kinds = st.sampled_from([READ, WRITE, FLUSH, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS, 9])
    return st.tuples(
        kinds,
        st.integers(0, 2**64 - 1),
        st.sampled_from([0, 1, 512, 1000, 4096, 60_000, 2**64 - 1]),
        st.sampled_from([0, 1, 512, 4096, 8192, 16384, 20_000]),
        st.sampled_from([0, FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO, 0x8000]),
    )


def session_stream(export: bytes, commands, disc: bool) -> bytes:
    out = struct.pack(">I", 3) + opt(STRUCTURED) + opt(SET_META, meta_data(export, BA))
    out += opt(LIST) + opt(STARTTLS) + opt(GO, go_data(export, I_BLOCK_SIZE))
    for kind, cookie, offset, length, flags in commands:
        payload = bytes([cookie & 0xFF]) * length if kind == WRITE and length <= 20_000 else b""
        out += req(kind, cookie, offset, length, flags, payload)
    if disc:
        out += req(DISC)
    return out


@given(
    st.sampled_from([b"", b"disk", b"ro"]),
    st.lists(command_strategy(), max_size=12),
    st.booleans(),
    st.lists(st.integers(0, 10**6), max_size=20),
    st.lists(st.booleans(), max_size=8),
)
def test_fuzz_valid_sessions_are_chunking_invariant(export, commands, disc, cuts, drains):
    stream = session_stream(export, commands, disc)
    whole = run_chunks([stream])
    assert run_chunks(split(stream, cuts)) == whole
    assert run_chunks(split(stream, cuts), drains=drains) == whole
    assert isinstance(whole[0], ExportChosen)
    answered = [e for e in whole[1:] if isinstance(e, Command | Invalid)]
    assert len(answered) == len(commands)  # every request gets exactly one event
    assert whole[-1] == Disconnect(clean=disc)


@given(
    st.sampled_from([b"", b"disk", b"ro"]),
    st.lists(command_strategy(), max_size=8),
    st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete"]),
            st.integers(0, 10**6),
            st.binary(min_size=1, max_size=8),
        ),
        min_size=1,
        max_size=6,
    ),
    st.lists(st.integers(0, 10**6), max_size=12),
)
def test_fuzz_mutated_sessions(export, commands, mutations, cuts):
    data = bytearray(session_stream(export, commands, True))
    for how, where, junk in mutations:
        at = where % (len(data) + 1)
        if how == "flip" and at < len(data):
            data[at] ^= junk[0] or 0xFF
        elif how == "insert":
            data[at:at] = junk
        else:
            del data[at : at + len(junk)]
    run_chunks(split(bytes(data), cuts))


# -- real clients ----------------------------------------------------------------------------------


class MemoryServer:
    """A tiny threaded NBD server over a bytearray, built on the codec, for real clients."""

    def __init__(self, path: Path, exports: dict[str, ExportInfo]) -> None:
        self.exports = exports
        self.disks = {name: bytearray(info.size) for name, info in exports.items()}
        self.invalid: list[Invalid] = []
        self.errors: list[str] = []
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn = ServerConnection(self.exports.get, lambda: list(self.exports))
        disk = b""
        try:
            sock.sendall(conn.data_to_send())
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    sock.sendall(conn.data_to_send())
                    conn.receive_data(sock.recv(1 << 16))
                elif isinstance(event, ExportChosen):
                    sock.sendall(conn.data_to_send())
                    disk = self.disks[event.name]
                elif isinstance(event, Command):
                    sock.sendall(self._execute(conn, disk, event))
                elif isinstance(event, Invalid):
                    self.invalid.append(event)
                    sock.sendall(conn.error_reply(event.cookie, event.error, event.message))
                else:
                    if isinstance(event, ProtocolError):
                        self.errors.append(event.reason)
                    sock.sendall(conn.data_to_send())
                    return
        except OSError:
            pass  # nbdinfo --list drops the connection right after NBD_OPT_ABORT
        finally:
            sock.close()

    @staticmethod
    def _execute(conn: ServerConnection, disk: bytearray, cmd: Command) -> bytes:
        start, end = cmd.offset, cmd.offset + cmd.length
        if cmd.kind == Cmd.READ:
            return b"".join(conn.read_reply(cmd.cookie, start, bytes(disk[start:end])))
        if cmd.kind == Cmd.WRITE:
            disk[start:end] = cmd.data
        elif cmd.kind in (Cmd.TRIM, Cmd.WRITE_ZEROES):
            disk[start:end] = bytes(cmd.length)
        elif cmd.kind == Cmd.BLOCK_STATUS:
            return conn.block_status_reply(cmd.cookie, MemoryServer._extents(disk, cmd))
        return conn.ok_reply(cmd.cookie)

    @staticmethod
    def _extents(disk: bytearray, cmd: Command) -> list[tuple[int, int]]:
        """base:allocation extents in 64 KiB steps: all-zero steps are reported as zero."""
        step = 65536
        extents: list[tuple[int, int]] = []
        pos, end = cmd.offset, cmd.offset + cmd.length
        while pos < end:
            n = min(step - pos % step, end - pos)
            state = 0 if any(disk[pos : pos + n]) else 2
            if extents and extents[-1][1] == state:
                extents[-1] = (extents[-1][0] + n, state)
            else:
                extents.append((n, state))
            pos += n
        return extents[:1] if cmd.req_one else extents


@pytest.fixture
def memory_server(tmp_path):
    path = tmp_path / "nbd.sock"
    exports = {
        "disk": ExportInfo("disk", 8 * MiB, description="memory disk", block_status=True),
        "ro": ExportInfo("ro", MiB, read_only=True),
    }
    server = MemoryServer(path, exports)
    server.uri = lambda name: f"nbd+unix:///{name}?socket={path}"
    yield server
    server.close()
    assert server.errors == []


def tool(name: str) -> str:
    path = shutil.which(name)
    require_real(path is not None, f"{name} is not installed (scripts/install.sh installs it)")
    return path  # type: ignore[return-value]


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)


def test_nbdinfo_sees_exports(memory_server):
    nbdinfo = tool("nbdinfo")
    info = json.loads(run(nbdinfo, "--json", "--list", memory_server.uri("")).stdout)
    by_name = {e["export-name"]: e for e in info["exports"]}
    disk, ro = by_name["disk"], by_name["ro"]
    assert info["protocol"] == "newstyle-fixed" and info["structured"]
    assert disk["export-size"] == 8 * MiB and disk["description"] == "memory disk"
    assert disk["contexts"] == ["base:allocation"] and not disk["is_read_only"]
    assert disk["can_trim"] and disk["can_zero"] and disk["can_fua"] and disk["can_flush"]
    assert disk["can_multi_conn"] and disk["can_cache"] and disk["can_df"]
    assert disk["block_size_maximum"] == 32 * MiB
    assert ro["is_read_only"] and ro["contexts"] == []


def test_qemu_io_reads_and_writes(memory_server):
    qemu_io = tool("qemu-io")
    uri = memory_server.uri("disk")
    out = run(
        qemu_io, "-f", "raw",
        "-c", "write -P 0x5a 4096 65536",
        "-c", "read -P 0x5a 4096 65536",
        "-c", "write -z 8192 4096",
        "-c", "read -P 0 8192 4096",
        "-c", "discard 0 4096",
        "-c", "flush",
        uri,
    ).stdout  # fmt: skip
    assert "Pattern verification failed" not in out
    assert memory_server.disks["disk"][4096:8192] == b"\x5a" * 4096
    assert memory_server.disks["disk"][8192:12288] == bytes(4096)
    # qemu sees NBD_FLAG_READ_ONLY and refuses a read-write open ("Permission denied").
    ro = subprocess.run(
        [qemu_io, "-f", "raw", "-c", "write -P 1 0 512", memory_server.uri("ro")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ro.returncode != 0 and "denied" in ro.stderr
    run(qemu_io, "-r", "-f", "raw", "-c", "read -P 0 0 65536", memory_server.uri("ro"))
    assert memory_server.disks["ro"] == bytes(MiB)


def test_nbdcopy_round_trip(memory_server, tmp_path):
    nbdcopy = tool("nbdcopy")
    source = tmp_path / "source.img"
    source.write_bytes(os.urandom(3 * MiB) + bytes(5 * MiB))
    uri = memory_server.uri("disk")
    run(nbdcopy, str(source), uri)
    assert memory_server.disks["disk"] == source.read_bytes()
    back = tmp_path / "back.img"
    run(nbdcopy, uri, str(back))
    assert back.read_bytes() == source.read_bytes()


def test_qemu_img_map_uses_block_status(memory_server):
    qemu_img = tool("qemu-img")
    memory_server.disks["disk"][:MiB] = b"\x01" * MiB
    extents = json.loads(
        run(qemu_img, "map", "-f", "raw", "--output=json", memory_server.uri("disk")).stdout
    )
    assert extents[0]["data"] and not extents[0]["zero"]
    assert any(e["zero"] for e in extents)
