"""The experiment suite: named experiments that prove (or disprove) the scheduler.

``ioband experiment NAME|all [--out DIR]`` runs them (``runner.main``). Each experiment is one
module with ``NAME``, ``TITLE`` and ``run(ctx) -> Outcome`` (see ``base``); add one by writing the
module and listing it in ``MODULES``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

MODULES = (
    "partitions",
    "users",
    "weight_iosize",
    "range_bw_bands",
    "idle_donation",
    "shallow_vs_deep",
    "scale_groups",
    "knob_sweep",
    "fair_by_default",
    "mclock",
    "hierarchy",
    "cluster_shares",
)


def registry() -> dict[str, ModuleType]:
    """Experiment name -> module, in suite order."""
    out = {}
    for mod in MODULES:
        m = importlib.import_module(f"ioband.experiments.{mod}")
        out[m.NAME] = m
    return out


def names() -> list[str]:
    return list(registry())
