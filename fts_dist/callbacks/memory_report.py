"""Each phase's memory beside its plan, in the run's own log: what this rank held against what
:func:`fts_dist.memory.plan_memory` planned before launch.

Measured on CUDA as ``torch.cuda.max_memory_allocated`` over the phase (activations and allocator slack included,
which the plan leaves out); on CPU as the bytes of the distinct tensor storages this rank holds for the module's
parameters (DTensor shards, ZeRO-3 partitions), their gradients, and the optimizer's parameters and state (ZeRO's
fp32 partitions), right after the phase's first optimizer step and at its end.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pytorch_lightning as pl
import torch
from torch.distributed.tensor import DTensor

from fts_dist.adapters import StrategyAdapter
from fts_dist.log import rank_zero_info
from fts_dist.memory import ParamShape, format_bytes
from fts_dist.memory.plan import plan_from_shapes
from fts_dist.schedule import Schedule

log = logging.getLogger(__name__)


class PhaseMemory:
    """The plan of every phase, and the most this rank held in each phase that ran."""

    def __init__(self, planned: list[int] | None) -> None:
        self.planned = planned
        self.held: dict[int, int] = {}
        self._depth: int | None = None  # the phase sampled last

    @classmethod
    def plan(cls, adapter: StrategyAdapter, trainer: pl.Trainer, schedule: Schedule) -> PhaseMemory:
        """Plan ``schedule`` for the live module's shapes, ``adapter``'s layout and the trainer's optimizer and
        precision (no plan where none of the layouts fits)."""
        layout, optimizer = adapter.memory_layout(), _optimizer_kind(adapter.scheduled_optimizer(trainer))
        if layout is None or optimizer is None:
            return cls(None)
        module = trainer.lightning_module
        named = adapter.schedule_parameters(module).items()
        shapes = [ParamShape(name, tuple(getattr(p, "ds_shape", p.shape))) for name, p in named]
        try:
            plan = plan_from_shapes(
                schedule.to_dict(), shapes, world_size=adapter.comm.world_size, precision=str(trainer.precision),
                optimizer=optimizer, **layout,
            )  # fmt: skip
        except Exception as err:  # a plan is advice: never fail a run over it
            log.debug("no memory plan: %s", err)
            return cls(None)
        return cls([int(phase.bytes_per_rank["total"] or 0) for phase in plan.phases])

    def sample(self, trainer: pl.Trainer, depth: int, last: bool = False) -> None:
        """After an optimizer step: the phase's first, and (``last``) its end."""
        if depth == self._depth and not last:
            return
        if depth != self._depth and _on_cuda(trainer):
            torch.cuda.reset_peak_memory_stats()  # the previous phase's peak was taken at its end
        self._depth = depth
        try:
            held = torch.cuda.max_memory_allocated() if _on_cuda(trainer) else _tensor_bytes(trainer)
        except Exception as err:  # a measurement is advice too: never fail a run over it
            log.debug("no memory measurement: %s", err)
            return
        self.held[depth] = max(self.held.get(depth, 0), held)

    def end_phase(self, trainer: pl.Trainer) -> str | None:
        """Sample the phase that ran last once more and log its line on rank 0 (``None`` before any phase ran)."""
        if self._depth is None:
            return None
        depth = self._depth
        self.sample(trainer, depth, last=True)
        line = f"fts_dist: phase {depth} held {format_bytes(self.held[depth])} on rank 0"
        if self.planned is not None and depth < len(self.planned):
            planned = self.planned[depth]
            line += f" (planned {format_bytes(planned)}: {self.held[depth] / planned:.2f}x; activations not planned)"
        rank_zero_info(line + ".")
        return line


def held_tensor_bytes(parameters: Iterable[torch.Tensor], optimizers: Iterable[torch.optim.Optimizer]) -> int:
    """Bytes of the distinct storages behind ``parameters`` (their local shards, ZeRO-3 partitions), their
    gradients, and each optimizer's parameters and state."""
    tensors: list[torch.Tensor] = []
    for param in parameters:
        tensors += [param, getattr(param, "ds_tensor", None), param.grad]  # type: ignore[list-item]
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            tensors += list(group["params"])
        states = [state for state in optimizer.state.values() if isinstance(state, dict)]
        tensors += [v for state in states for v in state.values() if torch.is_tensor(v)]
    storages: dict[int, int] = {}
    for tensor in tensors:
        if tensor is None:
            continue
        local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
        storage = local.untyped_storage()
        if storage.device.type != "meta" and storage.nbytes():
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _tensor_bytes(trainer: pl.Trainer) -> int:
    optimizer = trainer.optimizers[0] if trainer.optimizers else None
    return held_tensor_bytes(trainer.lightning_module.parameters(), _optimizers(optimizer))


def _optimizers(optimizer: torch.optim.Optimizer | None) -> list[torch.optim.Optimizer]:
    """The optimizer, and the one inside it where it wraps its own (DeepSpeed's basic optimizer, the local one of
    ZeroRedundancyOptimizer and OSS)."""
    if optimizer is None:
        return []
    inner = [getattr(optimizer, name, None) for name in ("optimizer", "optim")]
    return [optimizer, *(o for o in inner if isinstance(o, torch.optim.Optimizer) and o is not optimizer)]


def _optimizer_kind(optimizer: torch.optim.Optimizer) -> str | None:
    name = type(optimizer).__name__.lower()
    if name in ("adam", "adamw", "deepspeedcpuadam", "fusedadam"):
        return "adamw"
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd" if any(group.get("momentum") for group in optimizer.param_groups) else "sgd-plain"
    return None


def _on_cuda(trainer: pl.Trainer) -> bool:
    return trainer.strategy.root_device.type == "cuda"
