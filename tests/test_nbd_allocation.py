"""``base:allocation`` (NBD_CMD_BLOCK_STATUS, issue 11): the extents walk, the backing store,
and real clients against the daemon.

The extents walk (``ioband.nbd.allocation``) is checked against a model file with a fake
``seek`` (edge cases, odd file systems, a property test) and against real sparse files; the
daemon is checked with ``nbdinfo --map``, ``qemu-img map`` (which asks with REQ_ONE), and by
the bytes the daemon reads when ``nbdcopy`` and ``qemu-img convert`` copy a sparse 1 GiB image
with 4 MiB of data: with block status they read the data only, and the copy is identical.
Real clients need the Debian packages of scripts/install.sh; under CI
(IOBAND_REQUIRE_REAL=1) a missing prerequisite fails instead of skipping.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ioband.control.config import load_config
from ioband.control.embedded import EmbeddedDaemon
from ioband.nbd.allocation import DATA, HOLE, MAX_EXTENTS, allocation_extents
from ioband.nbd.backing import Backing
from ioband.nbd.server import MAX_BLOCK_STATUS
from tests.conftest import require_real

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


# -- the walk against a model file ---------------------------------------------------------------


def model_seek(data: list[tuple[int, int]], size: int) -> Callable[[int, int], int]:
    """lseek SEEK_DATA/SEEK_HOLE of a file of ``size`` bytes whose data is at the sorted,
    disjoint, non-adjacent ``[start, end)`` ranges of ``data``, as Linux answers it."""

    def seek(pos: int, whence: int) -> int:
        if pos >= size:
            raise OSError(errno.ENXIO, "past the end")
        if whence == os.SEEK_DATA:
            for start, end in data:
                if pos < end:
                    return max(pos, start)
            raise OSError(errno.ENXIO, "no more data")
        for start, end in data:
            if start <= pos < end:
                return end
        return pos  # in a hole (the virtual hole at EOF included)

    return seek


def flags_at(data: list[tuple[int, int]], pos: int) -> int:
    return DATA if any(s <= pos < e for s, e in data) else HOLE


def check_reply(extents: list[tuple[int, int]], offset: int, length: int) -> None:
    """The spec's rules: >= 1 extent, lengths > 0, no more than asked, flags alternate."""
    assert extents
    assert all(n > 0 for n, _ in extents)
    assert sum(n for n, _ in extents) <= length
    assert all(a[1] != b[1] for a, b in itertools.pairwise(extents))


LAYOUT = [(0, 64 * KiB), (1 * MiB, 1 * MiB + 4 * KiB), (3 * MiB, 4 * MiB)]  # ends with data


def test_model_whole_file():
    seek = model_seek(LAYOUT, 4 * MiB)
    assert allocation_extents(seek, 0, 4 * MiB) == [
        (64 * KiB, DATA), (MiB - 64 * KiB, HOLE), (4 * KiB, DATA),
        (2 * MiB - 4 * KiB, HOLE), (MiB, DATA),
    ]  # fmt: skip


def test_model_sub_ranges_are_clipped_to_the_request():
    seek = model_seek(LAYOUT, 4 * MiB)
    # starts inside a hole, ends inside data
    assert allocation_extents(seek, 512 * KiB, 514 * KiB) == [(512 * KiB, HOLE), (2 * KiB, DATA)]
    # starts and ends inside one data extent
    assert allocation_extents(seek, 4 * KiB, 8 * KiB) == [(8 * KiB, DATA)]
    # one byte
    assert allocation_extents(seek, MiB + 4 * KiB, 1) == [(1, HOLE)]


def test_model_req_one_is_one_extent_no_longer_than_asked():
    seek = model_seek(LAYOUT, 4 * MiB)
    assert allocation_extents(seek, 0, 4 * MiB, max_extents=1) == [(64 * KiB, DATA)]
    assert allocation_extents(seek, 64 * KiB, 4 * MiB - 64 * KiB, 1) == [(MiB - 64 * KiB, HOLE)]
    assert allocation_extents(seek, 16 * KiB, 4 * KiB, max_extents=1) == [(4 * KiB, DATA)]


def test_model_at_and_beyond_the_end_of_the_file():
    """A file shorter than its export (it shrank): beyond its end reads zeroes, a hole."""
    seek = model_seek(LAYOUT, 4 * MiB)
    assert allocation_extents(seek, 4 * MiB, 4 * KiB) == [(4 * KiB, HOLE)]
    assert allocation_extents(seek, 4 * MiB - 4 * KiB, 12 * KiB) == [(4 * KiB, DATA),
                                                                     (8 * KiB, HOLE)]  # fmt: skip
    assert allocation_extents(model_seek([], 0), 0, MiB) == [(MiB, HOLE)]  # empty file


def test_model_many_extents_are_capped_and_the_next_query_goes_on():
    data = [(i * 8 * KiB, i * 8 * KiB + 4 * KiB) for i in range(3000)]  # 6000 extents
    size = 3000 * 8 * KiB
    seek = model_seek(data, size)
    first = allocation_extents(seek, 0, size)
    assert len(first) == MAX_EXTENTS
    check_reply(first, 0, size)
    done = sum(n for n, _ in first)
    assert done == MAX_EXTENTS * 4 * KiB
    assert allocation_extents(seek, done, size - done, max_extents=3) == [
        (4 * KiB, DATA), (4 * KiB, HOLE), (4 * KiB, DATA),
    ]  # fmt: skip


@pytest.mark.parametrize("err", [errno.EINVAL, errno.EOPNOTSUPP, errno.EIO])
def test_model_unsupported_or_failing_seek_is_all_data(err):
    def seek(pos: int, whence: int) -> int:
        raise OSError(err, os.strerror(err))

    assert allocation_extents(seek, 4096, MiB) == [(MiB, DATA)]


def test_no_seek_at_all_is_one_data_extent():  # a block device
    assert allocation_extents(None, 0, 5 * GiB - 1) == [(5 * GiB - 1, DATA)]


def test_model_odd_answers_never_loop_or_overrun():
    def backwards(pos: int, whence: int) -> int:
        return pos - 1  # SEEK_DATA before pos: broken contract

    assert allocation_extents(backwards, 4096, 8192) == [(8192, DATA)]

    def vanished(pos: int, whence: int) -> int:
        return pos  # SEEK_DATA says data at pos, SEEK_HOLE says a hole at pos: a race

    assert allocation_extents(vanished, 0, 8192) == [(8192, DATA)]

    def shrank(pos: int, whence: int) -> int:
        if whence == os.SEEK_DATA:
            return pos
        raise OSError(errno.ENXIO, "the file shrank between the two calls")

    assert allocation_extents(shrank, 0, 8192) == [(8192, HOLE)]

    def far(pos: int, whence: int) -> int:
        return pos if whence == os.SEEK_DATA else pos + 10 * GiB  # past the request

    assert allocation_extents(far, 0, 8192) == [(8192, DATA)]

    calls = []

    def tiny(pos: int, whence: int) -> int:  # data in 1-byte steps: merged, and bounded
        calls.append(pos)
        return pos if whence == os.SEEK_DATA else pos + 1

    extents = allocation_extents(tiny, 0, MiB, max_extents=4)
    assert len(extents) == 1 and extents[0][1] == DATA and 0 < extents[0][0] < MiB
    assert len(calls) <= 2 * (2 * 4 + 2)


@pytest.mark.parametrize(("offset", "length", "limit"), [(0, 0, 1), (-1, 10, 1), (0, 10, 0)])
def test_bad_arguments(offset, length, limit):
    with pytest.raises(ValueError):
        allocation_extents(model_seek([], 0), offset, length, limit)


@st.composite
def layouts(draw):
    """A file (sorted, disjoint, non-adjacent data ranges) and a query inside its export."""
    size = draw(st.integers(1, 1 << 20))
    cuts = sorted(set(draw(st.lists(st.integers(0, size), max_size=12))))
    data = [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if a < b]
    data = [r for i, r in enumerate(data) if i == 0 or data[i - 1][1] < r[0]]
    export = draw(st.integers(1, size + 4096))  # the file may be shorter than the export
    offset = draw(st.integers(0, export - 1))
    length = draw(st.integers(1, export - offset))
    return data, size, offset, length, draw(st.integers(1, 6))


@given(layouts())
def test_property_extents_describe_the_file(case):
    data, size, offset, length, limit = case
    extents = allocation_extents(model_seek(data, size), offset, length, limit)
    check_reply(extents, offset, length)
    assert len(extents) <= limit
    pos = offset
    for n, flags in extents:  # every byte's status is right (checked at each boundary)
        for probe in (pos, pos + n - 1):
            assert flags_at(data, probe) == flags, (pos, n, flags)
        pos += n
    if len(extents) < limit:
        assert pos == offset + length  # short only because of the cap


# -- real files ----------------------------------------------------------------------------------


def sparse_file(path: Path, size: int, data: list[tuple[int, int]]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for start, end in data:
            f.seek(start)
            f.write(os.urandom(end - start))
        f.flush()
        os.fsync(f.fileno())


def require_holes(directory: Path) -> None:
    probe = directory / "probe.img"
    sparse_file(probe, 2 * MiB, [(MiB, MiB + 4 * KiB)])
    fd = os.open(probe, os.O_RDONLY)
    try:
        ok = os.lseek(fd, 0, os.SEEK_DATA) == MiB
    except OSError:
        ok = False
    finally:
        os.close(fd)
        probe.unlink()
    require_real(ok, f"the file system of {directory} does not report holes (SEEK_DATA)")


@pytest.mark.parametrize("direct", [False, True])
def test_backing_reports_the_holes_of_a_file(tmp_path, direct):
    require_holes(tmp_path)
    sparse_file(tmp_path / "a.img", 4 * MiB, LAYOUT)
    backing = Backing.open(str(tmp_path / "a.img"), direct=direct)
    try:
        model = model_seek(LAYOUT, 4 * MiB)
        for offset, length in [(0, 4 * MiB), (512 * KiB, 514 * KiB), (4 * MiB - 4 * KiB, 4 * KiB)]:
            assert backing.block_status(offset, length) == allocation_extents(model, offset,
                                                                              length)  # fmt: skip
        assert backing.block_status(0, 4 * MiB, req_one=True) == [(64 * KiB, DATA)]
        assert backing.block_status(64 * KiB, 4 * KiB, req_one=True) == [(4 * KiB, HOLE)]
        os.truncate(tmp_path / "a.img", 2 * MiB)  # shrinks under the export
        assert backing.block_status(2 * MiB - 4 * KiB, 8 * KiB) == [(8 * KiB, HOLE)]
    finally:
        backing.close()


def test_backing_with_many_extents(tmp_path):
    require_holes(tmp_path)
    data = [(i * 8 * KiB, i * 8 * KiB + 4 * KiB) for i in range(1500)]
    sparse_file(tmp_path / "many.img", 1500 * 8 * KiB, data)
    backing = Backing.open(str(tmp_path / "many.img"), read_only=True)
    try:
        extents = backing.block_status(0, backing.size)
        assert len(extents) == MAX_EXTENTS
        assert extents[:2] == [(4 * KiB, DATA), (4 * KiB, HOLE)]
        check_reply(extents, 0, backing.size)
        assert backing.block_status(0, backing.size, max_extents=5000) == [
            (4 * KiB, flags) for _ in range(1500) for flags in (DATA, HOLE)
        ]
    finally:
        backing.close()


def test_backing_on_a_block_device_is_all_data(tmp_path):
    losetup = shutil.which("losetup")
    require_real(losetup is not None and os.geteuid() == 0, "needs root and losetup")
    sparse_file(tmp_path / "disk.img", 8 * MiB, [(MiB, 2 * MiB)])
    attach = subprocess.run([losetup, "-f", "--show", str(tmp_path / "disk.img")],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    require_real(attach.returncode == 0, f"losetup failed: {attach.stderr.strip()}")
    loop = attach.stdout.strip()
    try:
        backing = Backing.open(loop, read_only=True)
        try:
            assert backing.is_block and backing.size == 8 * MiB
            assert backing.block_status(0, 8 * MiB) == [(8 * MiB, DATA)]
            assert backing.block_status(4 * MiB, 4 * KiB, req_one=True) == [(4 * KiB, DATA)]
        finally:
            backing.close()
    finally:
        subprocess.run([losetup, "-d", loop], check=False, timeout=30)


# -- real clients against the daemon -------------------------------------------------------------

IMAGE = 1 * GiB
IMAGE_DATA = [(0, MiB), (300 * MiB, 301 * MiB), (700 * MiB, 701 * MiB), (IMAGE - MiB, IMAGE)]


def need(tool: str) -> str:
    path = shutil.which(tool)
    require_real(path is not None, f"{tool} is not installed (scripts/install.sh installs it)")
    return path  # type: ignore[return-value]


def run(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """A sparse 1 GiB image with 4 MiB of random data (the first and last MiB among them)."""
    path = tmp_path_factory.mktemp("image") / "sparse.img"
    require_holes(path.parent)
    sparse_file(path, IMAGE, IMAGE_DATA)
    return path


@pytest.fixture
def daemon(image: Path, tmp_path: Path):
    config = load_config(
        {
            "nbd": {"unix_socket": str(tmp_path / "nbd.sock")},
            "device": [{"name": "sparse", "read_only": True,
                        "table": f"0 {IMAGE // 512} ioband {image} 1 0 0 none weight 0 :10"}],
        }
    )  # fmt: skip
    with EmbeddedDaemon(config) as d:
        d.uri = f"nbd+unix:///sparse?socket={tmp_path / 'nbd.sock'}"
        yield d


def bytes_read(d) -> int:
    """Read sectors of the device's (only, default) group in its ``status``, in bytes."""
    status = d.call(lambda: d.daemon.engine.status("sparse")).split()
    # '0 <len> ioband 1 -1 <reads> <delayed> <read sectors> <writes> <delayed> <write sectors>'
    return int(status[7]) * 512


def expected_map() -> list[tuple[int, int, bool]]:
    """(start, length, data) of the image, holes included."""
    out, pos = [], 0
    for start, end in IMAGE_DATA:
        if start > pos:
            out.append((pos, start - pos, False))
        out.append((start, end - start, True))
        pos = end
    return out


def test_nbdinfo_map_shows_the_holes_and_costs_no_io(daemon):
    nbdinfo = need("nbdinfo")
    extents = json.loads(run(nbdinfo, "--map", "--json", daemon.uri).stdout)
    got = [(e["offset"], e["length"], e["type"] == 0) for e in extents]
    assert got == expected_map()
    assert {e["type"] for e in extents} == {0, 3}  # data, and hole|zero
    assert bytes_read(daemon) == 0  # metadata: it bypassed the core, nothing was charged


def test_qemu_img_map_shows_holes_and_data(daemon):
    qemu_img = need("qemu-img")  # qemu asks with NBD_CMD_FLAG_REQ_ONE
    entries = json.loads(run(qemu_img, "map", "--output=json", "-f", "raw", daemon.uri).stdout)
    got = [(e["start"], e["length"], e["data"]) for e in entries]
    assert got == expected_map()
    assert all(e["zero"] is not e["data"] for e in entries)


def same_file(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)], timeout=120).returncode == 0


def test_nbdcopy_reads_only_the_data(daemon, image, tmp_path):
    nbdcopy = need("nbdcopy")
    need("cmp")
    out = tmp_path / "copy.img"
    before = bytes_read(daemon)
    run(nbdcopy, "--no-extents", daemon.uri, str(out))  # the client ignores base:allocation
    everything = bytes_read(daemon) - before
    assert same_file(image, out)
    out.unlink()
    before = bytes_read(daemon)
    run(nbdcopy, daemon.uri, str(out))
    skipping = bytes_read(daemon) - before
    assert same_file(image, out)
    assert everything == IMAGE
    assert 4 * MiB <= skipping <= 8 * MiB, skipping  # the 4 MiB of data (and little else)


def test_qemu_img_convert_reads_only_the_data(daemon, image, tmp_path):
    qemu_img = need("qemu-img")
    need("cmp")
    out = tmp_path / "convert.img"
    before = bytes_read(daemon)
    run(qemu_img, "convert", "-f", "raw", "-O", "raw", daemon.uri, str(out))
    read = bytes_read(daemon) - before
    assert same_file(image, out)
    assert 4 * MiB <= read <= 8 * MiB, read
    assert os.stat(out).st_blocks * 512 < 64 * MiB  # and the copy is sparse too


# -- the wire, with a raw client: replies, REQ_ONE, pipelining, the per-connection cap -----------


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "the server closed the connection"
        buf += chunk
    return bytes(buf)


def option(sock: socket.socket, opt: int, data: bytes = b"") -> list[tuple[int, bytes]]:
    """Send an option (literal values of doc/proto.md); its replies up to the final one."""
    sock.sendall(struct.pack(">QII", 0x49484156454F5054, opt, len(data)) + data)
    replies = []
    while True:
        magic, _opt, rep, length = struct.unpack(">QIII", recv_exactly(sock, 20))
        assert magic == 0x0003E889045565A9
        replies.append((rep, recv_exactly(sock, length)))
        if rep == 1 or rep & 0x80000000:  # ACK, or an error
            return replies


def block_status_client(path: str, export: bytes) -> tuple[socket.socket, int]:
    """Connected with structured replies and base:allocation; returns (socket, context id)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    sock.connect(path)
    recv_exactly(sock, 18)  # greeting
    sock.sendall(struct.pack(">I", 3))  # C_FIXED_NEWSTYLE | C_NO_ZEROES
    assert option(sock, 8) == [(1, b"")]  # NBD_OPT_STRUCTURED_REPLY: ACK
    query = b"base:allocation"
    meta = struct.pack(">I", len(export)) + export + struct.pack(">II", 1, len(query)) + query
    [(rep, body), ack] = option(sock, 10, meta)  # NBD_OPT_SET_META_CONTEXT
    assert rep == 4 and body[4:] == query and ack == (1, b"")  # NBD_REP_META_CONTEXT, ACK
    context = struct.unpack(">I", body[:4])[0]
    go = struct.pack(">I", len(export)) + export + struct.pack(">H", 0)
    assert option(sock, 7, go)[-1][0] == 1  # NBD_OPT_GO: ACK
    return sock, context


def test_pipelined_block_status_replies_and_per_connection_cap(daemon, monkeypatch):
    running, peak, lock = [0], [0], threading.Lock()
    original = Backing.block_status

    def slow(self, *args, **kw):  # widens the window in which requests could overlap
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.005)
            return original(self, *args, **kw)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(Backing, "block_status", slow)
    sock, context = block_status_client(daemon.uri.split("socket=")[1], b"sparse")
    queries = {}
    for cookie in range(1, 41):
        offset = (cookie * 37 * MiB) % (IMAGE - 2 * MiB)
        req_one = cookie % 2 == 0
        queries[cookie] = (offset, req_one)
        sock.sendall(struct.pack(">IHHQQI", 0x25609513, 8 if req_one else 0, 7, cookie, offset,
                                 IMAGE - offset))  # fmt: skip
    model = model_seek(IMAGE_DATA, IMAGE)
    for _ in range(len(queries)):
        magic, flags, rtype, cookie, length = struct.unpack(">IHHQI", recv_exactly(sock, 20))
        assert (magic, flags, rtype) == (0x668E33EF, 1, 5)  # one BLOCK_STATUS chunk, DONE
        body = recv_exactly(sock, length)
        assert struct.unpack(">I", body[:4])[0] == context
        got = list(struct.iter_unpack(">II", body[4:]))
        offset, req_one = queries.pop(cookie)
        want = allocation_extents(model, offset, IMAGE - offset, 1 if req_one else MAX_EXTENTS)
        assert got == want, (cookie, offset, req_one)
    assert not queries
    sock.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 0, 0, 0))  # NBD_CMD_DISC
    sock.close()
    assert 1 <= peak[0] <= MAX_BLOCK_STATUS, peak  # without the cap: the whole pool (16)
    assert bytes_read(daemon) == 0
