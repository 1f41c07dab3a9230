"""A per-phase, per-rank memory plan for a schedule, a strategy and a world size, made before launching.

The model is built on the meta device (no weight is allocated: a 70B model plans on a laptop), the schedule is
resolved against its parameter names exactly as the callback resolves it, and each phase's trainable set (its own
parameters and every earlier phase's, less any frozen again) is laid out as the strategy lays it out
(:mod:`fts_dist.memory.layouts`). Sharding that a module applies in ``configure_model`` is modelled, not run: FSDP
units are the model's repeated blocks (or the module classes given), the rest is the root unit. Given a batch, each
phase's activations are traced (:mod:`fts_dist.memory.activations`); a phase's peak is its model states plus the
larger of its activations and its transition's extra peak (a transition runs between steps).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from fts_dist.errors import FTSConfigError
from fts_dist.memory.activations import Step, trace_activations
from fts_dist.memory.layouts import (
    STRATEGIES,
    Layout,
    ParamShape,
    RankBytes,
    ZeroBuckets,
    rank_bytes,
    transition_bytes,
)
from fts_dist.schedule import ScheduleSource, find_blocks, load_schedule

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


@dataclass
class PhasePlan:
    """One phase: what trains, and the bytes the most loaded rank holds (``transition``: the extra peak while
    entering the phase)."""

    phase: int
    trainable_params: int
    bytes_per_rank: dict[str, int | None]


@dataclass
class MemoryPlan:
    """Every phase's plan, and what it assumed. ``to_json`` is the stable form tools may rely on."""

    phases: list[PhasePlan]
    world_size: int
    strategy: str
    assumptions: list[str] = field(default_factory=list)
    budget: int | None = None
    host_bytes_per_rank: list[int] = field(default_factory=list)

    @property
    def binding(self) -> PhasePlan:
        """The phase that needs the most memory."""
        return max(self.phases, key=lambda p: p.bytes_per_rank["total"] or 0)

    def fits(self, depth: int) -> bool:
        total = self.phases[depth].bytes_per_rank["total"] or 0
        return self.budget is None or total <= self.budget

    def to_json(self) -> str:
        plan = {"phases": [asdict(p) for p in self.phases], "world_size": self.world_size, "strategy": self.strategy}
        return json.dumps({**plan, "assumptions": self.assumptions}, indent=1)

    def describe(self) -> str:
        """A table per phase, the binding phase and its headroom, and the assumptions."""
        keys = ["params", "grads", "masters", "optimizer_state", "buffers", "activations", "transition", "total"]
        lines = ["| phase | trainable | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
        for plan in self.phases:
            cells = [format_bytes(plan.bytes_per_rank[k]) for k in keys]
            lines.append(f"| {plan.phase} | {plan.trainable_params:,} | " + " | ".join(cells) + " |")
        binding = self.binding
        lines.append(f"\nbinding phase: {binding.phase} ({format_bytes(binding.bytes_per_rank['total'])} per rank)")
        if self.budget is not None:
            headroom = self.budget - (binding.bytes_per_rank["total"] or 0)
            verdict = "fits" if headroom >= 0 else "does NOT fit"
            lines[-1] += f"; {verdict} in {format_bytes(self.budget)}, headroom {format_bytes(headroom)}"
        return "\n".join([*lines, "assumptions:", *(f"- {a}" for a in self.assumptions)])


def plan_memory(
    schedule: ScheduleSource,
    model: torch.nn.Module,
    strategy: str,
    world_size: int,
    *,
    unit_classes: Sequence[str] = (),
    batch: Any = None,
    step: Step | None = None,
    **options: Any,
) -> MemoryPlan:
    """Plan the bytes per rank of every phase of ``schedule`` for ``model`` (built on any device; the meta device
    allocates nothing) under ``strategy`` (``ddp``, ``fsdp2``, ``fsdp1`` or ``deepspeed`` with ``zero_stage``).
    ``unit_classes`` name the module classes FSDP wraps (default: the repeated blocks). With ``batch`` (one rank's
    micro-batch: a tensor, or a tuple, list or dict of them, e.g. on the meta device), each phase's activations are
    traced through ``step(model, batch)`` (default: the forward; see :func:`~fts_dist.memory.activations.
    trace_activations`). ``options`` are :func:`plan_from_shapes`' (``zero_stage``, ``offload``, ``precision``,
    ``optimizer``, ``budget``, ``zero``).

    Example::

        >>> from torch import nn
        >>> with torch.device("meta"):
        ...     model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2))
        >>> plan = plan_memory({0: {"params": ["2.*"]}, 1: {"params": ["1.*"]}}, model, "ddp", 2)
        >>> [p.trainable_params for p in plan.phases], plan.phases[1].bytes_per_rank["optimizer_state"]
        ([18, 90], 736)
    """
    named = list(model.named_parameters())
    units = _unit_of(model, [name for name, _ in named], unit_classes)
    shapes = [ParamShape(name, tuple(p.shape), units.get(name, "")) for name, p in named]
    if batch is None:
        return plan_from_shapes(schedule, shapes, strategy, world_size, **options)
    precision = options.get("precision", "32-true")
    half = precision == "bf16-true" or (precision == "bf16-mixed" and _strategy_kind(strategy, options.get(
        "zero_stage")).startswith("zero"))  # fmt: skip
    resolved = load_schedule(schedule, [name for name, _ in named])
    trainable = [resolved.schedule.trainable_at(d) for d in range(len(resolved.schedule.phases))]
    try:
        activations = trace_activations(
            model, batch, trainable, dtype=torch.bfloat16 if half else torch.float32,
            autocast=torch.bfloat16 if precision == "bf16-mixed" and not half else None, step=step,
        )  # fmt: skip
    except Exception as err:
        raise FTSConfigError(
            f"could not trace activations for the batch given ({err}). Check the batch's shape and dtype against "
            "the model's forward, or plan without a batch.",
            key="batch_shape",
        ) from err
    return plan_from_shapes(schedule, shapes, strategy, world_size, activations=activations, **options)


def plan_from_shapes(
    schedule: ScheduleSource,
    shapes: Sequence[ParamShape],
    strategy: str,
    world_size: int,
    *,
    zero_stage: int | None = None,
    offload: bool = False,
    precision: str = "32-true",
    optimizer: str = "adamw",
    budget: int | str | None = None,
    zero: ZeroBuckets | dict[str, Any] | None = None,
    activations: Sequence[int] | None = None,
) -> MemoryPlan:
    """:func:`plan_memory` over parameter shapes (in ``named_parameters()`` order); shapes without a unit are given
    the model's repeated blocks as FSDP units. ``zero``: DeepSpeed's buckets, or a config's ``zero_optimization``
    section (default: Lightning's ``DeepSpeedStrategy`` arguments); ``activations``: bytes per phase, traced."""
    kind = _strategy_kind(strategy, zero_stage)
    if precision not in PRECISIONS:
        raise FTSConfigError(f"precision {precision!r} is not one of {PRECISIONS}.", key="precision")
    if world_size < 1:
        raise FTSConfigError(f"world size must be at least 1, got {world_size}.", key="world_size")
    deepspeed = kind.startswith("zero")
    half = precision == "bf16-true" or (deepspeed and precision == "bf16-mixed")
    buckets = ZeroBuckets.from_config(zero) if isinstance(zero, dict) else zero or ZeroBuckets()
    layout = Layout(kind, world_size, 2 if half else 4, optimizer, offload and deepspeed, zero=buckets)
    names = [s.name for s in shapes]
    if not any(s.unit for s in shapes):
        units = _unit_of(None, names, ())
        shapes = [ParamShape(s.name, s.shape, units.get(s.name, "")) for s in shapes]
    resolved = load_schedule(schedule, names)
    phases, host = [], []
    for depth in range(len(resolved.schedule.phases)):
        trainable = set(resolved.schedule.trainable_at(depth))
        groups = [[n for n in p.params if n in trainable] for p in resolved.schedule.phases[: depth + 1]]
        held = rank_bytes(layout, shapes, groups)
        kept = [[n for n in p.params if n in trainable] for p in resolved.schedule.phases[:depth]]
        transition = transition_bytes(layout, shapes, kept) if depth else 0
        numel = sum(s.numel for s in shapes if s.name in trainable)
        traced = None if activations is None else activations[depth]
        phases.append(PhasePlan(depth, numel, _bytes(held, transition, traced)))
        host.append(held.host)
    limit = parse_bytes(budget) if budget is not None else None
    notes = _assumptions(layout, precision, activations is not None)
    return MemoryPlan(phases, world_size, strategy_label(kind), notes, limit, host)


def fit_to_budget(schedule: dict[int, dict[str, Any]], plan: MemoryPlan) -> tuple[dict[int, dict[str, Any]], str]:
    """``schedule`` cut after its deepest phase before the first that does not fit ``plan``'s budget, and a line
    saying where it stopped and why."""
    assert plan.budget is not None
    over = next((p for p in plan.phases if not plan.fits(p.phase)), None)
    if over is None:
        return schedule, f"every phase fits {format_bytes(plan.budget)} per rank"
    if over.phase == 0:
        raise FTSConfigError(
            f"Phase 0 alone needs {format_bytes(over.bytes_per_rank['total'])} per rank, over the budget of "
            f"{format_bytes(plan.budget)}: raise the budget or the world size, or shard more (fsdp2, deepspeed).",
            phase=0,
            key="memory_budget",
        )
    kept = {depth: dict(phase) for depth, phase in schedule.items() if int(depth) < over.phase}  # the caller's stay
    last = kept[max(kept, key=int)]
    last.pop("max_transition_epoch", None)  # the last phase runs to the end of training
    return kept, (
        f"stopped at phase {over.phase - 1}: phase {over.phase} would need "
        f"{format_bytes(over.bytes_per_rank['total'])} per rank, over the budget of {format_bytes(plan.budget)}"
    )


def over_budget(plan: MemoryPlan) -> list[str]:
    """One message per phase that does not fit ``plan``'s budget: which phase, its bytes, what to do."""
    if plan.budget is None:
        return []
    return [
        f"phase {p.phase} needs {format_bytes(p.bytes_per_rank['total'])} per rank, over the budget of "
        f"{format_bytes(plan.budget)} (params {format_bytes(p.bytes_per_rank['params'])}, optimizer state "
        f"{format_bytes(p.bytes_per_rank['optimizer_state'])}): end the schedule before it, shard more, or add ranks"
        for p in plan.phases
        if not plan.fits(p.phase)
    ]


def strategy_label(kind: str) -> str:
    return {"zero1": "deepspeed-zero1", "zero2": "deepspeed-zero2", "zero3": "deepspeed-zero3"}.get(kind, kind)


@contextlib.contextmanager
def meta_device() -> Iterator[None]:
    """Build modules on the meta device: shapes and names, no storage."""
    with torch.device("meta"):
        yield


def parse_bytes(value: int | str) -> int:
    """``80GiB``, ``80GB``, ``512MiB`` or a number of bytes."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(i?)B?\s*", value, flags=re.IGNORECASE)
    if not match:
        raise FTSConfigError(f"cannot read {value!r} as a size; write e.g. 80GiB or 512MB.", key="budget")
    number, prefix, binary = match.groups()
    power = "KMGT".find(prefix.upper()) + 1 if prefix else 0
    return int(float(number) * (1024 if binary or not prefix else 1000) ** power)


def format_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size, unit = float(value), 0
    while abs(size) >= 1024 and unit < len(_UNITS) - 1:
        size, unit = size / 1024, unit + 1
    return f"{size:.2f} {_UNITS[unit]}" if unit else f"{int(size)} B"


def _strategy_kind(strategy: str, zero_stage: int | None) -> str:
    """A plan's strategy from ours (ddp, fsdp2, fsdp1, deepspeed) or Lightning's registry names (``ddp_spawn``,
    ``fsdp``, ``model_parallel``, ``deepspeed_stage_2``, ...)."""
    if strategy.startswith("deepspeed_stage_"):
        strategy, zero_stage = "deepspeed", int(strategy.removeprefix("deepspeed_stage_")[0])
    strategy = {"fsdp": "fsdp1", "model_parallel": "fsdp2"}.get(strategy, strategy)
    if strategy.startswith("ddp"):
        return "ddp"
    if strategy == "deepspeed":
        if zero_stage not in (1, 2, 3):
            raise FTSConfigError("--strategy deepspeed needs --zero-stage 1, 2 or 3.", key="zero_stage")
        return f"zero{zero_stage}"
    if strategy not in STRATEGIES[:3]:
        raise FTSConfigError(f"strategy {strategy!r} is not one of ddp, fsdp2, fsdp1, deepspeed.", key="strategy")
    return strategy


def _unit_of(model: torch.nn.Module | None, names: list[str], unit_classes: Sequence[str]) -> dict[str, str]:
    """The FSDP unit (module path) of each parameter: modules of ``unit_classes``, else each repeated block."""
    prefixes: list[str] = []
    if unit_classes and model is not None:
        prefixes = [f"{path}." for path, m in model.named_modules() if path and type(m).__name__ in unit_classes]
    else:
        with contextlib.suppress(FTSConfigError):  # no repeated blocks: one unit, the root
            layout = find_blocks(names)
            prefixes = [f"{layout.container}{index}." for index, _ in layout.blocks]
    units = {}
    for name in names:
        matches = [prefix for prefix in prefixes if name.startswith(prefix)]
        units[name] = max(matches, key=len) if matches else ""
    return units


def _bytes(held: RankBytes, transition: int, activations: int | None) -> dict[str, int | None]:
    return {
        "params": held.params,
        "grads": held.grads,
        "masters": held.masters,
        "optimizer_state": held.optimizer_state,
        "buffers": held.buffers,
        "activations": activations,
        "transition": transition,
        "total": held.total + max(transition, activations or 0),
    }


def _assumptions(layout: Layout, precision: str, traced: bool) -> list[str]:
    notes = [
        f"{layout.strategy} on {layout.world_size} rank(s), {precision}, {layout.optimizer}: weights "
        f"{layout.param_bytes} bytes per element; optimizer state per trainable element as the optimizer keeps it",
        "activations: what one step saves for backward, traced per phase with fake tensors (the frozen prefix saves "
        "none); allocator slack and the backward's transient buffers are not counted"
        if traced
        else "activations are not traced (null): give a batch shape, or add what the batch needs on top",
        "total: model states plus the larger of activations and the transition's extra peak (a transition runs "
        "between steps, when no activation is held)",
        "the most loaded rank is reported (rank 0 holds the first, largest, shards)",
    ]
    if layout.strategy in ("fsdp2", "fsdp1"):
        notes.append("FSDP units: the model's repeated blocks (or the given classes) and the root; buffers: one unit "
                     "all-gathered whole")  # fmt: skip
    if layout.strategy == "ddp":
        notes.append(
            "buffers: DDP's gradient buckets, as large as the trainable gradients (gradient_as_bucket_view=False)"
        )
    if layout.strategy.startswith("zero"):
        zero = layout.zero
        notes.append(f"ZeRO pads each optimizer group to a multiple of {layout.zero_alignment} x world elements")
        notes.append(
            f"buffers: DeepSpeed's reduce bucket of {zero.reduce_bucket_size:,} elements"
            + (" (twice: overlap_comm)" if zero.overlap_comm and layout.strategy != "zero3" else "")
            + ("" if zero.contiguous_gradients else ", not held: contiguous_gradients is off")
            + (
                f"; the largest module's parameters and the {zero.prefetch_bucket_size:,}-element prefetch bucket "
                f"gathered; parameters of at most {zero.param_persistence_threshold:,} elements held whole"
                if layout.strategy == "zero3"
                else ""
            )
        )
    if layout.offload:
        notes.append("optimizer offload: fp32 masters and optimizer state live in host memory (host_bytes_per_rank)")
    return notes
