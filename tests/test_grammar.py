"""Spec conformance: the table grammar, C integer parsing and table construction.

References: dm-ioband-interface.md §2 (table grammar), §1.2 (device groups), §4.1 (table examples),
Appendix B/C (errors, limits); dm-ioband-algorithms.md §3.2 (token bucket defaults), §5.2 (range-bw
init), §8.1 (constructor checks and their order); PRODUCT.md §3 (settled deviations, which win).
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ioband.core.cint import INT_MAX, LONG_MAX, SHORT_MAX, cdiv, strict_strtol, strtol
from ioband.core.engine import BackingInfo, Engine
from ioband.core.grammar import (
    ID_ANY,
    TableSpec,
    bounded_int,
    parse_group_param,
    parse_range,
    parse_table,
    parse_weight,
)
from ioband.errors import IobandError
from tests.spec_helpers import GROUP_TYPES, HEAD, POLICIES, raises, snapshot, table

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# =============================================================================================
# cint: C integer semantics (§2 "C base-0 parsing (decimal, 0x hex, leading-0 octal; only a
# trailing newline tolerated)"; algorithms §8.1 strict_strtol / simple_strtol)
# =============================================================================================
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("16", 16),
        ("0x10", 16),
        ("0X1f", 31),
        ("0xAb", 171),
        ("010", 8),
        ("0777", 511),
        ("00", 0),
        ("-0", 0),
        ("-5", -5),
        ("-0x10", -16),
        ("-010", -8),
        ("32767", 32767),
        ("5\n", 5),
        ("0x10\n", 16),
        (str(LONG_MAX), LONG_MAX),
    ],
)
def test_strict_strtol_accepts_base0_integers(text, value):
    assert strict_strtol(text) == value


@pytest.mark.parametrize(
    "text",
    ["", "\n", "08", "09", "0x", "0xg", "0x1g", "+5", "--5", "- 5", " 5", "5 ", "5\n\n", "\n5",
     "1e3", "abc", "5a", "1.0", "0b1", "1_000", "٣"],
)  # fmt: skip
def test_strict_strtol_rejects(text):
    assert strict_strtol(text) is None


@pytest.mark.parametrize(
    ("text", "result"),
    [
        ("1000:80", (1000, 4)),
        ("-1:5", (-1, 2)),
        (":5", (None, 0)),
        ("0x10:1", (16, 4)),
        ("0x", (0, 1)),  # "0x" with no hex digit: octal 0, stops at 'x' (simple_guess_base)
        ("08", (0, 1)),
        ("12abc", (12, 2)),
        ("abc", (None, 0)),
        ("", (None, 0)),
        ("-", (None, 0)),
    ],
)
def test_strtol_is_lenient_prefix_parse(text, result):
    assert strtol(text) == result


@pytest.mark.parametrize(
    ("a", "b", "q"), [(7, 2, 3), (-7, 2, -3), (7, -2, -3), (-7, -2, 3), (0, 5, 0), (6, 3, 2)]
)
def test_cdiv_truncates_toward_zero(a, b, q):
    assert cdiv(a, b) == q


@FUZZ
@given(st.integers(-(10**12), 10**12), st.integers(-(10**6), 10**6).filter(bool))
def test_cdiv_matches_c_division(a, b):
    assert cdiv(a, b) == int(Fraction(a, b))


@FUZZ
@given(st.integers(-LONG_MAX, LONG_MAX))
def test_strict_strtol_round_trips_decimal_hex_octal(n):
    sign = "-" if n < 0 else ""
    assert strict_strtol(str(n)) == n
    assert strict_strtol(f"{sign}0x{abs(n):x}") == n
    assert strict_strtol(f"{sign}0{abs(n):o}") == n
    assert strict_strtol(f"{n}\n") == n


@FUZZ
@given(st.integers(0, 10**9), st.sampled_from(":=,x- g"))
def test_strtol_stops_at_first_non_digit(n, stop):
    text = f"{n}{stop}rest"
    value, end = strtol(text)
    assert (value, end) == (n, len(str(n)))


@FUZZ
@given(st.text(max_size=12))
def test_strict_strtol_never_raises(text):
    value = strict_strtol(text)
    assert value is None or isinstance(value, int)


# =============================================================================================
# bounded_int / parse_weight / parse_range / parse_group_param
# =============================================================================================
def test_bounded_int_accepts_bounds_and_names_field_and_rule():
    assert bounded_int("0", 0, 10, "io_limit", "Invalid io_limit") == 0
    assert bounded_int("0xa", 0, 10, "io_limit", "Invalid io_limit") == 10
    msg = "Invalid io_limit"
    err = raises("EINVAL", msg, bounded_int, "11", 0, 10, "io_limit", msg)
    assert "io_limit" in str(err)[len(msg) :] and "0..10" in str(err)
    err = raises("EINVAL", msg, bounded_int, "x", 0, 10, "io_limit", msg)
    assert "integer" in str(err)
    raises("EINVAL", msg, bounded_int, None, 0, 10, "io_limit", msg)


@pytest.mark.parametrize(
    ("text", "value"), [(None, None), ("1", 1), ("100", 100), ("32767", 32767), ("0x10", 16),
                        ("010", 8), ("40\n", 40)]
)  # fmt: skip
def test_parse_weight_valid(text, value):
    assert parse_weight(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "32768", "abc", "", "08", "1:2", "4 0"])
def test_parse_weight_rejects_outside_1_to_32767(text):
    raises("EINVAL", "Invalid weight", parse_weight, text)
    raises("EINVAL", "Cannot create default ioband group", parse_weight, text,
           "Cannot create default ioband group")  # fmt: skip


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (None, (0, 0)),
        ("0:0", (0, 0)),
        ("5000:6000", (5000, 6000)),
        ("5000=6000", (5000, 6000)),
        ("5000,6000", (5000, 6000)),
        ("0:6000", (0, 6000)),  # max-bw alone
        ("5000:5000", (5000, 5000)),
        ("0x10:0x20", (16, 32)),
        ("1073741823:1073741823", (INT_MAX // 2, INT_MAX // 2)),
        ("5000:0", (5000, 0)),  # PRODUCT.md §3: max 0 means no cap
    ],
)
def test_parse_range_valid(text, value):
    assert parse_range(text) == value


@pytest.mark.parametrize(
    "text",
    ["6000:5000", "5000", "", "-1:5", "5:-1", "0:1073741824", "1073741824:0", "1:2:3", ":5",
     "5:", "a:b", "5000;6000", "08:1"],
)  # fmt: skip
def test_parse_range_rejects(text):
    raises("EINVAL", "Invalid range-bw", parse_range, text)


def test_parse_range_without_delimiter_explains_the_default_group_form():
    err = raises("EINVAL", "Invalid range-bw", parse_range, "5000")
    assert ":MIN:MAX" in str(err)


@pytest.mark.parametrize(
    ("text", "result"),
    [
        ("1000:80", (1000, "80")),
        ("1000=80", (1000, "80")),
        ("1000,80", (1000, "80")),
        (":80", (ID_ANY, "80")),
        ("=80", (ID_ANY, "80")),
        (",80", (ID_ANY, "80")),
        ("-1:80", (ID_ANY, "80")),
        ("80", (ID_ANY, "80")),  # no delimiter: the default group
        ("7:10:20", (7, "10:20")),  # range-bw ID:MIN:MAX
        (":5000:6000", (ID_ANY, "5000:6000")),
        ("0x10:5", (16, "5")),
        ("010:5", (8, "5")),
        ("0:5", (0, "5")),
        ("1000:", (1000, "")),
        ("-5:80", (-5, "80")),  # rejected later, at attach time
    ],
)
def test_parse_group_param(text, result):
    assert parse_group_param(text) == result


@pytest.mark.parametrize("text", ["abc:80", "10a:80", "1 0:80", "0x:80", "08:80", "+1:80"])
def test_parse_group_param_rejects_non_integer_id(text):
    raises("EINVAL", "Invalid ioband group parameter", parse_group_param, text)


# =============================================================================================
# parse_table: field by field (§2, algorithms §8.1)
# =============================================================================================
def test_parse_table_minimal_line():
    spec = parse_table(table("sda1 1 0 0 none weight"))
    assert spec == TableSpec(0, 2097152, "sda1", "1", 0, 0, "none", "weight", None, None, [])


def test_parse_table_accepts_word_list_and_trailing_newline():
    line = table("sda1 1 0 0 none weight 0 :40")
    assert parse_table(line + "\n") == parse_table(line.split()) == parse_table("  " + line)


@pytest.mark.parametrize("n", range(6))
def test_fewer_than_six_target_arguments(n):
    args = ["sda1", "1", "0", "0", "none", "weight"][:n]
    err = raises("EINVAL", "Requires 6 or more arguments", parse_table, [*HEAD.split(), *args])
    assert f"got {n}" in str(err)


def test_device_group_id_length_limit_is_31():
    spec = parse_table(table(f"sda1 {'x' * 31} 0 0 none weight"))
    assert spec.group_name == "x" * 31
    err = raises("EINVAL", "Ioband device name is too long", parse_table,
                 table(f"sda1 {'x' * 32} 0 0 none weight"))  # fmt: skip
    assert "31" in str(err)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("4", 4), ("0x10", 16), ("010", 8), ("-0", 0), ("32767", SHORT_MAX),
     ("0X7fff", SHORT_MAX), ("4\n", 4)],
)  # fmt: skip
@pytest.mark.parametrize("field", ["io_throttle", "io_limit"])
def test_io_throttle_io_limit_base0(field, text, value):
    args = ["sda1", "1", "0", "0", "none", "weight"]
    args[2 if field == "io_throttle" else 3] = text
    spec = parse_table([*HEAD.split(), *args])
    assert getattr(spec, field) == value


@pytest.mark.parametrize(
    "text", ["08", "09", "-1", "-0x1", "32768", "0x8000", "abc", "4x", "1e3", "4\n\n", "+4", ""]
)
@pytest.mark.parametrize("field", ["io_throttle", "io_limit"])
def test_io_throttle_io_limit_invalid(field, text):
    args = ["sda1", "1", "0", "0", "none", "weight"]
    args[2 if field == "io_throttle" else 3] = text
    err = raises("EINVAL", f"Invalid {field}", parse_table, [*HEAD.split(), *args])
    assert field in str(err)[len(f"Invalid {field}") :]


def test_io_throttle_is_checked_before_io_limit():
    raises("EINVAL", "Invalid io_throttle", parse_table, table("sda1 1 -1 -1 none weight"))


def test_start_must_be_zero_and_length_may_be_zero():
    raises("EINVAL", "Gap in table", parse_table, "1 100 ioband sda1 1 0 0 none weight")
    assert parse_table("0 0 ioband sda1 1 0 0 none weight").length == 0
    for bad in ("-1", "x"):
        line = f"0 {bad} ioband sda1 1 0 0 none weight"
        raises("EINVAL", "Invalid table line", parse_table, line)
    raises("EINVAL", "Invalid table line", parse_table, "x 100 ioband sda1 1 0 0 none weight")


def test_target_type_must_be_ioband():
    raises("EINVAL", "Unknown target type", parse_table, "0 100 linear sda1 1 0 0 none weight")


@pytest.mark.parametrize(
    ("args", "token_base", "default", "groups"),
    [
        ("weight", None, None, []),
        ("weight 0", "0", None, []),
        ("weight 0 :40", "0", "40", []),
        ("weight :40", None, "40", []),  # PRODUCT.md §3: accepted without token_base
        ("weight 2048 :100 1000:80 2000:20", "2048", "100", [(1000, "80"), (2000, "20")]),
        ("weight 0 =40 1000,30 2000=20", "0", "40", [(1000, "30"), (2000, "20")]),
        ("weight 0 ,40", "0", "40", []),
        ("range-bw 0 :0:0", "0", "0:0", []),
        ("range-bw 0 :5000:6000 7:10:20", "0", "5000:6000", [(7, "10:20")]),
        ("range-bw :0:0 2:100:500", None, "0:0", [(2, "100:500")]),
        ("weight 0 :40 0x10:5", "0", "40", [(16, "5")]),
    ],
)
def test_policy_argument_split(args, token_base, default, groups):
    spec = parse_table(table(f"sda1 1 0 0 user {args}"))
    parsed = [parse_group_param(word) for word in spec.groups]
    assert (spec.token_base, spec.default_param, parsed) == (token_base, default, groups)


@pytest.mark.parametrize(
    "args",
    ["weight 0 1000:80", "weight 0 1000:80 2000:20", "range-bw 0 2:100:500",
     "weight 0 1000:80 :40"],
)  # fmt: skip
def test_id_value_groups_without_default_argument_are_rejected(args):
    """PRODUCT.md §3: the original silently ignored them; ioband refuses with a clear error."""
    err = raises("EINVAL", "Invalid ioband group parameter", parse_table,
                 table(f"sda1 1 0 0 user {args}"))  # fmt: skip
    assert ":<default>" in str(err)


def test_group_spec_with_bad_id_after_default():
    raises("EINVAL", "Invalid ioband group parameter", Engine().create, "x",
           table("sda1 1 0 0 user weight 0 :40 abc:80"))  # fmt: skip


@pytest.mark.parametrize(
    "extra", [[""], ["0", ""], ["", ":40"]], ids=["token-empty", "after-token", "before-default"]
)
def test_empty_word_in_word_list_is_an_iobanderror(extra):
    with pytest.raises(IobandError):
        Engine().create("x", [*HEAD.split(), "sda1", "1", "0", "0", "none", "weight", *extra])


# =============================================================================================
# Engine.create: errors and errnos (Appendix B), defaults (§2, §3.2, §5.2)
# =============================================================================================
@pytest.fixture
def e() -> Engine:
    return Engine(hz=1000)


def test_device_lookup_failed_is_enodev():
    e = Engine(resolver=lambda dev: None)
    raises("ENODEV", "Device lookup failed", e.create, "ioband1", table("sda1 1 0 0 none weight"))
    assert not e.devices and not e.device_groups


def test_cant_get_queue_size_is_enxio_only_when_io_limit_defaults():
    e = Engine(resolver=lambda dev: BackingInfo("8:18", None))
    raises("ENXIO", "Can't get queue size", e.create, "ioband1", table("sda1 1 0 0 none weight"))
    assert not e.devices and not e.device_groups
    e.create("ioband1", table("sda1 1 0 64 none weight"))
    assert e.table("ioband1") == f"{HEAD} 8:18 1 4 64 none weight 256 :100"


def test_table_shows_device_as_resolved_major_minor():
    e = Engine(resolver=lambda dev: BackingInfo("8:18", 128))
    e.create("ioband1", table("/dev/sdb2 1 0 0 none weight"))
    assert e.table("ioband1").split()[3] == "8:18"


@pytest.mark.parametrize(
    ("throttle", "limit", "nr_requests", "io_limit", "shown"),
    [
        ("0", "0", 128, 192, "4 0"),  # io_throttle 0 -> 4, io_limit 0 -> 3*128/2
        ("0", "0", 64, 96, "4 0"),
        ("0", "0", 5, 7, "4 0"),  # 3*5//2
        ("0", "0", 1, 4, "4 0"),  # 3*1//2 = 1, raised to io_throttle
        ("10", "400", 128, 400, "10 400"),
        ("10", "5", 128, 10, "10 10"),  # io_limit raised to io_throttle
        ("300", "0", 128, 300, "300 0"),  # default 192 raised to io_throttle 300
        ("0", "2", 128, 4, "4 4"),
        ("32767", "0", 128, 32767, "32767 0"),
        ("0x10", "010", 128, 16, "16 16"),
    ],
)
def test_io_throttle_io_limit_defaults_and_raise(throttle, limit, nr_requests, io_limit, shown):
    """io_limit 0 is still derived (and raised) as dm-ioband does; the table shows it as 0,
    adaptive (issue 12)."""
    e = Engine(resolver=lambda dev: BackingInfo(dev, nr_requests))
    e.create("ioband1", table(f"sda1 1 {throttle} {limit} none weight"))
    assert e.device("ioband1").dp.io_limit == io_limit
    assert e.table("ioband1").split()[5:7] == shown.split()


@pytest.mark.parametrize(
    ("policy", "limit", "token", "carryover", "head"),
    [
        ("weight", "0", 768, 2, ":100"),  # io_limit 192: 192*2*2
        ("default", "0", 768, 2, ":100"),
        ("weight-iosize", "0", 6144, 2, ":100"),  # 768 << 3; (2048 << 3) // 6144
        ("weight", "128", 512, 4, ":100"),
        ("weight-iosize", "128", 4096, 4, ":100"),
        ("weight", "1", 16, 128, ":100"),  # io_limit raised to 4
        ("weight", "32767", 131068, 1, ":100"),  # carryover minimum 1
    ],
)
def test_weight_token_bucket_defaults(e, policy, limit, token, carryover, head):
    e.create("ioband1", table(f"sda1 1 0 {limit} none {policy}"))
    assert e.table("ioband1").split()[-2:] == [str(token), head]
    assert e.device("ioband1").dp.policy.show_device() == f" token={token} carryover={carryover}"


@pytest.mark.parametrize(
    ("limit", "token_base", "shown"),
    [
        ("128", "0", 16384),  # bucket 4096, pool 16384, carryover 4 (RBW-DOC example)
        ("0", "0", 12288),  # io_limit 192: bucket 6144, pool 16384 -> carryover 2
        ("400", "0", 12800),  # bucket 12800, pool 16384 -> carryover 1
        ("128", "100000", 98304),  # carryover 100000 // 4096 = 24
        ("128", "1", 4096),  # raised to the bucket
        ("128", "16384", 16384),
    ],
)
def test_range_bw_displayed_token_is_bucket_times_carryover(e, limit, token_base, shown):
    e.create("ioband1", table(f"sda1 1 0 {limit} none range-bw {token_base}"))
    assert e.table("ioband1").split()[-2:] == [str(shown), ":0:0"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("weight 0 :40", "weight 768 :40"),
        ("weight :40", "weight 768 :40"),
        ("weight 2048 :100", "weight 2048 :100"),
        ("weight 0 :1", "weight 768 :1"),
        ("weight 0 :32767", "weight 768 :32767"),
        ("weight 2147483647", f"weight {INT_MAX} :100"),
        ("weight 0x100 :0x28", "weight 256 :40"),
        ("weight-iosize 0 :40", "weight-iosize 6144 :40"),
        ("default 0 :40", "default 768 :40"),
        ("range-bw", "range-bw 12288 :0:0"),
        ("range-bw 0 :0:0", "range-bw 12288 :0:0"),
        ("range-bw :5000:6000", "range-bw 12288 :5000:6000"),
        ("range-bw 0 :0:6000", "range-bw 12288 :0:6000"),
        ("range-bw 0 :5000:0", "range-bw 12288 :5000:0"),  # PRODUCT.md §3: max 0 = no cap
        ("range-bw 0 =1,2", "range-bw 12288 :1:2"),
        ("range-bw 0 :0:1073741823", "range-bw 12288 :0:1073741823"),
    ],
)
def test_default_group_parameter(e, args, expected):
    e.create("ioband1", table(f"sda1 1 0 0 none {args}"))
    assert e.table("ioband1") == table(f"sda1 1 4 0 none {expected}")  # io_limit 0 shown as 0


@pytest.mark.parametrize("gtype", GROUP_TYPES)
def test_every_group_type_is_accepted(e, gtype):
    e.create("ioband1", table(f"sda1 1 0 0 {gtype} weight"))
    assert e.table("ioband1").split()[7] == gtype


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_is_accepted_and_shown_by_name(e, policy):
    e.create("ioband1", table(f"sda1 1 0 0 none {policy}"))
    assert e.table("ioband1").split()[8] == policy


def test_delimiter_forms_are_equivalent_and_shown_with_colon(e):
    e.create("a", table("sda1 1 0 0 user weight 0 =40 1000,30 2000=20 3000:10"))
    assert e.table("a") == table("sda1 1 4 0 user weight 768 :40 1000:30 2000:20 3000:10")
    e.create("b", table("sda2 2 0 0 user range-bw 0 ,1=2 5=3,4 6:7=8"))
    assert e.table("b") == table("sda2 2 4 0 user range-bw 12288 :1:2 5:3:4 6:7:8")


def test_extra_groups_are_shown_in_ascending_id_order(e):
    e.create("a", table("sda1 1 0 0 user weight 0 :40 2000:20 0x10:5 1000:80 0:7"))
    assert e.table("a") == table("sda1 1 4 0 user weight 768 :40 0:7 16:5 1000:80 2000:20")


def resolve_test_devices(dev: str) -> BackingInfo | None:
    """'nodev' does not exist, 'noq' has no request queue, anything else has 128 requests."""
    if dev == "nodev":
        return None
    return BackingInfo(dev, None if dev == "noq" else 128)


# -- construction errors -----------------------------------------------------------------------
CREATE_ERRORS = [
    # (table args, errno, message prefix)
    ("sda1 1 0 0 none", "EINVAL", "Requires 6 or more arguments"),
    (f"sda1 {'n' * 32} 0 0 none weight", "EINVAL", "Ioband device name is too long"),
    ("sda1 1 08 0 none weight", "EINVAL", "Invalid io_throttle"),
    ("sda1 1 32768 0 none weight", "EINVAL", "Invalid io_throttle"),
    ("sda1 1 0 -1 none weight", "EINVAL", "Invalid io_limit"),
    ("sda1 1 0 0x8000 none weight", "EINVAL", "Invalid io_limit"),
    ("sda1 1 0 0 none foo", "EINVAL", "Invalid policy parameter"),
    ("sda1 1 0 0 none Weight", "EINVAL", "Invalid policy parameter"),
    ("sda1 1 0 0 none weight -1", "EINVAL", "Invalid policy parameter"),
    ("sda1 1 0 0 none weight 2147483648", "EINVAL", "Invalid policy parameter"),
    ("sda1 1 0 0 none weight abc", "EINVAL", "Invalid policy parameter"),
    ("sda1 1 0 0 none weight-iosize 2147483648", "EINVAL", "Invalid policy parameter"),
    ("sda1 1 0 0 none range-bw -1", "EINVAL", "Invalid policy parameter"),
    ("sda1 1 0 0 none range-bw x :0:0", "EINVAL", "Invalid policy parameter"),
    ("sda1 1 0 0 none weight 0 :0", "EINVAL", "Cannot create default ioband group"),
    ("sda1 1 0 0 none weight 0 :-5", "EINVAL", "Cannot create default ioband group"),
    ("sda1 1 0 0 none weight 0 :32768", "EINVAL", "Cannot create default ioband group"),
    ("sda1 1 0 0 none weight 0 :", "EINVAL", "Cannot create default ioband group"),
    ("sda1 1 0 0 none weight 0 :x", "EINVAL", "Cannot create default ioband group"),
    ("sda1 1 0 0 none range-bw 0 :6:5", "EINVAL", "Cannot create default ioband group"),
    ("sda1 1 0 0 none range-bw 0 :5000", "EINVAL", "Cannot create default ioband group"),
    ("sda1 1 0 0 none range-bw 0 :-1:5", "EINVAL", "Cannot create default ioband group"),
    ("sda1 1 0 0 none range-bw 0 :0:1073741824", "EINVAL", "Cannot create default ioband group"),
    ("sda1 1 0 0 none range-bw 0 :1:2:3", "EINVAL", "Cannot create default ioband group"),
    ("sda1 1 0 0 foo weight", "EINVAL", "Cannot set ioband group type"),
    ("sda1 1 0 0 USER weight", "EINVAL", "Cannot set ioband group type"),
    ("sda1 1 0 0 user weight 0 :40 abc:80", "EINVAL", "Invalid ioband group parameter"),
    ("sda1 1 0 0 user weight 0 1000:80", "EINVAL", "Invalid ioband group parameter"),
    ("sda1 1 0 0 none weight 0 :40 1000:80", "EINVAL", "Cannot create ioband group"),
    ("sda1 1 0 0 user weight 0 :40 -5:80", "EINVAL", "Cannot create ioband group"),
    ("sda1 1 0 0 user weight 0 :40 -1:80", "EINVAL", "Cannot create ioband group"),
    ("sda1 1 0 0 user weight 0 :40 :80", "EINVAL", "Cannot create ioband group"),
    ("sda1 1 0 0 user weight 0 :40 1000:0", "EINVAL", "Cannot create ioband group"),
    ("sda1 1 0 0 user weight 0 :40 1000:32768", "EINVAL", "Cannot create ioband group"),
    ("sda1 1 0 0 user weight 0 :40 1000:", "EINVAL", "Cannot create ioband group"),
    ("sda1 1 0 0 user range-bw 0 :0:0 1000:6:5", "EINVAL", "Cannot create ioband group"),
    ("sda1 1 0 0 user range-bw 0 :0:0 1000:5", "EINVAL", "Cannot create ioband group"),
    ("sda1 1 0 0 user weight 0 :40 1000:80 1000:20", "EEXIST", "Cannot create ioband group"),
    ("sda1 1 0 0 user weight 0 :40 1000:80 0x3e8:20", "EEXIST", "Cannot create ioband group"),
]


@pytest.mark.parametrize(("args", "errno_name", "prefix"), CREATE_ERRORS)
def test_create_errors(e, args, errno_name, prefix):
    raises(errno_name, prefix, e.create, "ioband1", table(args))
    assert not e.devices and not e.device_groups


def test_extra_group_id_above_int_max_is_rejected(e):
    raises("EINVAL", "Cannot create ioband group", e.create, "ioband1",
           table("sda1 1 0 0 user weight 0 :40 2147483648:50"))  # fmt: skip


def test_extra_group_id_int_max_is_accepted(e):
    e.create("ioband1", table("sda1 1 0 0 user weight 0 :40 0:1 2147483647:50"))
    assert e.table("ioband1").endswith(":40 0:1 2147483647:50")


def test_error_messages_name_the_field(e):
    err = raises("EINVAL", "Cannot create default ioband group", e.create, "a",
                 table("sda1 1 0 0 none weight 0 :0"))  # fmt: skip
    assert "weight" in str(err) and "1..32767" in str(err)
    err = raises("EINVAL", "Cannot set ioband group type", e.create, "a",
                 table("sda1 1 0 0 x weight"))  # fmt: skip
    assert "'x'" in str(err)
    err = raises("EEXIST", "Cannot create ioband group", e.create, "a",
                 table("sda1 1 0 0 user weight 0 :1 7:1 7:2"))  # fmt: skip
    assert "7" in str(err)


@pytest.mark.parametrize(
    ("args", "prefix"),
    [
        (f"sda1 {'n' * 32} 0 0 none", "Requires 6 or more arguments"),
        (f"sda1 {'n' * 32} x x none weight", "Ioband device name is too long"),
        ("nodev 1 x x foo foo", "Invalid io_throttle"),
        ("nodev 1 0 x foo foo", "Invalid io_limit"),
        ("nodev 1 0 0 foo foo", "Device lookup failed"),
        ("noq 1 0 0 foo foo", "Can't get queue size"),
        ("sda1 1 0 0 foo foo 0 :0", "Invalid policy parameter"),
        ("sda1 1 0 0 foo weight x :0", "Invalid policy parameter"),
        ("sda1 1 0 0 foo weight 0 :0", "Cannot create default ioband group"),
        ("sda1 1 0 0 foo weight 0 :40 1:0", "Cannot set ioband group type"),
        ("sda1 1 0 0 none weight 0 :40 1:0", "Cannot create ioband group"),
    ],
)
def test_error_precedence_follows_constructor_order(args, prefix):
    """algorithms §8.1 lists the constructor checks in order; the first failing one reports."""
    e = Engine(resolver=resolve_test_devices)
    with pytest.raises(IobandError) as info:
        e.create("ioband1", table(args))
    assert str(info.value).startswith(prefix), str(info.value)


@pytest.mark.parametrize(
    ("args", "prefix"),
    [
        ("nodev 1 0 0 user weight 0 :40 abc:80", "Device lookup failed"),
        ("sda1 1 0 0 user foo 0 :40 abc:80", "Invalid policy parameter"),
        ("sda1 1 0 0 foo weight 0 :40 abc:80", "Cannot set ioband group type"),
        ("sda1 1 0 0 none weight 0 :40 1:80 abc:80", "Cannot create ioband group"),
    ],
)
def test_group_spec_parse_errors_come_after_earlier_checks(args, prefix):
    e = Engine(resolver=resolve_test_devices)
    with pytest.raises(IobandError) as info:
        e.create("ioband1", table(args))
    assert str(info.value).startswith(prefix), str(info.value)


def test_existing_device_name_is_refused(e):
    e.create("ioband1", table("sda1 1 0 0 none weight 0 :40"))
    before = snapshot(e)
    raises("EBUSY", "Device 'ioband1' already exists", e.create, "ioband1",
           table("sda2 2 0 0 none weight 0 :10"))  # fmt: skip
    assert snapshot(e) == before


@pytest.mark.parametrize(("args", "errno_name", "prefix"), CREATE_ERRORS)
def test_refused_create_changes_nothing_in_a_shared_device_group(args, errno_name, prefix):
    """PRODUCT.md §4: a refused table leaves every device, group and counter as it was."""
    e = Engine()
    e.create("ioband1", table("sda1 1 0 0 user weight 512 :40 1000:30"))
    e.message("ioband1", "carryover 3")
    shared = args.replace("sda1 1 ", "sda2 1 ", 1)  # same device-group id "1"
    before = snapshot(e)
    raises(errno_name, prefix, e.create, "ioband2", table(shared))
    assert snapshot(e) == before


def test_refused_create_with_a_different_policy_does_not_switch_the_group(e):
    e.create("ioband1", table("sda1 1 0 0 user weight 0 :40 1000:30"))
    before = snapshot(e)
    for bad in ("sda2 1 0 0 foo range-bw 0 :1:2", "sda2 1 0 0 user weight-iosize 0 :40 5:0",
                "sda2 1 0 0 none range-bw 0 :1:2 5:1:2", "sda2 1 0 0 none default -1"):  # fmt: skip
        with pytest.raises(IobandError):
            e.create("ioband2", table(bad))
        assert snapshot(e) == before


# =============================================================================================
# Device groups (§1.2, algorithms §7 "Sharing one ioband_device")
# =============================================================================================
def test_second_table_ignores_io_throttle_io_limit_and_token_base(e):
    e.create("a", table("sda1 share1 10 400 user weight 2048 :100 1000:80"))
    e.create("b", table("sda2 share1 20 500 none weight 512 :50"))
    assert e.table("a") == table("sda1 share1 10 400 user weight 2048 :100 1000:80")
    assert e.table("b") == table("sda2 share1 10 400 none weight 2048 :50")


def test_second_table_with_same_policy_keeps_weights(e):
    e.create("a", table("sda1 1 0 0 user weight 0 :40 1000:30"))
    e.create("b", table("sda2 1 0 0 none weight 0 :10"))
    assert e.table("a") == table("sda1 1 4 0 user weight 768 :40 1000:30")
    # weights are shared across the whole device group (§1.2 Table 1 style)
    tokens = {g.device.name + str(g.id): g.token_initial for g in e.device("a").dp.groups}
    assert tokens == {"a-1": 768 * 40 // 80, "a1000": 768 * 30 // 80, "b-1": 768 * 10 // 80}


def test_second_table_with_a_different_policy_switches_the_group(e):
    e.create("a", table("sda1 share 10 400 user weight 2048 :100 1000:80"))
    # weight -> weight-iosize: weights survive (PRODUCT.md §3), token_base from the new table
    e.create("b", table("sda2 share 0 0 none weight-iosize 0 :70"))
    assert e.table("a") == table("sda1 share 10 400 user weight-iosize 12800 :100 1000:80")
    assert e.table("b") == table("sda2 share 10 400 none weight-iosize 12800 :70")
    # -> range-bw: every existing group is reset to 0:0, the new device gets its own parameter
    e.create("c", table("sda3 share 0 0 none range-bw 0 :1:2"))
    assert e.table("a") == table("sda1 share 10 400 user range-bw 12800 :0:0 1000:0:0")
    assert e.table("b") == table("sda2 share 10 400 none range-bw 12800 :0:0")
    assert e.table("c") == table("sda3 share 10 400 none range-bw 12800 :1:2")
    # -> default (a weight policy again): weights back to 100, token_base of the new table
    e.create("d", table("sda4 share 0 0 none default 999 :3"))
    assert e.table("a") == table("sda1 share 10 400 user default 999 :100 1000:100")
    assert e.table("c") == table("sda3 share 10 400 none default 999 :100")
    assert e.table("d") == table("sda4 share 10 400 none default 999 :3")


def test_default_and_weight_are_different_names_for_the_switch(e):
    e.create("a", table("sda1 1 0 0 user weight 256 :40 7:5"))
    e.create("b", table("sda2 1 0 0 none default 0 :10"))
    assert e.table("a") == table("sda1 1 4 0 user default 768 :40 7:5")


def test_different_ids_are_independent(e):
    # §7.1 "Two device groups"
    e.create("ioband1", table("sda1 1 0 0 none weight 0 :80"))
    e.create("ioband2", table("sda2 1 0 0 none weight 0 :20"))
    e.create("ioband3", table("sdb3 2 16 64 none weight 0 :60"))
    e.create("ioband4", table("sdb4 2 0 0 none weight 0 :40"))
    assert e.device("ioband1").dp is e.device("ioband2").dp
    assert e.device("ioband3").dp is not e.device("ioband1").dp
    e.message("ioband1", "token 100")
    assert e.table("ioband2").endswith(" 100 :20")
    assert e.table("ioband4") == table("sdb4 2 16 64 none weight 256 :40")


def test_device_group_is_freed_with_its_last_member(e):
    e.create("a", table("sda1 g 10 400 none weight 0 :40"))
    e.create("b", table("sda2 g 0 0 none weight 0 :10"))
    e.remove("a")
    assert e.table("b") == table("sda2 g 10 400 none weight 1600 :10")
    e.remove("b")
    assert "g" not in e.device_groups
    e.create("c", table("sda1 g 0 0 none weight"))
    assert e.table("c") == table("sda1 g 4 0 none weight 768 :100")


def test_queue_size_is_checked_even_when_joining_a_device_group():
    """algorithms §8.1: the io_limit default (step 6) is resolved before the device group is
    looked up, so a second table with io_limit 0 on a queue-less device fails with ENXIO."""
    e = Engine(resolver=lambda dev: BackingInfo(dev, None if dev == "noq" else 128))
    e.create("a", table("sda1 1 0 0 none weight"))
    raises("ENXIO", "Can't get queue size", e.create, "b", table("noq 1 0 0 none weight"))
    e.create("b", table("noq 1 0 5 none weight"))
    assert e.table("b") == table("noq 1 4 0 none weight 768 :100")  # the group's, adaptive


# =============================================================================================
# Table examples (§4.1, §7.1): round trip — the table of a device re-creates an identical one
# =============================================================================================
DOC_TABLES = [
    # [DOC-late] example with its oddities corrected (dm name / target swapped, '128' for share1)
    "0 32129937 ioband 8:29 share1 10 400 user weight 2048 :100 1000:80 2000:20",
    # [RBW-DOC]
    "0 305235000 ioband 8:18 1 4 128 cgroup range-bw 16384 :0:0 2:100:500 3:700:1000 4:30000:35000",
    # dm-devel 2009-May/msg00135
    "0 112455000 ioband 8:18 share1 4 256 user weight 512 :40",
]


@pytest.mark.parametrize("line", DOC_TABLES)
def test_documented_tables_round_trip_exactly(e, line):
    e.create("ioband1", line)
    assert e.table("ioband1") == line
    e2 = Engine()
    e2.create("ioband1", e.table("ioband1"))
    assert e2.table("ioband1") == line


def test_rbw_doc_message_sequence_reproduces_its_table():
    """[RBW-DOC] / §6.7 step 4 (io_limit given as 128: the doc's kernel used nr_requests)."""
    e = Engine()
    e.create("ioband1", "0 305235000 ioband 8:18 1 0 128 none range-bw 0 :0:0")
    for msg in ("type cgroup", "policy range-bw", "attach 2", "attach 3", "attach 4",
                "range-bw 2:100:500", "range-bw 3:700:1000", "range-bw 4:30000:35000"):  # fmt: skip
        e.message("ioband1", msg)
    assert e.table("ioband1") == DOC_TABLES[1]


def test_full_create_line_example(e):
    # §7.1 "Full create line": token base 2048, io_throttle 10, io_limit 400
    line = table("/dev/sda1 share1 10 400 user weight 2048 :100 1000:80 2000:20")
    e.create("ioband1", line)
    assert e.table("ioband1") == line
    assert e.device("ioband1").dp.policy.show_device() == " token=2048 carryover=1"


def test_getting_started_example_shares(e):
    # §7.1 "Getting started" + "Extra groups": 30/20/40/10 of the shared bucket
    e.create("ioband1", table("/dev/sda1 1 0 0 none weight 0 :40"))
    e.create("ioband2", table("/dev/sda2 1 0 0 none weight 0 :10"))
    assert e.table("ioband1") == table("/dev/sda1 1 4 0 none weight 768 :40")  # io_limit 0: 0
    assert e.table("ioband2") == table("/dev/sda2 1 4 0 none weight 768 :10")
    for msg in ("type user", "attach 1000", "attach 2000", "weight 1000:30", "weight 2000:20"):
        e.message("ioband1", msg)
    assert e.table("ioband1") == table("/dev/sda1 1 4 0 user weight 768 :40 1000:30 2000:20")
    shares = {(g.device.name, g.id): g.token_initial for g in e.device("ioband1").dp.groups}
    assert shares == {
        ("ioband1", -1): 768 * 40 // 100,
        ("ioband1", 1000): 768 * 30 // 100,
        ("ioband1", 2000): 768 * 20 // 100,
        ("ioband2", -1): 768 * 10 // 100,
    }


WORD = st.text(
    alphabet=st.characters(
        whitelist_categories=("L", "N", "P", "S"), whitelist_characters="-:=,0x"
    ),
    min_size=1,
    max_size=8,
)
ATOM = st.sampled_from(
    ["0", "1", "-1", "0x10", "010", "08", "32767", "32768", "2147483648", ":", "=", ",", ":40",
     ":0", "1000:30", "-1:5", ":1:2", "1:2:3", "5:0:0", "weight", "weight-iosize", "default",
     "range-bw", "none", "user", "pid", "cgroup", "ioband", "sda1", "abc"]
)  # fmt: skip
WORDS = st.lists(st.one_of(ATOM, WORD), max_size=14)


@FUZZ
@given(WORDS)
def test_fuzz_parse_table_parses_or_raises_iobanderror(words):
    for line in (["0", "100", "ioband", *words], words):
        try:
            spec = parse_table(line)
        except IobandError as err:
            assert err.errno_name == "EINVAL"
        else:
            assert isinstance(spec, TableSpec)


@FUZZ
@given(WORDS)
def test_fuzz_create_creates_or_raises_and_changes_nothing(words):
    e = Engine()
    e.create("base", table("sda1 1 0 0 user weight 0 :40 1000:30"))
    before = snapshot(e)
    try:
        e.create("fuzz", ["0", "100", "ioband", *words])
    except IobandError as err:
        assert err.errno_name in {"EINVAL", "EEXIST", "ENODEV", "ENXIO", "EBUSY"}
        assert snapshot(e) == before
    else:
        shown = parse_table(e.table("fuzz"))
        assert shown.group_name in e.device_groups
        assert e.table("base").split()[4] == "1"


VALID_TABLE = st.builds(
    lambda throttle, limit, gtype, policy, base, head, extra, name: (
        f"0 1000 ioband sda1 {name} {throttle} {limit} {gtype} {policy} {base} {head}"
        + "".join(f" {gid}:{v}" for gid, v in extra.items())
    ),
    st.integers(0, 64),
    st.sampled_from([0, 1, 2, 64, 128, 192, 1000, 32767]),
    st.sampled_from([t for t in GROUP_TYPES if t != "none"]),
    st.sampled_from(["weight", "weight-iosize", "default"]),
    st.integers(0, INT_MAX),
    st.integers(1, SHORT_MAX).map(lambda w: f":{w}"),
    st.dictionaries(st.integers(0, INT_MAX), st.integers(1, SHORT_MAX), max_size=4),
    st.text(alphabet="abc123_-.", min_size=1, max_size=31),
)
VALID_RANGE_TABLE = st.builds(
    lambda limit, base, lo, extra: (
        f"0 1000 ioband sda1 g 0 {limit} user range-bw {base} :{lo[0]}:{lo[0] + lo[1]}"
        + "".join(f" {gid}:{a}:{a + b}" for gid, (a, b) in extra.items())
    ),
    st.sampled_from([0, 4, 128, 32767]),
    st.integers(0, 10**7),
    st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
    st.dictionaries(
        st.integers(0, INT_MAX),
        st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)),
        max_size=4,
    ),
)


@FUZZ
@given(st.one_of(VALID_TABLE, VALID_RANGE_TABLE))
def test_fuzz_table_output_recreates_an_identical_device(line):
    e = Engine()
    e.create("ioband1", line)
    shown = e.table("ioband1")
    e2 = Engine()
    e2.create("ioband1", shown)
    assert e2.table("ioband1") == shown
    assert snapshot(e2) == snapshot(e)
