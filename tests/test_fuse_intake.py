"""The FUSE worker's intake (``Intake`` in ``ioband.fuse.worker``): how pyfuse3's tasks wait for
/dev/fuse, here with a pipe in its place. A task that returns from the wait reads at once, with
no ``await`` between, as pyfuse3 does; the pipe is blocking, so a task sent to read an empty
queue would hang the test instead of passing."""

from __future__ import annotations

import asyncio
import os

import pytest

pyfuse3_asyncio = pytest.importorskip("pyfuse3.asyncio")

from ioband.fuse.worker import Intake  # noqa: E402


@pytest.fixture
def intake(monkeypatch):
    for name in ("wait_readable", "notify_closing", "Lock"):
        monkeypatch.setattr(pyfuse3_asyncio, name, getattr(pyfuse3_asyncio, name))
    it = Intake()
    it.install()
    return it


def test_each_request_is_taken_once_and_idle_tasks_wait(intake):
    async def go():
        r, w = os.pipe()
        taken: list[int] = []

        async def task(i: int) -> None:
            while True:
                await pyfuse3_asyncio.wait_readable(r)
                os.read(r, 1)  # one request, as pyfuse3 reads right after the wait
                taken.append(i)

        tasks = [asyncio.create_task(task(i)) for i in range(8)]
        await asyncio.sleep(0.05)
        assert taken == [] and len(intake._waiters) == 8  # all idle, none reading
        os.write(w, b"x")
        await asyncio.sleep(0.05)
        assert len(taken) == 1
        os.write(w, b"xyz" * 10)  # a burst: taken in a few turns, every byte once
        await asyncio.sleep(0.1)
        assert len(taken) == 31
        assert len(intake._waiters) == 8  # all idle again, behind one registration
        pyfuse3_asyncio.notify_closing(r)  # pyfuse3.terminate()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(e, pyfuse3_asyncio.ClosedResourceError) for e in done)
        os.close(r)
        os.close(w)

    asyncio.run(asyncio.wait_for(go(), 10))


def test_a_lone_request_wakes_few_tasks(intake):
    async def go():
        r, w = os.pipe()
        woken: list[int] = []
        wake = intake._wake

        def counting(n: int) -> None:
            before = len(intake._waiters)
            wake(n)
            woken.append(before - len(intake._waiters))

        intake._wake = counting

        async def task() -> None:
            await pyfuse3_asyncio.wait_readable(r)
            os.read(r, 1)

        tasks = [asyncio.create_task(task()) for _ in range(16)]
        await asyncio.sleep(0.05)
        os.write(w, b"x")
        await asyncio.sleep(0.05)
        # one task took the request and woke FAN_OUT others, which found nothing and went
        # back to waiting: 3 of the 16 woke, not all
        assert sum(t.done() for t in tasks) == 1
        assert sum(woken) == 1 + Intake.FAN_OUT
        assert len(intake._waiters) == 15
        pyfuse3_asyncio.notify_closing(r)
        await asyncio.gather(*tasks, return_exceptions=True)
        os.close(r)
        os.close(w)

    asyncio.run(asyncio.wait_for(go(), 10))
