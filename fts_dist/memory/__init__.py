"""Memory planning before launch: per phase and per rank, for a schedule, a strategy and a world size."""

from fts_dist.memory.layouts import Layout, ParamShape, RankBytes, rank_bytes, transition_bytes
from fts_dist.memory.plan import (
    MemoryPlan,
    PhasePlan,
    fit_to_budget,
    format_bytes,
    meta_device,
    over_budget,
    parse_bytes,
    plan_memory,
)

__all__ = [
    "Layout",
    "MemoryPlan",
    "ParamShape",
    "PhasePlan",
    "RankBytes",
    "fit_to_budget",
    "format_bytes",
    "meta_device",
    "over_budget",
    "parse_bytes",
    "plan_memory",
    "rank_bytes",
    "transition_bytes",
]
