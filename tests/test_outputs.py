"""Spec conformance: ``dmsetup table`` and ``dmsetup status`` output, and group classification.

References: dm-ioband-interface.md §4.1 (table), §4.2 (status: legacy 7 columns, diskstats 12
columns), §5 (group types and ID derivation); dm-ioband-algorithms.md §9 (statistics); PRODUCT.md
§3 (legacy format by default, diskstats with real ticks; group -1 from classification goes to the
default group; ``client`` type).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ioband.core.engine import BackingInfo, Engine
from ioband.core.grammar import format_dmsetup, format_table, parse_group_param, parse_table
from ioband.core.request import Request, Submitter
from ioband.errors import IobandError

HEAD = "0 2097152 ioband"
LEGACY, DISKSTATS = 7, 12


def table(args: str) -> str:
    return f"{HEAD} {args}"


def groups_of(status: str, width: int) -> tuple[str, dict[int, list[int]]]:
    """Split a status line ``<start> <len> ioband <dg id> <block>...`` into the device-group id
    and ``{group id: [columns 2..width]}``, checking the shape on the way (ids keep their order)."""
    words = status.split()
    assert words[2] == "ioband"
    name, numbers = words[3], words[4:]
    assert len(numbers) % width == 0, status
    blocks = [numbers[i : i + width] for i in range(0, len(numbers), width)]
    assert all(re.fullmatch(r"-?\d+", w) for block in blocks for w in block), status
    return name, {int(b[0]): [int(x) for x in b[1:]] for b in blocks}


def ids_in_order(status: str, width: int) -> list[int]:
    numbers = status.split()[4:]
    return [int(numbers[i]) for i in range(0, len(numbers), width)]


def read(e: Engine, name: str, *, now: int = 0, length: int = 4096, **owner) -> Request:
    req = Request(False, 0, length, Submitter(**owner))
    e.submit(e.device(name), req, now)
    return req


def write(e: Engine, name: str, *, now: int = 0, length: int = 4096, **owner) -> Request:
    req = Request(True, 0, length, Submitter(**owner))
    e.submit(e.device(name), req, now)
    return req


def drain(e: Engine, reqs: list[Request], now: int) -> None:
    """Complete whatever is issued at ``now`` until everything is done."""
    for _ in range(100):
        issued = [r for r in reqs if r.state == "issued"]
        if not issued:
            break
        for r in issued:
            e.complete(r, now)
        e.take_issued()
        e.take_admitted()
    assert all(r.state == "done" for r in reqs), [r.state for r in reqs]


# =============================================================================================
# dmsetup table (§4.1)
# =============================================================================================
def test_table_fields_in_order():
    e = Engine(resolver=lambda dev: BackingInfo("8:18", 128))
    e.create("ioband1", "0 112455000 ioband /dev/sdb2 share1 0 0 user weight 0 :40 2000:20 1000:80")
    words = e.table("ioband1").split()
    # io_limit 0 is adaptive and shown as 0 (issue 12); its token default is still 4 * 192
    assert words == ["0", "112455000", "ioband", "8:18", "share1", "4", "0", "user", "weight",
                     "768", ":40", "1000:80", "2000:20"]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("none weight", "none weight 768 :100"),
        ("none weight-iosize", "none weight-iosize 6144 :100"),
        ("none default", "none default 768 :100"),
        ("none range-bw", "none range-bw 12288 :0:0"),
        ("user range-bw 0 :1:2 9:3:4 0x8:5:6", "user range-bw 12288 :1:2 8:5:6 9:3:4"),
        ("gid weight-iosize 0 :5 3:2 1:9", "gid weight-iosize 6144 :5 1:9 3:2"),
    ],
)
def test_table_policy_part(args, expected):
    e = Engine()
    e.create("ioband1", table(f"sda1 1 0 0 {args}"))
    assert e.table("ioband1") == table(f"sda1 1 4 0 {expected}")  # io_limit 0 shown as 0


def test_table_lists_attached_groups_ascending_whatever_the_attach_order():
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 user weight 0 :40"))
    for gid in (2000, 5, 1000, 0, 1500):
        e.message("ioband1", f"attach {gid}")
    assert e.table("ioband1") == table(
        "sda1 1 4 0 user weight 768 :40 0:100 5:100 1000:100 1500:100 2000:100"
    )


def test_format_table_and_dmsetup_line():
    target = "8:18 1 4 128 cgroup range-bw 16384 :0:0 2:100:500 3:700:1000 4:30000:35000"
    line = format_table(0, 305235000, "8:18", "1", 4, 128, "cgroup", "range-bw",
                        " 16384 :0:0 2:100:500 3:700:1000 4:30000:35000")  # fmt: skip
    assert line == f"0 305235000 ioband {target}"
    assert format_dmsetup("ioband1", 0, 305235000, target) == f"ioband1: {line}"
    e = Engine()
    e.create("ioband1", line)
    assert format_dmsetup("ioband1", 0, 305235000, target) == f"ioband1: {e.table('ioband1')}"


def test_table_of_each_member_shows_its_own_groups_and_the_shared_values():
    e = Engine()
    e.create("a", table("sda1 vg0 8 300 user weight 0 :40 7:1"))
    e.create("b", table("sda2 vg0 0 0 uid weight 0 :10 9:3"))
    assert e.table("a") == table("sda1 vg0 8 300 user weight 1200 :40 7:1")
    assert e.table("b") == table("sda2 vg0 8 300 uid weight 1200 :10 9:3")


# =============================================================================================
# dmsetup status: legacy 7-column format (the default; PRODUCT.md §3)
# =============================================================================================
def test_status_fresh_device():
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 none weight 0 :40"))
    assert e.status("ioband1") == "0 2097152 ioband 1 -1 0 0 0 0 0 0"
    assert e.status("ioband1", "legacy") == e.status("ioband1")
    assert e.status("ioband1", "diskstats") == "0 2097152 ioband 1 -1 0 0 0 0 0 0 0 0 0 0 0"


def test_status_default_group_first_then_ascending_ids():
    e = Engine()
    e.create("ioband1", table("sda1 share1 0 0 user weight 0 :40 2000:1"))
    for gid in (1000, 0, 1500):
        e.message("ioband1", f"attach {gid}")
    for fmt, width in (("legacy", LEGACY), ("diskstats", DISKSTATS)):
        status = e.status("ioband1", fmt)
        assert status.startswith("0 2097152 ioband share1 -1 ")
        assert ids_in_order(status, width) == [-1, 0, 1000, 1500, 2000]
        assert len(status.split()) == 4 + 5 * width


def test_status_columns_count_requests_and_sectors():
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 user weight 0 :40 1000:30"))
    reqs = [
        read(e, "ioband1", uid=1000),
        read(e, "ioband1", uid=1000, length=8192),
        write(e, "ioband1", uid=1000, length=512),
        write(e, "ioband1", uid=0, length=65536),
        read(e, "ioband1", uid=5),  # no group 5: the default group
    ]
    expected = "0 2097152 ioband 1 -1 1 0 8 1 0 128 1000 2 0 24 1 0 1"
    assert e.status("ioband1") == expected
    drain(e, reqs, 10)
    assert e.status("ioband1") == expected  # counted at dispatch, not at completion


def test_status_counts_delayed_requests():
    """Col 3/6: requests that were held in ioband and released later (§4.2 legacy format)."""
    e = Engine()
    e.create("ioband1", table("sda1 1 1 1 none weight"))
    a = read(e, "ioband1")  # issued: the only in-flight slot
    b = read(e, "ioband1")  # held
    assert (a.state, b.state) == ("issued", "held")
    assert e.status("ioband1") == "0 2097152 ioband 1 -1 1 0 8 0 0 0"
    drain(e, [a, b], 10)
    assert e.status("ioband1") == "0 2097152 ioband 1 -1 2 1 16 0 0 0"
    c = write(e, "ioband1", now=11)  # async writes are their own class with their own limit
    d = write(e, "ioband1", now=11)
    assert (c.state, d.state) == ("issued", "held")
    drain(e, [c, d], 20)
    assert e.status("ioband1") == "0 2097152 ioband 1 -1 2 1 16 2 1 16"


def test_status_shows_only_this_devices_groups_with_the_device_group_id():
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 user weight 0 :40 1000:30"))
    e.create("ioband2", table("sda2 1 0 0 user weight 0 :10 1000:20 2000:5"))
    read(e, "ioband2", uid=2000)
    assert e.status("ioband1") == "0 2097152 ioband 1 -1 0 0 0 0 0 0 1000 0 0 0 0 0 0"
    assert e.status("ioband2") == (
        "0 2097152 ioband 1 -1 0 0 0 0 0 0 1000 0 0 0 0 0 0 2000 1 0 8 0 0 0"
    )


def test_status_after_detach_drops_the_group():
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 user weight 0 :40 1000:30 2000:1"))
    read(e, "ioband1", uid=2000)
    e.message("ioband1", "detach 1000")
    assert ids_in_order(e.status("ioband1"), LEGACY) == [-1, 2000]


def test_documented_legacy_status_examples_have_the_legacy_shape():
    doc = [
        "ioband2: 0 44371467 ioband 128 -1 143 90 424 122 78 352",
        "ioband1: 0 44371467 ioband 128 -1 223 172 408 211 136 600 1001 166 107 472 139 95 352 "
        "1002 211 146 520 210 147 504",
    ]
    for line in doc:
        name, groups = groups_of(line.split(": ", 1)[1], LEGACY)
        assert name == "128"
        for cols in groups.values():
            assert cols[1] <= cols[0] and cols[4] <= cols[3]  # delayed <= total
    e = Engine()
    e.create("ioband1", table("sda1 128 0 0 user weight 0 :40 1001:1 1002:1"))
    assert ids_in_order(e.status("ioband1"), LEGACY) == [-1, 1001, 1002]


def test_status_of_unknown_device_and_unknown_format():
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 none weight"))
    with pytest.raises(IobandError) as info:
        e.status("ioband1", "csv")
    assert info.value.errno_name == "EINVAL"
    e.remove("ioband1")
    for fn in (e.status, e.table):
        with pytest.raises(IobandError) as info:
            fn("ioband1")
        assert info.value.errno_name == "ENODEV"


# =============================================================================================
# dmsetup status: diskstats 12-column format (§4.2, algorithms §9)
# =============================================================================================
def test_diskstats_columns_with_real_times():
    """id, reads, merges 0, read sectors, read ticks (ms), writes, merges 0, write sectors,
    write ticks, held now, io_ticks (ms busy), time_in_queue (ms, summed over requests)."""
    e = Engine(hz=1000)
    e.create("ioband1", table("sda1 1 0 0 user weight 0 :40 1000:30"))
    r1 = read(e, "ioband1", uid=1000)
    r2 = read(e, "ioband1", uid=1000, length=8192)
    w1 = write(e, "ioband1", length=1024)
    assert e.status("ioband1", "diskstats") == (
        "0 2097152 ioband 1 -1 0 0 0 0 1 0 2 0 0 0 0 1000 2 0 24 0 0 0 0 0 0 0 0"
    )
    drain(e, [r1, r2, w1], 10)
    assert e.status("ioband1", "diskstats") == (
        "0 2097152 ioband 1 -1 0 0 0 0 1 0 2 10 0 10 10 1000 2 0 24 20 0 0 0 0 0 10 20"
    )


def test_diskstats_ticks_use_milliseconds_whatever_hz():
    e = Engine(hz=250)
    e.create("ioband1", table("sda1 1 0 0 none weight"))
    r = read(e, "ioband1", now=0)
    drain(e, [r], 25)  # 25 jiffies at HZ 250 = 100 ms
    _, groups = groups_of(e.status("ioband1", "diskstats"), DISKSTATS)
    assert groups[-1] == [1, 0, 8, 100, 0, 0, 0, 0, 0, 100, 100]


def test_diskstats_column_10_is_the_live_held_count():
    e = Engine()
    e.create("ioband1", table("sda1 1 1 1 none weight"))
    a = read(e, "ioband1")
    b = read(e, "ioband1")
    _, groups = groups_of(e.status("ioband1", "diskstats"), DISKSTATS)
    assert groups[-1][:4] == [1, 0, 8, 0] and groups[-1][8] == 1
    e.message("ioband1", "reset")  # col 10 is live state: not zeroed
    _, groups = groups_of(e.status("ioband1", "diskstats"), DISKSTATS)
    assert groups[-1] == [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]
    drain(e, [a, b], 10)
    _, groups = groups_of(e.status("ioband1", "diskstats"), DISKSTATS)
    assert groups[-1][8] == 0 and groups[-1][0] == 1  # b dispatched after the reset


def test_reset_zeroes_both_formats():
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 user weight 0 :40 7:1"))
    reqs = [read(e, "ioband1", uid=7), write(e, "ioband1")]
    drain(e, reqs, 10)
    e.message("ioband1", "reset", now=10)
    assert e.status("ioband1") == "0 2097152 ioband 1 -1 0 0 0 0 0 0 7 0 0 0 0 0 0"
    assert e.status("ioband1", "diskstats") == (
        "0 2097152 ioband 1 -1 0 0 0 0 0 0 0 0 0 0 0 7 0 0 0 0 0 0 0 0 0 0 0"
    )


def test_io_ticks_stop_when_idle_and_reset_zeroes_them():
    """A submitter that slept must not keep its group busy (regression: it was counted twice)."""
    e = Engine(hz=1000)
    e.create("ioband1", table("sda1 1 1 1 none weight"))
    reqs = [read(e, "ioband1") for _ in range(3)]  # issued, held, submitter waits
    assert [r.state for r in reqs] == ["issued", "held", "waiting"]
    drain(e, reqs, 30)
    _, groups = groups_of(e.status("ioband1", "diskstats"), DISKSTATS)
    assert groups[-1][9] == 30  # busy from 0 to 30
    e.advance(100)
    _, groups = groups_of(e.status("ioband1", "diskstats"), DISKSTATS)
    assert groups[-1][9] == 30  # idle since 30
    e.message("ioband1", "reset", now=100)
    e.advance(200)
    _, groups = groups_of(e.status("ioband1", "diskstats"), DISKSTATS)
    assert groups[-1] == [0] * 11


def test_reset_scope_is_the_addressed_device_only():
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 none weight 0 :40"))
    e.create("ioband2", table("sda2 1 0 0 none weight 0 :10"))
    reqs = [read(e, "ioband1"), read(e, "ioband2"), write(e, "ioband2")]
    drain(e, reqs, 5)
    other = (e.status("ioband2"), e.status("ioband2", "diskstats"))
    e.message("ioband1", "reset", now=5)
    assert e.status("ioband1") == "0 2097152 ioband 1 -1 0 0 0 0 0 0"
    assert (e.status("ioband2"), e.status("ioband2", "diskstats")) == other
    assert other[0] == "0 2097152 ioband 1 -1 1 0 8 1 0 8"


# =============================================================================================
# Group types (§5): which group a request is counted in
# =============================================================================================
OWNER = {"pid": 11, "pgrp": 12, "uid": 13, "gid": 14, "cgroup": 15, "client": 16}


@pytest.mark.parametrize(
    ("gtype", "gid"),
    [("pid", 11), ("pgrp", 12), ("user", 13), ("uid", 13), ("gid", 14), ("cgroup", 15),
     ("client", 16), ("node", 0), ("cpuset", 0)],
)  # fmt: skip
def test_group_type_classifies_by_the_submitters_id(gtype, gid):
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 none weight"))
    e.message("ioband1", f"type {gtype}")
    for other in {0, 11, 12, 13, 14, 15, 16} - {gid}:
        e.message("ioband1", f"attach {other}")
    e.message("ioband1", f"attach {gid}")
    read(e, "ioband1", **OWNER)
    _, groups = groups_of(e.status("ioband1"), LEGACY)
    assert {g for g, cols in groups.items() if cols[0]} == {gid}


def test_type_none_counts_everything_in_the_default_group():
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 none weight"))
    read(e, "ioband1", **OWNER)
    read(e, "ioband1", uid=1000)
    assert e.status("ioband1") == "0 2097152 ioband 1 -1 2 0 16 0 0 0"


@pytest.mark.parametrize(
    "owner", [{"uid": 999}, {"uid": -1}, {"uid": 0}], ids=["unknown", "minus-one", "zero"]
)
def test_unmatched_ids_and_minus_one_go_to_the_default_group(owner):
    """PRODUCT.md: group id -1 from classification goes to the default group (the original
    matched the rb-tree root, an arbitrary group)."""
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 user weight 0 :40 5:1 1000:1"))
    read(e, "ioband1", **owner)
    assert e.status("ioband1") == (
        "0 2097152 ioband 1 -1 1 0 8 0 0 0 5 0 0 0 0 0 0 1000 0 0 0 0 0 0"
    )


def test_client_type_without_a_client_id_goes_to_the_default_group():
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 client weight 0 :40 0:1"))
    read(e, "ioband1")  # Submitter.client is None: not a connection peer
    assert e.status("ioband1") == "0 2097152 ioband 1 -1 1 0 8 0 0 0 0 0 0 0 0 0 0"


def test_type_change_changes_classification():
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 user weight 0 :40 13:1"))
    read(e, "ioband1", **OWNER)
    e.message("ioband1", "detach 13")
    e.message("ioband1", "type gid")
    e.message("ioband1", "attach 14")
    read(e, "ioband1", **OWNER)
    assert e.status("ioband1") == "0 2097152 ioband 1 -1 0 0 0 0 0 0 14 1 0 8 0 0 0"


# =============================================================================================
# Output is parseable and stable
# =============================================================================================
@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(
    st.sampled_from(["weight", "weight-iosize", "default", "range-bw"]),
    st.lists(st.integers(0, 2**31 - 1), unique=True, max_size=6),
    st.lists(st.tuples(st.booleans(), st.integers(0, 7), st.integers(1, 64)), max_size=12),
)
def test_status_and_table_shapes(policy, ids, ios):
    e = Engine()
    e.create("ioband1", table(f"sda1 dg 0 0 user {policy}"))
    for gid in ids:
        e.message("ioband1", f"attach {gid}")
    owners = [0, *ids]
    reqs = []
    for is_write, who, blocks in ios:
        req = Request(is_write, 0, blocks * 512, Submitter(uid=owners[who % len(owners)]))
        e.submit(e.device("ioband1"), req, 0)
        reqs.append(req)
    expected_ids = [-1, *sorted(ids)]
    for fmt, width in (("legacy", LEGACY), ("diskstats", DISKSTATS)):
        status = e.status("ioband1", fmt)
        name, _ = groups_of(status, width)
        assert name == "dg" and ids_in_order(status, width) == expected_ids
    spec = parse_table(e.table("ioband1"))
    assert [parse_group_param(word)[0] for word in spec.groups] == sorted(ids)
    _, legacy = groups_of(e.status("ioband1"), LEGACY)
    _, disk = groups_of(e.status("ioband1", "diskstats"), DISKSTATS)
    for gid in expected_ids:
        reads, rdelayed, rsect, writes, wdelayed, wsect = legacy[gid]
        assert rdelayed <= reads and wdelayed <= writes
        assert [disk[gid][0], disk[gid][2], disk[gid][4], disk[gid][6]] == [
            reads,
            rsect,
            writes,
            wsect,
        ]
        assert disk[gid][1] == disk[gid][5] == 0  # merges
