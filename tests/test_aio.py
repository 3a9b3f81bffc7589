"""The AIO submitter (``ioband.aio``) against a real O_DIRECT file."""

from __future__ import annotations

import asyncio
import errno
import mmap
import os

import pytest

from ioband import aio
from tests.conftest import require_real

BLOCK = 4096


@pytest.fixture
def direct_file(tmp_path):
    require_real(aio.available(), "Linux AIO (x86_64)")
    path = tmp_path / "data"
    path.write_bytes(bytes(range(256)) * (64 * BLOCK // 256))
    try:
        fd = os.open(path, os.O_RDWR | os.O_DIRECT)
    except OSError as err:
        pytest.skip(f"no O_DIRECT on {tmp_path}: {err}")
    yield fd, path
    os.close(fd)


def _run(coro):
    return asyncio.run(coro)


def test_reads_and_writes_land_where_asked(direct_file):
    fd, path = direct_file

    async def go():
        ctx = aio.Aio(asyncio.get_running_loop(), depth=4)
        try:
            out = mmap.mmap(-1, BLOCK)
            out[:] = b"\xab" * BLOCK
            anchor_out, addr_out = aio.address(out)
            assert await ctx.submit(aio.PWRITE, fd, addr_out, BLOCK, 3 * BLOCK) == BLOCK
            # more requests than the context's depth: the rest wait their turn, all complete
            bufs = [mmap.mmap(-1, BLOCK) for _ in range(10)]
            anchors = [aio.address(b) for b in bufs]
            results = await asyncio.gather(*(
                ctx.submit(aio.PREAD, fd, a[1], BLOCK, i * BLOCK) for i, a in enumerate(anchors)
            ))  # fmt: skip
            assert results == [BLOCK] * 10
            assert bytes(bufs[3]) == b"\xab" * BLOCK
            assert bytes(bufs[0]) == bytes(range(256)) * (BLOCK // 256)
            # a short read at the end of the file
            tail = mmap.mmap(-1, BLOCK)
            _, addr = aio.address(tail)
            assert await ctx.submit(aio.PREAD, fd, addr, BLOCK, 64 * BLOCK) == 0
            del anchor_out, anchors
        finally:
            ctx.close()

    _run(go())
    with open(path, "rb") as f:
        f.seek(3 * BLOCK)
        assert f.read(BLOCK) == b"\xab" * BLOCK


def test_errors_come_back_as_oserror_and_spare_the_others(direct_file):
    fd, _ = direct_file

    async def go():
        ctx = aio.Aio(asyncio.get_running_loop(), depth=8)
        try:
            buf = mmap.mmap(-1, BLOCK)
            _, addr = aio.address(buf)
            bad = ctx.submit(aio.PREAD, 987654, addr, BLOCK, 0)  # no such descriptor
            misaligned = ctx.submit(aio.PREAD, fd, addr + 1, BLOCK, 0)  # O_DIRECT refuses it
            good = ctx.submit(aio.PREAD, fd, addr, BLOCK, 0)
            outcome = await asyncio.gather(bad, misaligned, good, return_exceptions=True)
            assert isinstance(outcome[0], OSError) and outcome[0].errno == errno.EBADF
            assert isinstance(outcome[1], OSError) and outcome[1].errno == errno.EINVAL
            assert outcome[2] == BLOCK
        finally:
            ctx.close()

    _run(go())


def test_a_failing_callback_does_not_strand_the_others(direct_file, caplog):
    fd, _ = direct_file

    async def go():
        ctx = aio.Aio(asyncio.get_running_loop(), depth=8)
        try:
            bufs = [mmap.mmap(-1, BLOCK) for _ in range(4)]
            anchors = [aio.address(b) for b in bufs]
            results: list[int] = []
            everyone = asyncio.get_running_loop().create_future()

            def done(res: int) -> None:
                results.append(res)
                if len(results) == 1:
                    raise RuntimeError("a bug in one request's completion")
                if len(results) == 4:
                    everyone.set_result(None)

            for i, (_, addr) in enumerate(anchors):
                ctx.start(aio.PREAD, fd, addr, BLOCK, i * BLOCK, done)
            await asyncio.wait_for(everyone, 5)
            assert results == [BLOCK] * 4 and ctx.in_flight == 0
            del anchors
        finally:
            ctx.close()

    _run(go())
    assert "AIO completion callback failed" in caplog.text
