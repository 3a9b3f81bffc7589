"""The dm target's shared checks: the engine and the simulator's FIFO and SFQ(D) baselines refuse
the same tables and messages with the same error (type and text), and a refused message changes
nothing (ioband.core.target: check_table and the message table)."""

from __future__ import annotations

import pytest

from ioband.core.engine import Engine
from ioband.core.grammar import MESSAGES
from ioband.core.target import MESSAGE_HANDLERS, DmTarget
from ioband.errors import IobandError
from ioband.sim.baselines import FifoEngine, SFQDEngine

ENGINES = {"ioband": Engine, "none": FifoEngine, "sfq": SFQDEngine}
WEIGHT_TABLE = "0 2048 ioband sda 1 0 0 user weight 0 :40 1000:20"
RANGE_TABLE = "0 2048 ioband sda 1 0 0 user range-bw 0 :0:0 1000:100:200"


def refusal(make, action) -> tuple[type, str]:
    engine = make()
    with pytest.raises(IobandError) as caught:
        action(engine)
    return type(caught.value), str(caught.value)


def test_the_message_table_has_one_handler_per_message_word():
    assert set(MESSAGE_HANDLERS) == set(MESSAGES)


BAD_TABLES = [
    ("a b", WEIGHT_TABLE),  # device name with a space
    ("d", "0 2048 ioband sda 1 0 0 user wieght 0 :40"),  # unknown policy
    ("d", "0 2048 ioband sda 1 0 0 mclock weight 0 :40"),  # unknown group type
    ("d", "0 2048 ioband sda 1 0 0 none weight 0 :40 1000:20"),  # groups under type none
    ("d", "0 2048 ioband sda 1 0 0 user weight 0 :40 7:20 7:30"),  # an id twice
    ("d", "0 2048 ioband sda 1 0 0 user weight 0 :0"),  # weight out of range
    ("d", "0 2048 ioband sda 1 0 0 user weight 0 :40 7:x"),  # weight not an integer
    ("d", "0 2048 ioband sda 1 0 0 user weight x :40"),  # token_base not an integer
    ("d", "0 2048 ioband sda 1 0 0 user range-bw 0 :5"),  # a band without MIN:MAX
    ("d", "0 2048 ioband sda 1 0 0 user range-bw 0 :0:0 3:9:4"),  # min above max
    ("d", "0 2048 ioband sda 1 70000 0 user weight 0 :40"),  # io_throttle out of range
    ("d", "0 2048 ioband"),  # too few words
]


@pytest.mark.parametrize(("name", "table"), BAD_TABLES)
def test_baselines_refuse_a_bad_table_as_the_engine_does(name, table):
    expected = refusal(Engine, lambda e: e.create(name, table))
    for scheduler in ("none", "sfq"):
        assert refusal(ENGINES[scheduler], lambda e: e.create(name, table)) == expected


def test_baselines_refuse_a_second_device_of_the_same_name_as_the_engine_does():
    def twice(e):
        e.create("d", WEIGHT_TABLE)
        e.create("d", WEIGHT_TABLE)

    expected = refusal(Engine, twice)
    assert refusal(FifoEngine, twice) == refusal(SFQDEngine, twice) == expected


BAD_MESSAGES = [
    (WEIGHT_TABLE, "bogus 1"),  # unknown word
    (WEIGHT_TABLE, "reset now"),  # reset takes nothing
    (WEIGHT_TABLE, "weight"),  # no value
    (WEIGHT_TABLE, "type nope"),
    (WEIGHT_TABLE, "type pid"),  # groups still attached
    (WEIGHT_TABLE, "attach x"),
    (WEIGHT_TABLE, "attach -3"),
    (WEIGHT_TABLE, "attach 1000"),  # already attached
    (WEIGHT_TABLE, "detach 5"),  # none such
    (WEIGHT_TABLE, "policy wieght"),
    (WEIGHT_TABLE, "io_throttle 70000"),
    (WEIGHT_TABLE, "io_throttle 1000"),  # above io_limit (192)
    (WEIGHT_TABLE, "io_limit x"),
    (WEIGHT_TABLE, "io_limit 2"),  # below io_throttle (4)
    (WEIGHT_TABLE, "weight 5:10"),  # no group 5
    (WEIGHT_TABLE, "weight 1000:0"),
    (WEIGHT_TABLE, "weight 1000:40000"),
    (WEIGHT_TABLE, "weight x:10"),
    (WEIGHT_TABLE, "min-bw 10"),  # not a parameter of the weight policy
    (WEIGHT_TABLE, "token -1"),
    (WEIGHT_TABLE, "carryover x"),
    (RANGE_TABLE, "weight 10"),  # not a parameter of range-bw
    (RANGE_TABLE, "token 5"),
    (RANGE_TABLE, "range-bw 1000:5"),  # one value alone
    (RANGE_TABLE, "range-bw 1000:9:4"),  # min above max
    (RANGE_TABLE, "min-bw 1000:300"),  # above the group's max-bw 200
    (RANGE_TABLE, "max-bw 1000:50"),  # below the group's min-bw 100
    (RANGE_TABLE, "max-bw 1000:9999999999"),
    (RANGE_TABLE, "min-bw 7:1"),  # no group 7
]


@pytest.mark.parametrize(("table", "words"), BAD_MESSAGES)
def test_baselines_refuse_a_bad_message_as_the_engine_does_and_change_nothing(table, words):
    def send(e):
        e.create("d", table)
        before = e.table("d")
        try:
            e.message("d", words)
        finally:
            assert e.table("d") == before

    expected = refusal(Engine, send)
    for scheduler in ("none", "sfq"):
        assert refusal(ENGINES[scheduler], send) == expected, scheduler


@pytest.mark.parametrize("scheduler", ["none", "sfq"])
def test_baselines_apply_the_messages_they_accept(scheduler):
    e = ENGINES[scheduler]()
    e.create("d", RANGE_TABLE)
    e.message("d", "min-bw 1000:150")
    e.message("d", "max-bw 1000:0")  # 0: no cap, whatever the min
    e.message("d", "attach 2000")
    assert e.table("d") == "0 2048 ioband sda 1 4 192 user range-bw 0 :0:0 1000:150:0 2000:0:0"
    e.message("d", "policy weight")  # another family: defaults
    e.message("d", "weight 2000:70")
    e.message("d", "token 300")
    e.message("d", "io_limit 0")  # derived from the queue size: 192
    e.message("d", "io_throttle 0")  # the default: 4
    assert e.table("d") == "0 2048 ioband sda 1 4 192 user weight 300 :100 1000:100 2000:70"
    e.message("d", "detach 1000")
    e.message("d", "detach 2000")
    e.message("d", "type uid")  # once no group is attached
    assert e.table("d").endswith("uid weight 300 :100")


@pytest.mark.parametrize("scheduler", ["none", "sfq"])
def test_baselines_refuse_a_policy_they_do_not_run_in_the_engine_words(scheduler):
    e = ENGINES[scheduler]()
    e.create("d", WEIGHT_TABLE)
    with pytest.raises(IobandError, match=r"^policy: unknown policy 'mclock' \(one of weight, "):
        e.message("d", "policy mclock")
    with pytest.raises(IobandError, match=r"^Invalid policy parameter: unknown policy 'mclock'"):
        e.create("m", "0 2048 ioband sda 2 0 0 none mclock iops :1:100:0")


#: The services DmTarget declares at its end (each raises NotImplementedError there).
SCHEDULER_HOOKS = ("_new_device_group", "_settle", "_queue_conductor", "wake", "_became_busy",
                   "_set_window", "_hold", "_issue_now", "_unhold_all", "_sleepers")  # fmt: skip


@pytest.mark.parametrize("name", SCHEDULER_HOOKS)
def test_the_engine_provides_each_service_the_target_declares(name):
    assert getattr(Engine, name) is not getattr(DmTarget, name)
