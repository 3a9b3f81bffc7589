"""Spec conformance: ``dmsetup message`` words, their effects and their refusals.

References: dm-ioband-interface.md §3 (messages, documented examples), §1.2 (device-group wide
settings); dm-ioband-algorithms.md §3.2-3.3 (token bucket, shares), §5.3 (range-bw settings), §8.2
(message validation); PRODUCT.md §3 (settled deviations: user-set token/carryover survive,
working min-bw/max-bw, max 0 = no cap, weights survive weight<->weight-iosize<->default switches).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ioband.core.cint import INT_MAX
from ioband.core.engine import BackingInfo, Engine
from ioband.core.grammar import UNRECOGNISED, Message, parse_message
from ioband.core.request import Request, Submitter
from ioband.errors import IobandError
from tests.spec_helpers import raises, snapshot, table

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def show_device(e: Engine, name: str = "ioband1") -> str:
    """The blkio.devices policy suffix (§6.3): `` token=<bucket> carryover=<n>``."""
    return e.device(name).dp.policy.show_device()


@pytest.fixture
def e() -> Engine:
    """§7.1 "Getting started": ioband1 :40 and ioband2 :10 in device group 1.

    io_limit is pinned at 192, the value dm-ioband derives for ``0`` from a file's queue
    (nr_requests 128): the documented examples show it, and ioband's ``io_limit 0`` now means an
    adaptive window, shown as ``0`` (issue 12)."""
    e = Engine(hz=1000)
    e.create("ioband1", table("sda1 1 0 192 none weight 0 :40"))
    e.create("ioband2", table("sda2 1 0 192 none weight 0 :10"))
    return e


@pytest.fixture
def rb() -> Engine:
    """A range-bw device group with one attached group (1000) on ioband1 (io_limit pinned at
    192, dm-ioband's derived value, as in ``e``)."""
    e = Engine(hz=1000)
    e.create("ioband1", table("sda1 1 0 192 user range-bw 0 :0:0 1000:0:0"))
    e.create("ioband2", table("sda2 1 0 192 none range-bw 0 :0:0"))
    return e


# =============================================================================================
# Word counts and unknown words (§3 general rules)
# =============================================================================================
@pytest.mark.parametrize(
    ("words", "message"),
    [
        ("reset", Message("reset", None)),
        ("  reset \n", Message("reset", None)),
        (["reset"], Message("reset", None)),
        ("weight 40", Message("weight", "40")),
        ("weight\t1000:30\n", Message("weight", "1000:30")),
        (["range-bw", "-1:5000:6000"], Message("range-bw", "-1:5000:6000")),
        ("min-bw 5", Message("min-bw", "5")),
        ("max-bw 5", Message("max-bw", "5")),
    ],
)
def test_parse_message_word_counts(words, message):
    assert parse_message(words) == message


@pytest.mark.parametrize(
    "words",
    ["", "   ", [], "type", "attach", "weight", "policy weight 256", "weight 1 2",
     "io_limit 1 2 3", "reset reset reset", "foo 1", "debug 1", "Weight 40", "foo", "1 2"],
)  # fmt: skip
def test_unrecognised_messages(words):
    err = raises("EINVAL", UNRECOGNISED, parse_message, words)
    assert UNRECOGNISED == "Unrecognised band message received."
    assert len(str(err)) > len(UNRECOGNISED)  # followed by detail


@pytest.mark.parametrize("words", ["reset 1", "reset all", ["reset", ""]])
def test_reset_with_an_argument_is_unrecognised(words):
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 none weight"))
    req = Request(False, 0, 4096)
    e.submit(e.device("ioband1"), req, 0)
    before = e.status("ioband1")
    with pytest.raises(IobandError) as info:
        e.message("ioband1", words)
    assert info.value.errno_name == "EINVAL"
    assert str(info.value).startswith(UNRECOGNISED)
    assert e.status("ioband1") == before


def test_message_to_unknown_device_is_enodev(e):
    raises("ENODEV", "No such device", e.message, "ioband9", "reset")


# =============================================================================================
# type
# =============================================================================================
@pytest.mark.parametrize(
    "gtype", ["none", "user", "uid", "gid", "pid", "pgrp", "cgroup", "node", "cpuset", "client"]
)
def test_type_sets_the_group_type(e, gtype):
    e.message("ioband1", f"type {gtype}")
    assert e.table("ioband1") == table(f"sda1 1 4 192 {gtype} weight 768 :40")
    assert e.table("ioband2").split()[7] == "none"  # per ioband device, not per device group


@pytest.mark.parametrize("value", ["foo", "USER", "0", "-1:user"])
def test_type_unknown_name_is_einval(e, value):
    err = raises("EINVAL", "type", e.message, "ioband1", f"type {value}")
    assert repr(value) in str(err)


def test_type_unknown_name_uses_the_originals_wording(e):
    err = raises("EINVAL", "type", e.message, "ioband1", "type foo")
    assert "foo isn't supported." in str(err)


@pytest.mark.parametrize("value", ["uid", "user", "none", "foo"])
def test_type_with_attached_groups(e, value):
    e.message("ioband1", "type user")
    e.message("ioband1", "attach 1000")
    before = snapshot(e)
    expected = "EINVAL" if value == "foo" else "EBUSY"  # unknown name is checked first
    raises(expected, "type", e.message, "ioband1", f"type {value}")
    assert snapshot(e) == before


def test_type_can_change_after_detaching_all(e):
    e.message("ioband1", "type user")
    e.message("ioband1", "attach 1000")
    e.message("ioband1", "detach 1000")
    e.message("ioband1", "type pid")
    assert e.table("ioband1") == table("sda1 1 4 192 pid weight 768 :40")


# =============================================================================================
# attach / detach
# =============================================================================================
def test_attach_creates_group_with_default_weight(e):
    e.message("ioband1", "type user")
    e.message("ioband1", "attach 1000")
    e.message("ioband1", "attach 0x10")  # base 0
    e.message("ioband1", "attach 010")
    e.message("ioband1", "attach 0")
    e.message("ioband1", f"attach {INT_MAX}")
    assert e.table("ioband1") == table(
        f"sda1 1 4 192 user weight 768 :40 0:100 8:100 16:100 1000:100 {INT_MAX}:100"
    )
    assert e.table("ioband2") == table("sda2 1 4 192 none weight 768 :10")


def test_attach_under_range_bw_creates_group_0_0(rb):
    rb.message("ioband1", "attach 7")
    assert rb.table("ioband1") == table("sda1 1 4 192 user range-bw 12288 :0:0 7:0:0 1000:0:0")


def test_attach_group_shares_tokens_across_the_device_group(e):
    e.message("ioband1", "type user")
    e.message("ioband1", "attach 1000")
    tokens = {(g.device.name, g.id): g.token_initial for g in e.device("ioband1").dp.groups}
    assert tokens == {("ioband1", -1): 768 * 40 // 150, ("ioband1", 1000): 768 * 100 // 150,
                      ("ioband2", -1): 768 * 10 // 150}  # fmt: skip


@pytest.mark.parametrize(
    ("value", "errno_name", "prefix"),
    [
        ("abc", "EINVAL", "attach"),
        ("-1", "EINVAL", "attach"),
        ("-5", "EINVAL", "attach"),
        ("08", "EINVAL", "attach"),
        ("1000:50", "EINVAL", "attach"),
        (":1", "EINVAL", "attach"),
        ("1000", "EEXIST", "attach: id=1000 already exists."),
        ("0x3e8", "EEXIST", "attach: id=1000 already exists."),
    ],
)
def test_attach_errors(e, value, errno_name, prefix):
    e.message("ioband1", "type user")
    e.message("ioband1", "attach 1000")
    before = snapshot(e)
    raises(errno_name, prefix, e.message, "ioband1", f"attach {value}")
    assert snapshot(e) == before


def test_attach_under_type_none_is_einval(e):
    before = snapshot(e)
    raises("EINVAL", "attach: no ioband group type is specified", e.message, "ioband1",
           "attach 1000")  # fmt: skip
    assert snapshot(e) == before


def test_attach_id_above_int_max_is_einval(e):
    e.message("ioband1", "type user")
    before = snapshot(e)
    raises("EINVAL", "attach", e.message, "ioband1", "attach 2147483648")
    assert snapshot(e) == before


def test_attach_ids_are_per_device(e):
    e.message("ioband1", "type user")
    e.message("ioband2", "type user")
    e.message("ioband1", "attach 1000")
    e.message("ioband2", "attach 1000")  # same id on another device of the group: fine
    assert e.table("ioband2") == table("sda2 1 4 192 user weight 768 :10 1000:100")


def test_detach_removes_the_group(e):
    e.message("ioband1", "type user")
    for gid in (1000, 2000):
        e.message("ioband1", f"attach {gid}")
    e.message("ioband1", "weight 1000:30")
    e.message("ioband1", "detach 0x3e8")
    assert e.table("ioband1") == table("sda1 1 4 192 user weight 768 :40 2000:100")
    e.message("ioband1", "attach 1000")  # re-attached: default weight again
    assert e.table("ioband1") == table("sda1 1 4 192 user weight 768 :40 1000:100 2000:100")


@pytest.mark.parametrize(
    ("value", "prefix"),
    [("9999", "detach: id=9999 not found."), ("-1", "detach"), ("abc", "detach"),
     ("1000:1", "detach"), ("08", "detach")],
)  # fmt: skip
def test_detach_errors(e, value, prefix):
    e.message("ioband1", "type user")
    e.message("ioband1", "attach 1000")
    e.message("ioband2", "type user")
    e.message("ioband2", "attach 9999")  # exists on the other device only
    before = snapshot(e)
    raises("EINVAL", prefix, e.message, "ioband1", f"detach {value}")
    assert snapshot(e) == before


# =============================================================================================
# policy
# =============================================================================================
def test_policy_same_name_is_a_no_op(e):
    e.message("ioband1", "token 100")
    e.message("ioband1", "carryover 3")
    before = snapshot(e)
    e.message("ioband1", "policy weight")
    assert snapshot(e) == before


def test_policy_switch_between_weight_policies_keeps_weights(e):
    e.message("ioband1", "type user")
    e.message("ioband1", "attach 1000")
    e.message("ioband1", "weight 1000:30")
    e.message("ioband1", "token 100")
    e.message("ioband1", "policy weight-iosize")
    assert e.table("ioband1") == table("sda1 1 4 192 user weight-iosize 6144 :40 1000:30")
    assert e.table("ioband2") == table("sda2 1 4 192 none weight-iosize 6144 :10")
    assert show_device(e) == " token=6144 carryover=2"
    e.message("ioband1", "policy default")
    assert e.table("ioband1") == table("sda1 1 4 192 user default 768 :40 1000:30")
    e.message("ioband2", "policy weight")  # device-group wide, from either member
    assert e.table("ioband1") == table("sda1 1 4 192 user weight 768 :40 1000:30")


def test_policy_switch_to_range_bw_and_back_resets_parameters(e):
    e.message("ioband1", "type user")
    e.message("ioband1", "attach 1000")
    e.message("ioband1", "weight 1000:30")
    e.message("ioband1", "policy range-bw")
    assert e.table("ioband1") == table("sda1 1 4 192 user range-bw 12288 :0:0 1000:0:0")
    assert e.table("ioband2") == table("sda2 1 4 192 none range-bw 12288 :0:0")
    e.message("ioband1", "range-bw 1000:10:20")
    e.message("ioband1", "policy weight")
    assert e.table("ioband1") == table("sda1 1 4 192 user weight 768 :100 1000:100")
    assert e.table("ioband2") == table("sda2 1 4 192 none weight 768 :100")


def test_policy_switch_uses_default_token_base_at_current_io_limit(e):
    e.message("ioband1", "io_limit 128")
    e.message("ioband1", "policy range-bw")
    assert e.table("ioband1").split()[-2:] == ["16384", ":0:0"]
    e.message("ioband1", "policy weight-iosize")
    assert show_device(e) == " token=4096 carryover=4"


@pytest.mark.parametrize("value", ["foo", "Weight", "0", "range_bw"])
def test_policy_unknown_is_einval(e, value):
    before = snapshot(e)
    raises("EINVAL", "policy", e.message, "ioband1", f"policy {value}")
    assert snapshot(e) == before


def test_policy_cannot_take_a_token_base(e):
    before = snapshot(e)
    raises("EINVAL", UNRECOGNISED, e.message, "ioband1", "policy weight 256")
    assert snapshot(e) == before


# =============================================================================================
# io_throttle / io_limit
# =============================================================================================
@pytest.mark.parametrize(("value", "shown"), [("16", "16"), ("0x10", "16"), ("010", "8"),
                                              ("0", "4"), ("192", "192"), ("1", "1")])  # fmt: skip
def test_io_throttle_sets_device_group_value(e, value, shown):
    e.message("ioband1", f"io_throttle {value}")
    assert e.table("ioband1").split()[5:7] == [shown, "192"]
    assert e.table("ioband2").split()[5:7] == [shown, "192"]


@pytest.mark.parametrize("value", ["193", "32767", "32768", "-1", "abc", "08", "1:2"])
def test_io_throttle_errors(e, value):
    before = snapshot(e)
    raises("EINVAL", "Invalid io_throttle", e.message, "ioband1", f"io_throttle {value}")
    assert snapshot(e) == before


def test_io_throttle_0_means_4_and_is_checked_against_io_limit():
    e = Engine()
    e.create("ioband1", table("sda1 1 1 2 none weight"))
    raises("EINVAL", "Invalid io_throttle", e.message, "ioband1", "io_throttle 0")
    assert e.table("ioband1").split()[5:7] == ["1", "2"]


@pytest.mark.parametrize(
    ("value", "limit", "token", "carryover"),
    [("128", 128, 512, 4), ("0x80", 128, 512, 4), ("0", 192, 768, 2), ("4", 4, 16, 128),
     ("32767", 32767, 131068, 1), ("100", 100, 400, 5)],
)  # fmt: skip
def test_io_limit_recomputes_defaulted_token_and_carryover(e, value, limit, token, carryover):
    e.message("ioband1", f"io_limit {value}")
    shown = 0 if value == "0" else limit  # io_limit 0: adaptive, shown as 0 (issue 12)
    assert e.table("ioband1") == table(f"sda1 1 4 {shown} none weight {token} :40")
    assert e.table("ioband2") == table(f"sda2 1 4 {shown} none weight {token} :10")
    assert e.device("ioband1").dp.io_limit == limit
    assert show_device(e) == f" token={token} carryover={carryover}"


def test_io_limit_0_uses_the_device_groups_queue_size():
    e = Engine(resolver=lambda dev: BackingInfo(dev, 64))
    e.create("ioband1", table("sda1 1 0 50 none weight"))
    e.message("ioband1", "io_limit 0")
    assert e.device("ioband1").dp.io_limit == 96  # 3 * 64 / 2
    assert e.table("ioband1").split()[5:7] == ["4", "0"]  # adaptive, shown as 0 (issue 12)
    assert show_device(e) == " token=384 carryover=5"  # the token default follows 96


def test_io_limit_keeps_a_user_set_token_and_carryover(e):
    """PRODUCT.md §3: a value the user set survives; only defaulted values are recomputed."""
    e.message("ioband1", "token 256")
    assert show_device(e) == " token=256 carryover=8"  # defaulted carryover follows the bucket
    e.message("ioband1", "io_limit 100")
    assert e.table("ioband1") == table("sda1 1 4 100 none weight 256 :40")
    assert show_device(e) == " token=256 carryover=8"
    e.message("ioband1", "carryover 5")
    e.message("ioband1", "io_limit 0")
    assert e.table("ioband1") == table("sda1 1 4 0 none weight 256 :40")  # adaptive (issue 12)
    assert e.device("ioband1").dp.io_limit == 192
    assert show_device(e) == " token=256 carryover=5"
    e.message("ioband1", "token 0")  # back to the default bucket; the set carryover stays
    assert show_device(e) == " token=768 carryover=5"
    e.message("ioband1", "io_limit 128")
    assert show_device(e) == " token=512 carryover=5"


def test_io_limit_keeps_a_token_base_given_in_the_table():
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 none weight 2048 :40"))
    e.message("ioband1", "io_limit 64")
    assert e.table("ioband1") == table("sda1 1 4 64 none weight 2048 :40")
    assert show_device(e) == " token=2048 carryover=1"


def test_io_limit_keeps_a_user_set_carryover_alone(e):
    e.message("ioband1", "carryover 7")
    e.message("ioband1", "io_limit 128")
    assert show_device(e) == " token=512 carryover=7"


@pytest.mark.parametrize("value", ["3", "32768", "-1", "abc", "09", "1:2"])
def test_io_limit_errors(e, value):
    before = snapshot(e)
    raises("EINVAL", "Invalid io_limit", e.message, "ioband1", f"io_limit {value}")
    assert snapshot(e) == before


def test_io_limit_below_io_throttle_is_einval(e):
    e.message("ioband1", "io_throttle 100")
    before = snapshot(e)
    raises("EINVAL", "Invalid io_limit", e.message, "ioband1", "io_limit 99")
    assert snapshot(e) == before
    e.message("ioband1", "io_limit 100")  # equal is fine
    assert e.table("ioband1").split()[5:7] == ["100", "100"]


def test_io_limit_0_whose_default_is_below_io_throttle_is_einval():
    e = Engine()
    e.create("ioband1", table("sda1 1 300 0 none weight"))
    raises("EINVAL", "Invalid io_limit", e.message, "ioband1", "io_limit 0")
    assert e.device("ioband1").dp.io_limit == 300  # the created default, raised to io_throttle
    assert e.table("ioband1").split()[5:7] == ["300", "0"]  # adaptive, shown as 0 (issue 12)


def test_io_limit_0_without_a_queue_is_enxio():
    e = Engine(resolver=lambda dev: BackingInfo("8:18", None))
    e.create("ioband1", table("sda1 1 0 10 none weight"))
    before = snapshot(e)
    raises("ENXIO", "Can't get queue size", e.message, "ioband1", "io_limit 0")
    assert snapshot(e) == before
    e.message("ioband1", "io_limit 20")
    assert e.table("ioband1") == table("8:18 1 4 20 none weight 80 :100")


def test_io_limit_under_range_bw_keeps_displayed_token_and_recomputes_caps(rb):
    rb.message("ioband1", "range-bw :5000:6000")
    rb.message("ioband1", "range-bw 1000:900:1000")
    rb.message("ioband1", "io_limit 96")
    assert rb.table("ioband1") == table("sda1 1 4 96 user range-bw 12288 :5000:6000 1000:900:1000")
    caps = [g.limit for g in rb.device("ioband1").all_groups()]
    assert caps == [96 * 2 * 5000 // 5900 // 4 + 1, 96 * 2 * 900 // 5900 // 4 + 1]


def test_io_limit_shrinking_the_bucket_keeps_the_engine_working():
    e = Engine()
    dev = e.create("x", table("sda 1 1 2 user weight 0 :40 1000:30"))
    e.create("y", table("sdb 1 0 0 none weight"))
    reqs: list[Request] = []

    def submit(uids, now):
        for i, uid in enumerate(uids):
            req = Request(bool(i % 2), 0, 4096, Submitter(uid=uid))
            e.submit(dev, req, now)
            reqs.append(req)

    def complete(now):
        for req in reqs:
            if req.state == "issued":
                e.complete(req, now)
        e.take_issued()
        e.take_admitted()

    submit([0, 1000, 5], 1)
    complete(1)
    e.message("x", "io_limit 1")  # bucket 8 -> 4 after an epoch with 8 tokens left over
    submit([0, 1000], 2)
    submit([0, 1000], 3)
    for now in range(3, 40):
        complete(now)
        e.advance(now)
    assert all(req.state == "done" for req in reqs)


# =============================================================================================
# weight
# =============================================================================================
@pytest.mark.parametrize(
    ("value", "head", "group"),
    [
        ("40", 40, 100), (":41", 41, 100), ("-1:42", 42, 100), ("=43", 43, 100), (",44", 44, 100),
        ("1000:30", 40, 30), ("1000=31", 40, 31), ("1000,32", 40, 32), ("0x3e8:33", 40, 33),
        ("1000:0x20", 40, 32), ("1000:010", 40, 8), ("1", 1, 100), ("32767", 32767, 100),
    ],
)  # fmt: skip
def test_weight_sets_one_groups_weight(e, value, head, group):
    e.message("ioband1", "type user")
    e.message("ioband1", "attach 1000")
    e.message("ioband1", f"weight {value}")
    assert e.table("ioband1") == table(f"sda1 1 4 192 user weight 768 :{head} 1000:{group}")
    assert e.table("ioband2") == table("sda2 1 4 192 none weight 768 :10")


def test_weight_redistributes_tokens_across_the_device_group(e):
    """algorithms §3.3 example: weights 80 and 20 at io_limit 192 -> tokens 614/153, caps 38/9."""
    e.message("ioband1", "weight 80")
    e.message("ioband2", "weight 20")
    groups = e.device("ioband1").dp.groups
    assert [(g.token_initial, g.limit) for g in groups] == [(614, 38), (153, 9)]
    # "weight 40/10 behaves the same as 4/1"
    e.message("ioband1", "weight 4")
    e.message("ioband2", "weight 1")
    assert [(g.token_initial, g.limit) for g in groups] == [(614, 38), (153, 9)]


def test_weight_under_weight_iosize(e):
    e.message("ioband1", "policy weight-iosize")
    e.message("ioband1", "weight 30")
    assert e.table("ioband1") == table("sda1 1 4 192 none weight-iosize 6144 :30")
    tokens = [g.token_initial for g in e.device("ioband1").dp.groups]
    assert tokens == [6144 * 30 // 40, 6144 * 10 // 40]


@pytest.mark.parametrize(
    ("value", "prefix"),
    [
        ("0", "Invalid weight"), ("-1", "Invalid weight"), ("32768", "Invalid weight"),
        ("abc", "Invalid weight"), ("08", "Invalid weight"), ("1000:0", "Invalid weight"),
        ("1000:", "Invalid weight"), (":", "Invalid weight"), ("1000:1:2", "Invalid weight"),
        ("abc:30", "Invalid weight"), ("-:30", "Invalid weight"), ("9999:30", "weight: id=9999"),
        ("-2:30", "weight: id=-2"), ("2147483648:30", "weight: id=2147483648"),
    ],
)  # fmt: skip
def test_weight_errors(e, value, prefix):
    e.message("ioband1", "type user")
    e.message("ioband1", "attach 1000")
    e.message("ioband2", "type user")
    e.message("ioband2", "attach 9999")  # on the other device only: not found here
    before = snapshot(e)
    raises("EINVAL", prefix, e.message, "ioband1", f"weight {value}")
    assert snapshot(e) == before


def test_weight_under_range_bw_is_einval(rb):
    before = snapshot(rb)
    for value in ("40", "1000:40", ":40"):
        raises("EINVAL", "weight", rb.message, "ioband1", f"weight {value}")
    assert snapshot(rb) == before


# =============================================================================================
# token / carryover
# =============================================================================================
@pytest.mark.parametrize(
    ("value", "token", "carryover"),
    [("256", 256, 8), ("0x100", 256, 8), ("0", 768, 2), ("1", 1, 2048), ("2048", 2048, 1),
     (str(INT_MAX), INT_MAX, 1), ("1000:300", 300, 6), ("-1:300", 300, 6), (":300", 300, 6)],
)  # fmt: skip
def test_token_sets_the_device_group_bucket(e, value, token, carryover):
    e.message("ioband1", "type user")
    e.message("ioband1", "attach 1000")
    e.message("ioband1", f"token {value}")
    assert e.table("ioband1") == table(f"sda1 1 4 192 user weight {token} :40 1000:100")
    assert e.table("ioband2") == table(f"sda2 1 4 192 none weight {token} :10")
    assert show_device(e) == f" token={token} carryover={carryover}"
    assert [g.token_initial for g in e.device("ioband1").dp.groups] == [
        max(1, token * w // 150)
        for w in (40, 10, 100)  # creation order
    ]


def test_token_under_weight_iosize(e):
    e.message("ioband1", "policy weight-iosize")
    e.message("ioband1", "token 256")
    assert e.table("ioband1") == table("sda1 1 4 192 none weight-iosize 256 :40")
    assert show_device(e) == f" token=256 carryover={16384 // 256}"


def test_token_keeps_a_user_set_carryover(e):
    """PRODUCT.md §3 (the original reset carryover to its default on every token message)."""
    e.message("ioband1", "carryover 3")
    e.message("ioband1", "token 256")
    assert show_device(e) == " token=256 carryover=3"


@pytest.mark.parametrize(
    ("value", "prefix"),
    [("-1", "Invalid token"), ("2147483648", "Invalid token"), ("abc", "Invalid token"),
     ("08", "Invalid token"), ("9999:100", "token: id=9999"), ("1000:", "Invalid token"),
     ("abc:1", "Invalid token")],
)  # fmt: skip
def test_token_errors(e, value, prefix):
    e.message("ioband1", "type user")
    e.message("ioband1", "attach 1000")
    before = snapshot(e)
    raises("EINVAL", prefix, e.message, "ioband1", f"token {value}")
    assert snapshot(e) == before


@pytest.mark.parametrize(
    ("value", "carryover"), [("2", 2), ("5", 5), ("0x10", 16), ("0", 2), ("1", 1),
                             (str(INT_MAX), INT_MAX), ("-1:4", 4)]
)  # fmt: skip
def test_carryover_sets_the_device_group_value(e, value, carryover):
    e.message("ioband1", f"carryover {value}")
    assert show_device(e) == f" token=768 carryover={carryover}"
    assert show_device(e, "ioband2") == f" token=768 carryover={carryover}"
    assert e.table("ioband1") == table("sda1 1 4 192 none weight 768 :40")  # not in the table


def test_carryover_keeps_a_user_set_token(e):
    e.message("ioband1", "token 100")
    e.message("ioband1", "carryover 3")
    assert show_device(e) == " token=100 carryover=3"
    e.message("ioband1", "carryover 0")
    assert show_device(e) == " token=100 carryover=20"


@pytest.mark.parametrize("value", ["-1", "2147483648", "abc", "09", "9999:1"])
def test_carryover_errors(e, value):
    before = snapshot(e)
    with pytest.raises(IobandError) as info:
        e.message("ioband1", f"carryover {value}")
    assert info.value.errno_name == "EINVAL"
    assert "carryover" in str(info.value)
    assert snapshot(e) == before


@pytest.mark.parametrize("word", ["token", "carryover"])
def test_token_and_carryover_under_range_bw_are_einval(rb, word):
    before = snapshot(rb)
    raises("EINVAL", word, rb.message, "ioband1", f"{word} 256")
    assert snapshot(rb) == before


# =============================================================================================
# range-bw / min-bw / max-bw
# =============================================================================================
@pytest.mark.parametrize(
    ("value", "head", "group"),
    [
        ("-1:5000:6000", "5000:6000", "0:0"),
        (":5000:6000", "5000:6000", "0:0"),
        ("=5000,6000", "5000:6000", "0:0"),
        ("1000:10000:12000", "0:0", "10000:12000"),
        ("1000=10,20", "0:0", "10:20"),
        ("0x3e8:0x10:0x20", "0:0", "16:32"),
        (":0:6000", "0:6000", "0:0"),  # max-bw alone
        (":5000:0", "5000:0", "0:0"),  # PRODUCT.md §3: max 0 = no cap
        (":0:0", "0:0", "0:0"),
        (":1073741823:1073741823", "1073741823:1073741823", "0:0"),
    ],
)
def test_range_bw_sets_min_and_max(rb, value, head, group):
    rb.message("ioband1", f"range-bw {value}")
    assert rb.table("ioband1") == table(f"sda1 1 4 192 user range-bw 12288 :{head} 1000:{group}")
    assert rb.table("ioband2") == table("sda2 1 4 192 none range-bw 12288 :0:0")


def test_range_bw_settings_example(rb):
    """algorithms §5.3 example (HZ 1000, io_limit 192): A 5000:6000, B 900:1000, default 0:0."""
    rb.message("ioband1", "attach 2000")
    rb.message("ioband1", "range-bw 1000:5000:6000")
    rb.message("ioband1", "range-bw 2000:900:1000")
    rb.remove("ioband2")
    got = [(g.id, g.min_bw_token, g.max_bw_token, g.limit, g.time_slice)
           for g in rb.device("ioband1").all_groups()]  # fmt: skip
    assert got == [(-1, 0, 0, 1, 100), (1000, 10000, 12000, 82, 193), (2000, 1800, 2000, 15, 116)]


@pytest.mark.parametrize(
    ("value", "prefix"),
    [
        ("5000:6000", "range-bw: id=5000"),  # MIN:MAX without an id: group MIN
        ("1000:6000", "Invalid range-bw"),  # group 1000 with the single value 6000
        (":6000:5000", "Invalid range-bw"),
        (":5000", "Invalid range-bw"),
        ("5000", "Invalid range-bw"),
        (":-1:5", "Invalid range-bw"),
        (":5:-1", "Invalid range-bw"),
        (":0:1073741824", "Invalid range-bw"),
        (":1:2:3", "Invalid range-bw"),
        (":08:9", "Invalid range-bw"),
        (":a:b", "Invalid range-bw"),
        ("9999:1:2", "range-bw: id=9999"),
        ("abc:1:2", "Invalid range-bw"),
    ],
)
def test_range_bw_errors(rb, value, prefix):
    rb.message("ioband1", "range-bw 1000:10:20")
    before = snapshot(rb)
    raises("EINVAL", prefix, rb.message, "ioband1", f"range-bw {value}")
    assert snapshot(rb) == before


def test_range_bw_error_explains_the_default_group_form(rb):
    err = raises("EINVAL", "Invalid range-bw", rb.message, "ioband1", "range-bw 1000:6000")
    assert ":MIN:MAX" in str(err)


@pytest.mark.parametrize("word", ["range-bw", "min-bw", "max-bw"])
def test_range_bw_words_under_weight_policies_are_einval(e, word):
    for policy in ("weight", "weight-iosize", "default"):
        e.message("ioband1", f"policy {policy}")
        before = snapshot(e)
        raises("EINVAL", word, e.message, "ioband1", f"{word} :1:2" if word == "range-bw"
               else f"{word} 5")  # fmt: skip
        assert snapshot(e) == before


def test_min_bw_and_max_bw_are_working_setters(rb):
    """PRODUCT.md §3: implemented as setters (broken in the original); max-bw 0 = no cap."""
    rb.message("ioband1", "min-bw 3000")
    assert rb.table("ioband1").endswith(" :3000:0 1000:0:0")
    rb.message("ioband1", "max-bw 5000")
    assert rb.table("ioband1").endswith(" :3000:5000 1000:0:0")
    rb.message("ioband1", "max-bw 0")
    assert rb.table("ioband1").endswith(" :3000:0 1000:0:0")
    rb.message("ioband1", "max-bw 1000:20000")
    rb.message("ioband1", "min-bw 1000:0x10")
    assert rb.table("ioband1").endswith(" :3000:0 1000:16:20000")
    rb.message("ioband1", "min-bw -1:0")
    rb.message("ioband1", "max-bw :7")
    assert rb.table("ioband1").endswith(" :0:7 1000:16:20000")
    g = rb.device("ioband1").groups[1000]
    assert (g.min_bw_token, g.max_bw_token) == (32, 40000)


@pytest.mark.parametrize(
    ("message", "prefix"),
    [
        ("min-bw 1000:30000", "Invalid min-bw"),  # above max 20000
        ("max-bw 1000:5", "Invalid max-bw"),  # below min 7000
        ("min-bw -1", "Invalid min-bw"),
        ("max-bw -1", "Invalid max-bw"),
        ("min-bw 1073741824", "Invalid min-bw"),
        ("max-bw 1073741824", "Invalid max-bw"),
        ("min-bw abc", "Invalid min-bw"),
        ("max-bw :2:3", "Invalid max-bw"),
        ("min-bw 9999:1", "min-bw: id=9999"),
        ("max-bw 9999:1", "max-bw: id=9999"),
    ],
)
def test_min_bw_max_bw_errors(rb, message, prefix):
    rb.message("ioband1", "range-bw 1000:7000:20000")
    before = snapshot(rb)
    raises("EINVAL", prefix, rb.message, "ioband1", message)
    assert snapshot(rb) == before


def test_max_bw_below_min_when_uncapped(rb):
    rb.message("ioband1", "min-bw 3000")
    raises("EINVAL", "Invalid max-bw", rb.message, "ioband1", "max-bw 2000")
    rb.message("ioband1", "min-bw 9000")  # no cap: any min is fine
    assert rb.table("ioband1").endswith(" :9000:0 1000:0:0")


# =============================================================================================
# reset (scope: this ioband device only)
# =============================================================================================
def _io(e: Engine, name: str, uid: int = 0, write: bool = False, now: int = 0) -> Request:
    req = Request(write, 0, 4096, Submitter(uid=uid))
    e.submit(e.device(name), req, now)
    return req


def test_reset_zeroes_this_device_only(e):
    e.message("ioband1", "type user")
    e.message("ioband1", "attach 1000")
    for uid in (0, 1000):
        _io(e, "ioband1", uid)
    _io(e, "ioband2", write=True)
    other = e.status("ioband2")
    assert e.status("ioband1") == "0 2097152 ioband 1 -1 1 0 8 0 0 0 1000 1 0 8 0 0 0"
    e.message("ioband1", "reset")
    assert e.status("ioband1") == "0 2097152 ioband 1 -1 0 0 0 0 0 0 1000 0 0 0 0 0 0"
    assert e.status("ioband2") == other == "0 2097152 ioband 1 -1 0 0 0 1 0 8"
    assert e.table("ioband1") == table("sda1 1 4 192 user weight 768 :40 1000:100")


# =============================================================================================
# The documented examples (§3, §7.1)
# =============================================================================================
def test_documented_message_examples_in_sequence(e):
    steps = [
        ("ioband1", "type user", "sda1 1 4 192 user weight 768 :40"),
        ("ioband1", "attach 1000", "sda1 1 4 192 user weight 768 :40 1000:100"),
        ("ioband1", "weight 1000:30", "sda1 1 4 192 user weight 768 :40 1000:30"),
        ("ioband1", "weight 40", "sda1 1 4 192 user weight 768 :40 1000:30"),
        ("ioband2", "type user", "sda1 1 4 192 user weight 768 :40 1000:30"),
        ("ioband2", "attach 1000", "sda1 1 4 192 user weight 768 :40 1000:30"),
        ("ioband2", "weight 1000:20", "sda1 1 4 192 user weight 768 :40 1000:30"),
        ("ioband2", "detach 1000", "sda1 1 4 192 user weight 768 :40 1000:30"),
        ("ioband1", "policy weight-iosize", "sda1 1 4 192 user weight-iosize 6144 :40 1000:30"),
        ("ioband1", "token 256", "sda1 1 4 192 user weight-iosize 256 :40 1000:30"),
        ("ioband1", "carryover 2", "sda1 1 4 192 user weight-iosize 256 :40 1000:30"),
        ("ioband1", "io_throttle 16", "sda1 1 16 192 user weight-iosize 256 :40 1000:30"),
        ("ioband1", "io_limit 128", "sda1 1 16 128 user weight-iosize 256 :40 1000:30"),
        ("ioband1", "policy range-bw", "sda1 1 16 128 user range-bw 16384 :0:0 1000:0:0"),
        ("ioband1", "range-bw -1:5000:6000",
         "sda1 1 16 128 user range-bw 16384 :5000:6000 1000:0:0"),
        ("ioband1", "range-bw 1000:10000:12000",
         "sda1 1 16 128 user range-bw 16384 :5000:6000 1000:10000:12000"),
        ("ioband1", "reset", "sda1 1 16 128 user range-bw 16384 :5000:6000 1000:10000:12000"),
    ]  # fmt: skip
    for device, message, expected in steps:
        e.message(device, message)
        assert e.table("ioband1") == table(expected), message
        if message == "carryover 2":
            assert show_device(e) == " token=256 carryover=2"
    assert show_device(e) == ""  # range-bw has no device view
    assert e.table("ioband2") == table("sda2 1 16 128 user range-bw 16384 :0:0")


def test_xen_blktap_example(e):
    """§7.1 "#4 Xen blktap": one device :100, type pid, two tapdisk pids 80 vs 40."""
    e = Engine()
    e.create("ioband1", table("/dev/sda1 1 0 192 none weight 0 :100"))  # dm-ioband's io_limit 0
    for msg in ("type pid", "attach 15011", "weight 15011:80", "attach 15276", "weight 15276:40"):
        e.message("ioband1", msg)
    assert e.table("ioband1") == table("/dev/sda1 1 4 192 pid weight 768 :100 15011:80 15276:40")


def test_range_bw_documented_values(rb):
    """§7.1 "range-bw": -1:200:300 and 1000:10000:12000; -1:900:1000 on ioband2."""
    rb.message("ioband1", "range-bw -1:200:300")
    rb.message("ioband1", "range-bw 1000:10000:12000")
    rb.message("ioband2", "range-bw -1:900:1000")
    expected = "sda1 1 4 192 user range-bw 12288 :200:300 1000:10000:12000"
    assert rb.table("ioband1") == table(expected)
    assert rb.table("ioband2") == table("sda2 1 4 192 none range-bw 12288 :900:1000")


# =============================================================================================
# A refused message changes nothing (PRODUCT.md §4)
# =============================================================================================
REFUSALS = [
    # (setup messages on ioband1, refused message, errno)
    ([], "", "EINVAL"),
    ([], "bogus 1", "EINVAL"),
    ([], "weight 1 2", "EINVAL"),
    ([], "type bogus", "EINVAL"),
    (["type user", "attach 1"], "type gid", "EBUSY"),
    ([], "attach 1", "EINVAL"),
    (["type user", "attach 1"], "attach 1", "EEXIST"),
    (["type user"], "attach -3", "EINVAL"),
    (["type user"], "detach 5", "EINVAL"),
    ([], "policy bogus", "EINVAL"),
    ([], "policy weight 0", "EINVAL"),
    (["io_limit 50"], "io_throttle 51", "EINVAL"),
    (["io_throttle 60"], "io_limit 59", "EINVAL"),
    ([], "io_throttle 32768", "EINVAL"),
    ([], "io_limit -1", "EINVAL"),
    (["token 99", "carryover 3"], "token -1", "EINVAL"),
    (["token 99", "carryover 3"], "carryover x", "EINVAL"),
    (["weight 50"], "weight 0", "EINVAL"),
    (["weight 50"], "weight 32768", "EINVAL"),
    (["type user", "attach 1", "weight 1:7"], "weight 2:7", "EINVAL"),
    ([], "range-bw :1:2", "EINVAL"),
    ([], "min-bw 1", "EINVAL"),
    ([], "max-bw 1", "EINVAL"),
    (["policy range-bw", "range-bw :10:20"], "range-bw :30:20", "EINVAL"),
    (["policy range-bw", "range-bw :10:20"], "range-bw 10:20", "EINVAL"),
    (["policy range-bw", "range-bw :10:20"], "min-bw 21", "EINVAL"),
    (["policy range-bw", "range-bw :10:20"], "max-bw 9", "EINVAL"),
    (["policy range-bw"], "weight 10", "EINVAL"),
    (["policy range-bw"], "token 10", "EINVAL"),
    (["policy range-bw"], "carryover 10", "EINVAL"),
]


@pytest.mark.parametrize(("setup", "message", "errno_name"), REFUSALS)
def test_refused_message_changes_nothing(setup, message, errno_name):
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 none weight 0 :40"))
    e.create("ioband2", table("sda2 1 0 0 user weight 0 :10 7:20"))
    for msg in setup:
        e.message("ioband1", msg)
    reqs = [_io(e, "ioband1", now=1), _io(e, "ioband2", uid=7, write=True, now=1)]
    e.complete(reqs[0], 2)
    before = snapshot(e)
    with pytest.raises(IobandError) as info:
        e.message("ioband1", message, now=2)
    assert info.value.errno_name == errno_name, info.value.describe()
    assert snapshot(e) == before


MSG_WORD = st.sampled_from(
    ["reset", "type", "attach", "detach", "policy", "io_throttle", "io_limit", "weight", "token",
     "carryover", "range-bw", "min-bw", "max-bw", "debug", "foo"]
)  # fmt: skip
MSG_VALUE = st.one_of(
    st.sampled_from(
        ["0", "1", "-1", "0x10", "010", "08", "1000", "32767", "32768", "2147483647",
         "2147483648", ":", ":40", "1000:30", "-1:5", ":1:2", "1000:1:2", "1:2:3", "user", "none",
         "pid", "weight", "weight-iosize", "default", "range-bw", "abc", "1000:", "::"]
    ),
    st.text(alphabet="0123456789x-:=,abc", min_size=1, max_size=8),
)  # fmt: skip
MESSAGE = st.one_of(
    st.tuples(MSG_WORD, MSG_VALUE).map(list),
    st.lists(st.one_of(MSG_WORD, MSG_VALUE), max_size=4),
)


@FUZZ
@given(st.sampled_from(["weight 0 :40 1000:30", "range-bw 0 :1:2 1000:3:4", "default :7"]),
       st.lists(MESSAGE, max_size=8))  # fmt: skip
def test_fuzz_messages_apply_or_refuse_without_change(policy, messages):
    e = Engine()
    e.create("ioband1", table(f"sda1 1 0 0 user {policy}"))
    e.create("ioband2", table("sda2 1 0 0 none weight-iosize 0 :10"))
    for words in messages:
        before = snapshot(e)
        try:
            e.message("ioband1", words)
        except IobandError as err:
            assert err.errno_name in {"EINVAL", "EEXIST", "EBUSY", "ENXIO"}
            assert snapshot(e) == before
        e.table("ioband1")
        e.status("ioband1", "diskstats")
