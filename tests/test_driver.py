"""The core Driver: one way in, one way out, one pump per batch, re-entrant completions."""

from __future__ import annotations

from ioband.core.driver import Driver
from ioband.core.engine import Engine
from ioband.core.request import DONE, HELD, ISSUED, Request, Submitter

TABLE = "0 2048 ioband /dev/sda 1 1 {limit} user weight 0 :100 1:100"


class CountingEngine:
    """An engine that counts how often its outboxes are looked at (the pumps). A wrapper, not
    a subclass: the compiled Engine cannot be subclassed by interpreted code."""

    def __init__(self) -> None:
        self.engine = Engine()
        self.pumps = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.engine, name)

    def has_output(self) -> bool:
        self.pumps += 1
        return self.engine.has_output()


def setup(limit: int = 2):
    engine = CountingEngine()
    dev = engine.create("ioband1", TABLE.format(limit=limit))
    out: list[Request] = []
    deadlines: list[int] = []
    driver = Driver(engine, out.append, deadline=deadlines.append)
    return engine, dev, driver, out, deadlines


def req(uid: int = 1) -> Request:
    return Request(False, 0, 4096, Submitter(pid=uid, uid=uid))


def test_issued_at_once_and_released_later_come_out_the_same_way():
    _engine, dev, driver, out, _ = setup(limit=2)
    first, second, third = req(), req(), req()
    for r in (first, second, third):
        driver.submit(dev, r)
    assert out == [first, second]  # the window (io_limit 2) has room for two
    assert third.state == HELD
    driver.complete(out.pop(0))
    assert out == [second, third]  # released by the completion, out through the same callback
    assert first.state == DONE and third.state == ISSUED


def test_a_batch_pumps_once_at_its_end():
    engine, dev, driver, out, _ = setup(limit=2)
    held = [req() for _ in range(6)]
    for r in held:
        driver.submit(dev, r)
    engine.pumps = 0
    with driver:
        driver.complete(out.pop(0))
        driver.complete(out.pop(0))
        assert out == []  # what the completions released waits for the end of the batch
        assert engine.pumps == 0
    assert engine.pumps >= 1
    assert out == held[2:4]


def test_every_call_of_a_batch_reads_the_clock():
    """A batch may last longer than a jiffy: what falls due during it must not wait."""
    engine = Engine()
    dev = engine.create("ioband1", TABLE.format(limit=4))
    ticks = iter(range(7, 100))
    driver = Driver(engine, lambda r: None, clock=lambda: next(ticks))
    with driver:
        for _ in range(3):
            driver.submit(dev, r := req())
            assert r.submit_time == driver.now
    assert engine.now == 9


def test_a_completion_inside_issue_is_pumped_by_the_running_pump():
    """A front end that completes at once (a page-cached read) re-enters the driver from
    ``issue``: nothing recurses, nothing is lost, every request is issued once."""
    engine = Engine()
    dev = engine.create("ioband1", TABLE.format(limit=1))
    seen: list[Request] = []
    driver: Driver

    def perform_at_once(r: Request) -> None:
        seen.append(r)
        driver.complete(r)

    driver = Driver(engine, perform_at_once)
    reqs = [req() for _ in range(20)]
    with driver:
        for r in reqs:
            driver.submit(dev, r)
    for _ in range(1000):  # what the tokens hold back goes out as time passes
        if len(seen) == len(reqs):
            break
        driver.now += 1
        driver.advance()
    assert seen == reqs
    assert all(r.state == DONE for r in reqs)


def test_bypass_goes_out_and_its_completion_is_not_the_engines():
    _engine, _dev, driver, out, _ = setup()
    r = req()
    driver.bypass(r)
    assert out == [r] and r.state is None
    driver.complete(r)  # not the engine's: no "not in flight" error
    assert r.state is None


def test_the_next_deadline_is_reported_after_a_pump():
    engine, _dev, driver, _out, deadlines = setup()
    engine.set_timer(5, lambda: None)
    driver.pump()
    assert deadlines == [5]
    driver.now = 5
    driver.advance()
    assert engine.next_deadline() is None
