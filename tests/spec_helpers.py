"""Helpers shared by the spec-conformance tests (grammar, messages, outputs)."""

from __future__ import annotations

import pytest

from ioband.core.engine import Engine
from ioband.errors import IobandError

HEAD = "0 2097152 ioband"
GROUP_TYPES = ("none", "pgrp", "pid", "node", "cpuset", "cgroup", "user", "uid", "gid", "client")
POLICIES = ("default", "weight", "weight-iosize", "range-bw")


def table(args: str) -> str:
    return f"{HEAD} {args}"


def raises(errno_name: str, prefix: str, fn, *args):
    """Call ``fn``; it must raise IobandError with this errno and a message starting ``prefix``."""
    with pytest.raises(IobandError) as info:
        fn(*args)
    err = info.value
    assert err.errno_name == errno_name, err.describe()
    assert str(err).startswith(prefix), str(err)
    return err


def snapshot(e: Engine) -> dict:
    """Everything observable about an engine's configuration and counters."""
    attrs = (
        "weight", "token", "token_initial", "limit", "limit_bucket", "min_bw", "max_bw",
        "min_bw_token", "max_bw_token", "time_slice",
    )  # fmt: skip
    out: dict = {"devices": sorted(e.devices), "device_groups": sorted(e.device_groups)}
    for name in sorted(e.devices):
        dev = e.device(name)
        dp = dev.dp
        out[name] = (
            e.table(name),
            e.status(name),
            e.status(name, "diskstats"),
            dp.policy.show_device(),
            dev.type_name,
            dp.io_throttle,
            dp.io_limit,
            dp.policy_name,
            getattr(dp.policy, "token_bucket", None),
            getattr(dp.policy, "carryover", None),
            tuple((g.id, tuple(getattr(g, a, None) for a in attrs)) for g in dev.all_groups()),
        )
    return out
