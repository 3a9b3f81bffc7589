"""The control protocol under bad input: malformed lines, wrong types, unknown ops, oversized
lines, random bytes and random message words get an error reply; nothing changes; the daemon
keeps serving every client."""

from __future__ import annotations

import json
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ioband.control import protocol
from ioband.errors import IobandError
from tests.control_helpers import backing, control_daemon


@pytest.fixture(scope="module")
def ctl(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("proto")
    with control_daemon() as c:
        path = backing(tmp, "a.img", 2048)
        c.ok("create", "ioband1", "--table",
             f"0 2048 ioband {path} 1 0 0 user weight 0 :40 1000:20")  # fmt: skip
        yield c


def exchange(path: str, data: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    lines = reply.splitlines()
    assert len(lines) >= 1, data
    return json.loads(lines[0])


def still_serving(ctl, before: str) -> None:
    assert ctl.ok("table") == before


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"not json\n", "Malformed request"),
        (b"\xff\xfe\n", "Malformed request"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"op": "frobnicate"}\n', "Unknown op 'frobnicate'"),
        (b'{"name": "x"}\n', "Unknown op None"),
        (b'{"op": "message", "name": "ioband1"}\n', "'words' is required"),
        (b'{"op": "message", "name": "ioband1", "words": "weight 40"}\n', "must be a list"),
        (b'{"op": "message", "name": "ioband1", "words": [1]}\n', "list of strings"),
        (b'{"op": "create", "name": "x", "table": "t", "direct": 1}\n', "must be a bool"),
        (b'{"op": "remove", "name": true}\n', "must be a str"),
        (b'{"op": "ls", "extra": 1}\n', "unknown field 'extra'"),
        (b'{"op": "status", "format": "bogus"}\n', "Invalid status format"),
        (b"x" * (protocol.MAX_LINE + 10) + b"\n", "Request too long"),
    ],
)
def test_malformed_requests_get_an_error_reply(ctl, data, text):
    before = ctl.ok("table")
    reply = exchange(ctl.socket, data)
    assert reply["ok"] is False and reply["errno"] == "EINVAL"
    assert text in reply["message"]
    still_serving(ctl, before)


def test_several_requests_on_one_connection(ctl):
    data = protocol.encode({"op": "targets"}) + b"junk\n" + protocol.encode({"op": "ls"})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(ctl.socket)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        replies = [json.loads(x) for x in s.makefile("rb").read().splitlines()]
    assert [r["ok"] for r in replies] == [True, False, True]


def test_a_stalled_client_does_not_block_others(ctl):
    before = ctl.ok("table")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
        stalled.connect(ctl.socket)
        stalled.sendall(b'{"op": "ls"')  # and never the rest
        still_serving(ctl, before)


def test_decode_reply_raises_the_named_error():
    with pytest.raises(IobandError) as err:
        protocol.decode_reply(b'{"ok": false, "errno": "ENODEV", "message": "gone"}\n')
    assert err.value.errno_name == "ENODEV" and str(err.value) == "gone"
    with pytest.raises(IobandError, match="Malformed reply"):
        protocol.decode_reply(b"garbage")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
fields = st.sampled_from(["op", "name", "table", "words", "format", "direct", "read_only", "x"])
changes_op = st.sampled_from(["create", "remove", "message", "suspend", "resume", "bogus", ""])


@given(st.binary(max_size=300))
def test_random_bytes_get_an_error_reply(ctl, data):
    data = data.replace(b"\n", b" ") + b"\n"
    try:
        valid = protocol.decode_request(data)
    except IobandError:
        valid = None
    if valid is not None:  # random bytes that happen to be a request: leave them alone
        return
    before = ctl.ok("table")
    reply = exchange(ctl.socket, data)
    assert reply["ok"] is False and isinstance(reply["message"], str)
    still_serving(ctl, before)


@given(changes_op, st.dictionaries(fields, json_values, max_size=4))
def test_random_change_requests_with_wrong_fields(ctl, op, extra):
    request = {**extra, "op": op}
    try:
        protocol.decode_request(protocol.encode(request))
    except IobandError:
        pass
    else:  # well-formed by chance: only a create (of a random table) is sent on
        if op != "create":
            return
    before = ctl.ok("table")
    reply = exchange(ctl.socket, protocol.encode(request))
    assert reply["ok"] is False, (request, reply)
    still_serving(ctl, before)


words = st.lists(
    st.sampled_from(
        [
            "weight",
            "attach",
            "detach",
            "type",
            "token",
            "io_limit",
            "range-bw",
            "policy",
            "-1:40",
            "1000:30",
            "0",
            "-5",
            "abc",
            "",
            " ",
            "user",
            "0x10",
            "99999999999",
            "1:2:3",
            "carryover",
        ]
    )
    | st.text(max_size=10),
    max_size=4,
)


@given(words)
def test_random_message_words_are_all_or_nothing(ctl, message):
    before = ctl.ok("table")
    reply = exchange(ctl.socket, protocol.encode({"op": "message", "name": "ioband1",
                                                  "words": message}))  # fmt: skip
    if reply["ok"]:  # a valid message: put the device back as it was
        ctl.ok("remove", "ioband1")
        table = before.partition(": ")[2].strip()
        ctl.ok("create", "ioband1", "--table", table)
    else:
        assert reply["errno"] in ("EINVAL", "EEXIST", "EBUSY", "ENXIO"), reply
        still_serving(ctl, before)
    assert ctl.ok("table") == before
