"""Behaviour of the engine's request path: admission, holding, backpressure with hysteresis,
urgent and kernel-thread requests, the conductor's timer, and reconfiguration with requests
held (detach, policy switch, suspend/resume, removal)."""

from __future__ import annotations

from ioband.core.engine import Engine
from ioband.core.request import DONE, HELD, ISSUED, WAITING, Request, Submitter
from tests.core_driver import Driver

USER = Submitter(pid=10, uid=1000)
OTHER = Submitter(pid=20, uid=2000)


def read(owner=USER, size=4096):
    return Request(False, 0, size, owner)


def test_issued_at_once_when_idle_then_held_when_io_limit_is_full():
    e = Engine()
    d = Driver(e)
    dev = e.create("a", "0 100 ioband sda 1 4 4 none weight 0 :100")
    assert [d.submit(dev, read()) for _ in range(4)] == [True] * 4
    held = read()
    assert not d.submit(dev, held) and held.state == HELD
    d.complete(0)  # a completion kicks the conductor, which releases the held request
    assert held.state == ISSUED and held in d.inflight
    assert e.status("a") == "0 100 ioband 1 -1 5 1 40 0 0 0"  # 5 reads, 1 of them delayed


def test_conductor_kick_after_one_jiffy_when_nothing_is_in_flight():
    e = Engine()
    d = Driver(e)
    dev = e.create("a", "0 100 ioband sda 1 4 100 user weight 1 :100 1000:100")
    g = dev.groups[1000]
    g.token = 0  # out of tokens in the current epoch, nothing in flight anywhere
    req = read()
    assert not d.submit(dev, req) and req.state == HELD
    assert e.next_deadline() == d.now + 1
    d.tick(1)
    assert req.state == ISSUED


def test_submitter_sleeps_at_the_group_cap_and_wakes_only_when_its_queue_drains():
    e = Engine()
    d = Driver(e)
    # io_limit 4: c_limit of the only group = max(1, (4 * 100 / 100) / 4) = 1 per class
    dev = e.create("a", "0 100 ioband sda 1 4 4 none weight 0 :100")
    for _ in range(4):
        d.submit(dev, read())
    first = read()
    d.submit(dev, first)
    assert first.state == HELD
    second = read()
    d.submit(dev, second)
    assert second.state == WAITING  # 1 held >= c_limit 1: the submitter sleeps
    d.complete(0)  # releases `first`; the queue drained to 0, so the sleeper is re-evaluated
    assert first.state == ISSUED
    assert second.state == HELD
    d.drain()


def test_kernel_threads_skip_the_group_cap_but_not_the_device_hold_cap():
    e = Engine()
    d = Driver(e)
    dev = e.create("a", "0 100 ioband sda 1 4 4 none weight 0 :100")
    flusher = Submitter(pid=2, kthread=True)
    for _ in range(4):
        d.submit(dev, Request(True, 0, 4096, flusher))  # async writes fill the async class
    states = []
    for _ in range(5):
        r = Request(True, 0, 4096, flusher)
        d.submit(dev, r)
        states.append(r.state)
    # held up to io_limit (4) per class on the device, then the thread sleeps
    assert states == [HELD, HELD, HELD, HELD, WAITING]
    d.drain()


def test_urgent_requests_bypass_tokens_and_go_into_debt():
    e = Engine()
    d = Driver(e)
    dev = e.create("a", "0 100 ioband sda 1 4 4 user weight 1 :100 1000:100")
    g = dev.groups[1000]
    for _ in range(4):
        d.submit(dev, read(OTHER))  # fill the sync class with the default group's reads
    urgent = Request(True, 0, 4096, USER, urgent=True)
    d.submit(dev, urgent)
    assert urgent.state == ISSUED  # async class has room: released from the urgent list
    assert g.token < 1  # charged although the group had no tokens to spare
    d.drain()


def test_detach_hands_held_requests_and_sleepers_to_the_default_group():
    e = Engine()
    d = Driver(e)
    dev = e.create("a", "0 100 ioband sda 1 4 4 user weight 0 :100 1000:100")
    for _ in range(4):
        d.submit(dev, read(OTHER))
    held = [read() for _ in range(3)]
    for r in held:
        d.submit(dev, r)
    assert [r.state for r in held] == [HELD, WAITING, WAITING]
    d.call(e.message, "a", "detach 1000")
    assert all(r.group is dev.head for r in held)
    assert 1000 not in dev.groups
    d.drain()
    assert all(r.state == DONE for r in held)


def test_policy_switch_keeps_held_requests_and_weights_within_the_weight_family():
    e = Engine()
    d = Driver(e)
    dev = e.create("a", "0 100 ioband sda 1 4 4 user weight 0 :40 1000:30")
    for _ in range(6):
        d.submit(dev, read())
    d.call(e.message, "a", "policy weight-iosize")
    assert e.table("a") == "0 100 ioband sda 1 4 4 user weight-iosize 128 :40 1000:30"
    d.call(e.message, "a", "policy range-bw")
    assert e.table("a") == "0 100 ioband sda 1 4 4 user range-bw 16384 :0:0 1000:0:0"
    d.call(e.message, "a", "policy default")
    assert e.table("a") == "0 100 ioband sda 1 4 4 user default 16 :100 1000:100"
    d.drain()


def test_suspend_holds_new_requests_until_resume_and_flushes_what_is_held():
    e = Engine()
    d = Driver(e)
    dev = e.create("a", "0 100 ioband sda 1 4 4 none weight 0 :100")
    for _ in range(5):
        d.submit(dev, read())
    d.call(e.suspend, "a")
    late = read()
    d.submit(dev, late)
    assert late.state == WAITING
    while d.inflight:
        d.complete(0)
    assert e.quiesced("a") is False  # `late` still waits for resume
    assert all(r.state == DONE for r in d.all if r is not late)
    d.call(e.resume, "a")
    assert late.state == ISSUED
    d.drain()
    assert e.quiesced("a")


def test_remove_issues_everything_held_or_waiting_at_once():
    e = Engine()
    d = Driver(e)
    dev = e.create("a", "0 100 ioband sda 1 4 4 none weight 0 :100")
    for _ in range(8):
        d.submit(dev, read())
    assert any(r.state in (HELD, WAITING) for r in d.all)
    d.call(e.remove, "a")
    assert all(r.state == ISSUED for r in d.all)
    assert "a" not in e.devices and "1" not in e.device_groups
    d.drain()


def test_range_bw_over_max_submitters_sleep_until_the_period_ends():
    e = Engine(hz=1000)
    d = Driver(e)
    # max 4 KB/s = 8 sectors per second: one 4 KiB request reaches it
    dev = e.create("a", "0 100 ioband sda 1 4 32 none range-bw 0 :0:4")
    d.submit(dev, read())
    d.complete(0)
    r = read()
    d.submit(dev, r)
    assert r.state == WAITING
    assert e.next_deadline() == 1000 + 10  # period end + TIME_COMPENSATOR
    d.tick(1010)
    assert r.state in (ISSUED, HELD)
    d.drain()


def test_diskstats_counts_real_ticks():
    e = Engine(hz=1000)
    d = Driver(e)
    dev = e.create("a", "0 100 ioband sda 1 4 4 none weight 0 :100")
    d.submit(dev, read())
    d.now = 7
    d.complete(0)
    assert e.status("a", "diskstats") == "0 100 ioband 1 -1 1 0 8 7 0 0 0 0 0 7 7"
    d.call(e.message, "a", "reset")
    assert e.status("a", "diskstats") == "0 100 ioband 1 -1 0 0 0 0 0 0 0 0 0 0 0"


def test_devices_with_one_group_id_share_the_pool_and_keep_its_limits():
    e = Engine()
    e.create("a", "0 100 ioband sda1 share 8 64 none weight 0 :40")
    e.create("b", "0 100 ioband sda2 share 0 0 none weight 999 :10")
    assert e.table("b") == "0 100 ioband sda2 share 8 64 none weight 256 :10"
    assert e.devices["a"].dp is e.devices["b"].dp
    # 256 tokens per epoch split 40:10 across both devices
    assert [g.token_initial for g in e.devices["a"].dp.groups] == [204, 51]


def test_default_bucket_rounds_small_shares_down():
    e = Engine()
    groups = " ".join(f"{i}:1" for i in range(1, 301))
    dev = e.create("a", f"0 100 ioband sda 1 0 0 user weight 0 :11 {groups}")
    assert dev.head.token_initial == 768 * 11 // 311
    assert dev.groups[5].token_initial == 2  # floor(768 / 311), as the original
