"""The admission channel between the daemon and a FUSE worker (``ioband.fuse.channel``): batched
records in their order, malformed input refused with the record and field named, and what both
ends do with it (the daemon's ``WorkerChannel`` with a real engine, the worker's
``ChannelClient``): nothing decoded before the fault, and no request in flight, is lost."""

from __future__ import annotations

import asyncio
import struct
import types

import pytest

from ioband.core.driver import Driver
from ioband.core.engine import Engine
from ioband.core.request import ISSUED
from ioband.fuse import channel
from ioband.fuse.channel import DONE, ISSUE, READY, SUBMIT, ChannelError, Decoder, Outbox
from ioband.fuse.mount import WorkerChannel
from ioband.runtime import Runtime, admitted, start_io

WORKER_SENDS = (SUBMIT, DONE, READY)


def entry(tag: int, write: bool = False, offset: int = 0, length: int = 4096, pid: int = 10,
          uid: int = 0, cgroup: int = 7) -> tuple:  # fmt: skip
    """A decoded SUBMIT entry: flags, tag, offset, length, pid, pgrp, uid, gid, cgroup."""
    flags = (channel.FLAG_WRITE if write else 0) | channel.FLAG_SYNC
    return (flags, tag, offset, length, pid, pid, uid, 0, cgroup)


def submit(out: Outbox, e: tuple) -> None:
    flags, tag, offset, length, pid, pgrp, uid, gid, cgroup = e
    out.submit(tag, bool(flags & channel.FLAG_WRITE), bool(flags & channel.FLAG_SYNC), offset,
               length, pid, pgrp, uid, gid, cgroup)  # fmt: skip


# -- the codec ---------------------------------------------------------------------------------
def test_runs_of_one_kind_go_as_one_batch_in_their_order():
    out = Outbox()
    out.ready()
    submit(out, entry(1))
    submit(out, entry(2, write=True, offset=1 << 40, length=1 << 20))
    out.tag(DONE, 1)
    out.tag(DONE, 2)
    submit(out, entry(3))
    data = out.take()
    assert not out and out.take() == b""
    # READY, then three batches, not five records: each header counts its run
    assert struct.unpack_from("<BxH", data, 4) == (SUBMIT, 2)
    assert Decoder(WORKER_SENDS).feed(data) == [
        (READY, []),
        (SUBMIT, [entry(1), entry(2, write=True, offset=1 << 40, length=1 << 20)]),
        (DONE, [1, 2]),
        (SUBMIT, [entry(3)]),
    ]


def test_bytes_split_anywhere_decode_the_same():
    out = Outbox()
    for tag in range(1, 6):
        submit(out, entry(tag))
        out.tag(DONE, tag)
    data = out.take()
    whole = Decoder(WORKER_SENDS).feed(data)
    dec = Decoder(WORKER_SENDS)
    pieces = [batch for i in range(len(data)) for batch in dec.feed(data[i : i + 1])]
    assert pieces == whole and len(whole) == 10


def test_a_run_longer_than_a_batch_is_split():
    out = Outbox()
    for tag in range(1, channel.MAX_BATCH + 3):
        out.tag(ISSUE, tag)
    batches = Decoder((ISSUE,)).feed(out.take())
    assert [len(tags) for _, tags in batches] == [channel.MAX_BATCH, 2]
    assert batches[1][1] == [channel.MAX_BATCH + 1, channel.MAX_BATCH + 2]


def test_encode_matches_the_outbox():
    out = Outbox()
    submit(out, entry(5))
    assert channel.encode(SUBMIT, [entry(5)]) == out.take()
    assert channel.encode(READY, []) == channel.READY_RECORD


@pytest.mark.parametrize(
    "data, accept, message",
    [
        (b"\x09\x00\x01\x00\x01\x00\x00\x00", WORKER_SENDS,
         "record kind 9: must be one of 1 (SUBMIT), 2 (DONE), 3 (READY)"),
        (channel.encode(ISSUE, [1]), WORKER_SENDS, "record kind 4: must be one of"),
        (channel.encode(SUBMIT, [entry(1)]), (ISSUE,), "record kind 1: must be one of 4 (ISSUE)"),
        (struct.pack("<BxH", DONE, 0), WORKER_SENDS, "DONE count 0: must be 1 to 65535"),
        (struct.pack("<BxH", ISSUE, 0), (ISSUE,), "ISSUE count 0: must be 1 to 65535"),
        (struct.pack("<BxH", READY, 2), WORKER_SENDS, "READY count 2: must be 0"),
        (channel.encode(DONE, [3, 0]), WORKER_SENDS, "DONE tag 0: must be 1 to 4294967295"),
        (channel.encode(ISSUE, [0]), (ISSUE,), "ISSUE tag 0: must be 1 to"),
        (channel.encode(SUBMIT, [(4, *entry(1)[1:])]), WORKER_SENDS,
         "SUBMIT tag 1 flags 0x4: only WRITE (1) and SYNC (2) are defined"),
        (channel.encode(SUBMIT, [entry(0)]), WORKER_SENDS, "SUBMIT tag 0: must be 1 to"),
        (channel.encode(SUBMIT, [entry(1), entry(2, offset=-4096)]), WORKER_SENDS,
         "SUBMIT tag 2 offset -4096: must be >= 0"),
        (channel.encode(SUBMIT, [entry(1, length=-1)]), WORKER_SENDS,
         "SUBMIT tag 1 length -1: must be >= 0"),
    ],
)  # fmt: skip
def test_malformed_records_are_refused_naming_the_field(data, accept, message):
    with pytest.raises(ChannelError) as err:
        Decoder(accept).feed(data)
    assert str(err.value).startswith("admission channel: ")
    assert message in str(err.value)
    assert err.value.errno_name == "EINVAL"


def test_what_came_before_a_fault_is_kept_and_nothing_after_it_framed():
    good = channel.encode(DONE, [1, 2]) + channel.encode(SUBMIT, [entry(3)])
    dec = Decoder(WORKER_SENDS)
    with pytest.raises(ChannelError) as err:
        dec.feed(good + b"\xff\x00\x01\x00" + channel.encode(DONE, [4]))
    assert err.value.decoded == [(DONE, [1, 2]), (SUBMIT, [entry(3)])]
    assert dec.feed(b"") == []  # the rest was dropped, not taken for records


# -- the daemon's end, with a real engine ------------------------------------------------------
class Transport:
    def __init__(self) -> None:
        self.data = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def issued(self) -> list[int]:
        tags = [t for _, batch in Decoder((ISSUE,)).feed(self.data) for t in batch]
        self.data = b""
        return tags


class Loop:
    def call_soon(self, fn, *args):
        fn(*args)


@pytest.fixture
def daemon_end():
    engine = Engine()
    driver = Driver(engine, start_io, admit=admitted)
    dev = engine.create("fuse1", "0 0 ioband /dev/sda fuse1 0 4 user weight 0 :100")
    gone: list[bool] = []
    mount = types.SimpleNamespace(runtime=Runtime(driver, loop=Loop()), device=dev, name="fuse1",
                                  worker_gone=lambda: gone.append(True))  # fmt: skip
    end = WorkerChannel(mount)
    transport = Transport()
    end.connection_made(transport)
    return end, transport, gone


def test_daemon_issues_what_the_core_releases_and_completes_dones(daemon_end):
    end, transport, _ = daemon_end
    end.data_received(channel.encode(SUBMIT, [entry(t) for t in range(1, 7)]))
    assert transport.issued() == [1, 2, 3, 4]  # io_limit 4: two are held
    end.data_received(channel.encode(DONE, [2, 3]))
    assert transport.issued() == [5, 6]  # released by the completions, in one batch
    assert all(end.requests[t].state == ISSUED for t in (1, 4, 5, 6))
    assert not transport.closed


def test_one_caller_is_one_submitter_and_attribution_is_per_caller(daemon_end):
    end, _, _ = daemon_end
    end.data_received(channel.encode(SUBMIT, [entry(1, uid=1), entry(2, uid=1), entry(3, uid=2)]))
    one, again, other = (end.requests[t].owner for t in (1, 2, 3))
    assert one is again and other is not one
    assert (one.uid, other.uid, one.cgroup, one.pid) == (1, 2, 7, 10)


def test_the_submitters_remembered_are_bounded(daemon_end, monkeypatch):
    from ioband.fuse import mount

    monkeypatch.setattr(mount, "MAX_OWNERS", 2)
    end, _, _ = daemon_end
    end.data_received(channel.encode(SUBMIT, [entry(t, uid=t) for t in range(1, 4)]))
    assert len(end.owners) <= 2
    assert [end.requests[t].owner.uid for t in range(1, 4)] == [1, 2, 3]


def test_daemon_bad_input_closes_the_channel_and_loses_nothing(daemon_end, caplog):
    end, transport, _ = daemon_end
    end.data_received(channel.encode(SUBMIT, [entry(1), entry(2)]))
    assert transport.issued() == [1, 2]
    # a DONE, then garbage: the DONE still completes its request
    end.data_received(channel.encode(DONE, [1]) + struct.pack("<BxH", DONE, 0))
    assert 1 not in end.requests and end.requests[2].state == ISSUED
    assert transport.closed and end.closed  # nothing more is written to a closing channel
    assert "DONE count 0: must be 1 to 65535; restarting the worker" in caplog.text
    end.connection_lost(None)  # the worker is gone: what it had in flight is completed
    assert end.driver.engine.device("fuse1").inflight == 0


def test_daemon_refuses_a_tag_already_in_flight(daemon_end, caplog):
    end, transport, _ = daemon_end
    end.data_received(channel.encode(SUBMIT, [entry(1)]))
    first = end.requests[1]
    end.data_received(channel.encode(SUBMIT, [entry(1, offset=8192)]))
    assert transport.closed and "SUBMIT tag 1: already in flight" in caplog.text
    assert end.requests[1] is first  # the request in flight is still the one completed later


# -- the worker's end --------------------------------------------------------------------------
def test_worker_takes_issue_batches_and_a_bad_record_releases_every_waiter(caplog):
    from ioband.core.request import Submitter
    from ioband.fuse.worker import ChannelClient

    async def go():
        lost: list[bool] = []
        client = ChannelClient(lambda: lost.append(True))
        transport = Transport()
        transport.close = lambda: client.connection_lost(None)  # as asyncio's would, later
        client.connection_made(transport)
        owner = Submitter(pid=10, uid=1, cgroup=7)
        tasks = [asyncio.create_task(client.begin(False, True, 4096 * i, 4096, owner))
                 for i in range(3)]  # fmt: skip
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        asked = Decoder(WORKER_SENDS).feed(transport.data)
        assert [(k, [e[1] for e in es]) for k, es in asked] == [(SUBMIT, [1, 2, 3])]
        client.data_received(channel.encode(ISSUE, [2]))
        assert await tasks[1] == 2 and not tasks[0].done()
        client.data_received(channel.encode(SUBMIT, [entry(9)]))  # not the daemon's to send
        assert lost and [await t for t in tasks] == [1, 2, 3]  # all let through
        assert await client.begin(False, True, 0, 4096, owner) == 0  # served without control
        assert "record kind 1: must be one of 4 (ISSUE)" in caplog.text

    asyncio.run(asyncio.wait_for(go(), 10))
