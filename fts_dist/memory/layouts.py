"""How many bytes each strategy holds per rank for a set of parameters of which some train: pure arithmetic over
parameter shapes, no torch and no process group.

Each strategy's layout is modelled as the code this project runs measures it (tests/distributed compare the two):

- DDP keeps every parameter whole on every rank, a gradient for each trainable one, optimizer state over them, and
  gradient buckets as large as the trainable gradients (``gradient_as_bucket_view=False``, DDP's default);
- FSDP2 shards each parameter along dim 0 (a rank holds ``ceil(dim0 / world)`` rows at most), and gradients and
  optimizer state shard with it; it all-gathers one unit at a time;
- FSDP1 (``use_orig_params=True``) flattens each unit's parameters into one flat parameter (each starting on a
  16-byte boundary) padded to a multiple of the world; a unit with any trainable parameter keeps its whole flat
  gradient shard (pytorch issue 104690), while optimizer state covers only the trainable parameters' elements
  within the rank's shard;
- ZeRO 1/2 keep the module's weights whole on every rank and partition each optimizer group (padded to an
  alignment) into fp32 masters and optimizer state; ZeRO-1 keeps whole gradients, ZeRO-2 partitioned ones; with
  contiguous gradients, each rank holds the reduce bucket (twice when communication overlaps backward);
- ZeRO-3 partitions every parameter (``ceil(numel / world)`` elements a rank) but keeps those at or under the
  persistence threshold whole as well, its fp32 master (none of its own when the weights are fp32 already and the
  optimizer is not offloaded), gradients
  (fp32) and optimizer state; it holds one reduce bucket and the parameters it gathers (the largest module's and the
  prefetch bucket).

A rank's figure is the largest over the ranks (rank 0 holds the first, largest, shards).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

STRATEGIES = ("ddp", "fsdp2", "fsdp1", "zero1", "zero2", "zero3")
OPTIMIZER_MOMENTS = {"adamw": 2, "adam": 2, "sgd": 1, "sgd-plain": 0}  # state tensors per parameter
FP32 = 4


@dataclass(frozen=True)
class ParamShape:
    """A parameter as a layout sees it: its name, shape, and the sharding unit (module path) that holds it."""

    name: str
    shape: tuple[int, ...]
    unit: str = ""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class ZeroBuckets:
    """DeepSpeed's communication buffers (sizes in elements). The defaults are Lightning's ``DeepSpeedStrategy``
    arguments (``strategy="deepspeed_stage_2"``); :meth:`from_config` reads a DeepSpeed config's
    ``zero_optimization`` section with DeepSpeed's own defaults."""

    reduce_bucket_size: int = 200_000_000
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    prefetch_bucket_size: int = 50_000_000  # ZeRO-3
    param_persistence_threshold: int = 100_000  # ZeRO-3: parameters this small stay whole on every rank

    @classmethod
    def from_config(cls, zero_optimization: dict[str, Any]) -> ZeroBuckets:
        stage = int(zero_optimization.get("stage", 0))
        overlap = zero_optimization.get("overlap_comm")
        return cls(
            reduce_bucket_size=int(zero_optimization.get("reduce_bucket_size", 500_000_000)),
            overlap_comm=stage == 3 if overlap is None else bool(overlap),
            contiguous_gradients=bool(zero_optimization.get("contiguous_gradients", True)),
            prefetch_bucket_size=int(zero_optimization.get("stage3_prefetch_bucket_size", 50_000_000)),
            param_persistence_threshold=int(zero_optimization.get("stage3_param_persistence_threshold", 100_000)),
        )


@dataclass(frozen=True)
class Layout:
    """How a run holds its parameters: the strategy, world size, bytes per weight element, optimizer."""

    strategy: str
    world_size: int
    param_bytes: int = FP32  # 2 for bf16 weights
    optimizer: str = "adamw"
    offload: bool = False  # ZeRO: fp32 masters and optimizer state in host memory
    zero_alignment: int = 2  # elements: DeepSpeed pads each group to a multiple of alignment x world
    zero: ZeroBuckets = field(default_factory=ZeroBuckets)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; one of {STRATEGIES}")
        if self.optimizer not in OPTIMIZER_MOMENTS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; one of {tuple(OPTIMIZER_MOMENTS)}")


@dataclass(frozen=True)
class RankBytes:
    """Bytes one rank holds, by kind (``host`` holds what ZeRO's offload keeps off the accelerator)."""

    params: int
    grads: int
    masters: int
    optimizer_state: int
    buffers: int
    host: int = 0

    @property
    def total(self) -> int:
        return self.params + self.grads + self.masters + self.optimizer_state + self.buffers


def rank_bytes(layout: Layout, params: Sequence[ParamShape], groups: Sequence[Sequence[str]]) -> RankBytes:
    """What the most loaded rank holds in steady state when the parameters named in ``groups`` train, one optimizer
    group each (the order of a schedule's phases)."""
    trainable = {name for group in groups for name in group}
    by_name = {p.name: p for p in params}
    train = [p for p in params if p.name in trainable]
    kind, world, width = layout.strategy, layout.world_size, layout.param_bytes
    moments = OPTIMIZER_MOMENTS[layout.optimizer]
    steps = FP32 * len(train) if moments == 2 else 0  # Adam's step: one fp32 scalar tensor per parameter
    if kind == "ddp":
        grads = sum(p.numel for p in train) * width
        buckets = grads if world > 1 else 0  # one process runs without DDP
        return RankBytes(_numel(params) * width, grads, 0, grads * moments + steps, buckets)
    if kind == "fsdp2":
        local = {p.name: _dim0_shard(p.shape, world) for p in params}
        trained = sum(local[p.name] for p in train)
        gather = max((_numel(unit) for unit in _units(params).values()), default=0) * width
        return RankBytes(sum(local.values()) * width, trained * width, 0, trained * width * moments + steps, gather)
    if kind == "fsdp1":
        return _fsdp1(layout, params, trainable, moments, steps)
    group_numels = [sum(by_name[name].numel for name in group) for group in groups if group]
    group_steps = FP32 * len(group_numels) if moments == 2 else 0  # DeepSpeed's Adam: one step tensor per group
    zero = layout.zero
    reduce_bucket = zero.reduce_bucket_size * width if zero.contiguous_gradients else 0
    if kind in ("zero1", "zero2"):
        partitions = sum(_ceil_to(numel, layout.zero_alignment * world) // world for numel in group_numels)
        grads = sum(p.numel for p in train) * width if kind == "zero1" else partitions * width
        state = partitions * FP32 * moments + group_steps
        buckets = reduce_bucket * (2 if zero.overlap_comm else 1)
        return _offloaded(layout, RankBytes(_numel(params) * width, grads, partitions * FP32, state, buckets))
    partitions = sum(math.ceil(p.numel / world) for p in train)  # zero3
    # fp32 weights are their own masters, unless the optimizer runs on the host (offload copies them there)
    masters = 0 if width == FP32 and not layout.offload else partitions * FP32
    state = partitions * FP32 * moments + group_steps
    persistent = [p for p in params if p.numel <= zero.param_persistence_threshold]
    weights = (sum(math.ceil(p.numel / world) for p in params) + _numel(persistent)) * width
    gathered = _numel(params) - _numel(persistent)
    largest_module = max((_numel(m) for m in _modules(params).values()), default=0)
    gather = min(gathered, largest_module + zero.prefetch_bucket_size) * width
    return _offloaded(layout, RankBytes(weights, partitions * FP32, masters, state, reduce_bucket + gather))


def transition_bytes(layout: Layout, params: Sequence[ParamShape], kept: Sequence[Sequence[str]]) -> int:
    """The extra peak a transition that keeps the groups ``kept`` holds above the rank's state
    after it (as measured in BENCHMARKS.md (i)): ZeRO 1/2 build each kept group's fp32 partition anew beside the old
    one (its state is handed over); the other strategies allocate nothing at a transition beyond the new group's
    steady state (optimizers create state lazily, at the first step)."""
    if layout.strategy not in ("zero1", "zero2") or layout.offload:
        return 0
    by_name = {p.name: p for p in params}
    world = layout.world_size
    numels = [sum(by_name[name].numel for name in group) for group in kept if group]
    return sum(_ceil_to(numel, layout.zero_alignment * world) // world for numel in numels) * FP32


def _fsdp1(layout: Layout, params: Sequence[ParamShape], trainable: set[str], moments: int, steps: int) -> RankBytes:
    world, width = layout.world_size, layout.param_bytes
    align = max(1, 16 // width)  # use_orig_params starts each parameter on a 16-byte boundary in the flat parameter
    worst = RankBytes(0, 0, 0, 0, 0)
    flats = []
    for members in _units(params).values():
        offsets, end = [], 0
        for p in members:
            start = _ceil_to(end, align)
            offsets.append(start)
            end = start + p.numel
        flats.append((members, offsets, _ceil_to(end, world) // world))
    for rank in range(world):
        weights = grads = state = 0
        for members, offsets, shard in flats:
            weights += shard * width
            if any(p.name in trainable for p in members):
                grads += shard * width
            low, high = rank * shard, (rank + 1) * shard
            for p, offset in zip(members, offsets, strict=True):
                if p.name in trainable:
                    state += max(0, min(offset + p.numel, high) - max(offset, low)) * width * moments
        gather = max((shard * world for _, _, shard in flats), default=0) * width
        candidate = RankBytes(weights, grads, 0, state + steps, gather)
        worst = max(worst, candidate, key=lambda b: b.total)
    return worst


def _offloaded(layout: Layout, held: RankBytes) -> RankBytes:
    if not layout.offload:
        return held
    return RankBytes(held.params, held.grads, 0, 0, held.buffers, host=held.masters + held.optimizer_state)


def _units(params: Sequence[ParamShape]) -> dict[str, list[ParamShape]]:
    units: dict[str, list[ParamShape]] = {}
    for p in params:
        units.setdefault(p.unit, []).append(p)
    return units


def _modules(params: Sequence[ParamShape]) -> dict[str, list[ParamShape]]:
    """Parameters by the module that holds them directly (what ZeRO-3 gathers together)."""
    modules: dict[str, list[ParamShape]] = {}
    for p in params:
        modules.setdefault(p.name.rpartition(".")[0], []).append(p)
    return modules


def _numel(params: Sequence[ParamShape]) -> int:
    return sum(p.numel for p in params)


def _dim0_shard(shape: tuple[int, ...], world: int) -> int:
    if not shape:
        return 1
    return math.ceil(shape[0] / world) * math.prod(shape[1:])


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
