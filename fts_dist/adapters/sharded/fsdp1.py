"""The FSDP1 adapter: scheduled fine-tuning under Lightning's ``FSDPStrategy`` (``FullyShardedDataParallel``).

FSDP1 flattens each wrapped unit's parameters into one flat parameter. With ``use_orig_params=True`` (required
here, Lightning's default) the original parameters stay addressable and may differ in ``requires_grad``, and a thaw
takes effect at the next forward (FSDP copies ``requires_grad`` to the flat parameter in its root pre-forward).
But a unit keeps one flat gradient: while any of its parameters trains, the frozen rest is still differentiated,
reduce-scattered and held (measured: the full shard's gradient, with non-zero values for frozen layers; pytorch
issue 104690). So every unit must lie within one phase, checked before step 0.

Parameter names: Lightning's auto-wrap inserts ``_fsdp_wrapped_module.`` into ``named_parameters()``; schedules use
the original names, which this adapter maps to the live parameters.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
from torch.distributed.fsdp._common_utils import clean_tensor_name
from typing_extensions import override

from fts_dist.adapters.replicas import ReplicaView, ShardKey, checksum
from fts_dist.adapters.sharded.common import ShardedAdapter
from fts_dist.errors import FTSConfigError
from fts_dist.schedule import Schedule


class FSDP1Adapter(ShardedAdapter):
    """Applies phase plans under ``FSDPStrategy`` (and :class:`fts_dist.FSDPStrategy`, which also runs on CPU).

    Requires ``use_orig_params=True`` and an auto-wrap policy whose units each hold parameters of one phase (or of
    none). ``restore_best`` reads each rank's own shards with ``state_dict_type="sharded"``.
    """

    serves = FSDPStrategy

    @override
    def memory_layout(self) -> dict[str, Any] | None:
        return {"strategy": "fsdp1"}

    @override
    def validate_strategy(self, trainer: pl.Trainer) -> None:
        super().validate_strategy(trainer)
        assert isinstance(self.strategy, FSDPStrategy)
        if not self.strategy.kwargs.get("use_orig_params", True):
            raise FTSConfigError(
                "FSDPStrategy(use_orig_params=False) flattens each unit into one parameter whose requires_grad must "
                "be uniform, so a phase cannot thaw part of a unit. Pass use_orig_params=True (Lightning's default).",
                key="use_orig_params",
            )
        self.warn_if_checkpoints_are_whole(self.strategy._state_dict_type == "full", "state_dict_type='full'")

    @override
    def schedule_parameters(self, module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        return {clean_tensor_name(name): param for name, param in module.named_parameters()}

    @override
    def validate_schedule(self, schedule: Schedule, trainer: pl.Trainer) -> None:
        numbered = list(enumerate(schedule.phases))
        frozen_at = {name: depth for depth, phase in numbered for name in phase.freeze}
        phase_of = {name: (depth, frozen_at.get(name, -1)) for depth, phase in numbered for name in phase.params}
        misaligned = []
        for unit_name, names in _units(self._root()):
            phases = sorted({phase_of.get(name, (-1, -1)) for name in names})
            if len(phases) > 1:
                where = ", ".join(
                    f"{_phase_label(*d)}: {[n for n in names if phase_of.get(n, (-1, -1)) == d][:2]}" for d in phases
                )
                misaligned.append(f"'{unit_name or '<root>'}' ({where})")
        if misaligned:
            raise FTSConfigError(
                f"{len(misaligned)} FSDP unit(s) hold parameters of more than one phase (or of one phase, frozen "
                f"again at different phases): {'; '.join(misaligned)}. "
                "FSDP1 keeps one flat gradient per unit, so while part of a unit trains, its frozen part is still "
                "differentiated, reduce-scattered and stored (pytorch issue 104690). Align the auto-wrap policy with "
                "the phases: wrap each module a phase thaws as a unit of its own, e.g. "
                "FSDPStrategy(auto_wrap_policy={TransformerBlock, nn.Embedding, nn.Linear}) for blocks, embeddings "
                "and the head, so that the root keeps only parameters of one phase.",
                key="params",
            )

    @override
    def parameters_without_gradient(self, module: torch.nn.Module) -> list[str]:
        """Only what a whole unit left without gradient shows: a parameter whose shard on this rank is empty has no
        gradient view here, and one inside a unit that got a gradient has a (zero) view even when unused."""
        live = self.schedule_parameters(module)
        return [name for name, p in live.items() if p.requires_grad and p.numel() > 0 and p.grad is None]

    @override
    def replica_view(self, module: torch.nn.Module) -> ReplicaView:
        """Each unit's local flat shard, compared only between ranks that hold the same shard: every rank under
        ``NO_SHARD``, the same position of the shard group across nodes under ``HYBRID_SHARD``, none under
        ``FULL_SHARD`` (or ``HYBRID_SHARD`` on one node). The shard is checksummed by original parameter (the part
        of each that lies in it), so a mismatch names ``layers.0.weight``, not the unit's flat parameter."""
        live = self.schedule_parameters(module)
        tensors: dict[str, tuple[ShardKey, int]] = {}
        for unit_name, unit in _named_units(self._root()):
            shard_group_size = dist.get_world_size(unit.process_group)
            if unit.sharding_strategy == ShardingStrategy.NO_SHARD or shard_group_size == 1:
                key: ShardKey = ()  # every rank holds the whole unit
            elif shard_group_size == dist.get_world_size():
                continue  # sharded over every rank: no other rank holds this shard
            else:
                key = (dist.get_rank(unit.process_group),)  # HYBRID_SHARD: compared with the other nodes' ranks
            tensors.update({name: (key, checksum(region)) for name, region in _regions(unit_name, unit)})
        return ReplicaView(tuple(sorted(n for n, p in live.items() if p.requires_grad)), tensors)

    def _root(self) -> torch.nn.Module:
        """The outermost FSDP wrapper (Lightning wraps the LightningModule itself): it owns what no sub-unit holds."""
        assert self.strategy.model is not None
        return self.strategy.model


def _named_units(module: torch.nn.Module) -> list[tuple[str, FullyShardedDataParallel]]:
    """FSDP units that hold parameters, by their original (clean) module name."""
    return [
        (clean_tensor_name(name), unit)
        for name, unit in module.named_modules()
        if isinstance(unit, FullyShardedDataParallel) and unit._handle is not None
    ]


def _regions(unit_name: str, unit: FullyShardedDataParallel) -> list[tuple[str, torch.Tensor]]:
    """The part of each original parameter that lies in this rank's shard of ``unit``'s flat parameter, by the
    parameter's original name."""
    flat = unit._handle.flat_param  # type: ignore[union-attr]
    local = getattr(flat, "_local_shard", flat.data).reshape(-1)
    prefix = f"{unit_name}." if unit_name else ""
    regions = []
    for fqn, info in zip(flat._fqns, flat._shard_param_infos, strict=True):
        if info.in_shard:
            assert info.offset_in_shard is not None and info.numel_in_shard is not None
            region = local[info.offset_in_shard : info.offset_in_shard + info.numel_in_shard]
            regions.append((clean_tensor_name(prefix + fqn), region))
    return regions


def _units(module: torch.nn.Module) -> list[tuple[str, list[str]]]:
    """Each unit's name and the original names of the parameters in its flat parameter."""
    units = []
    for unit_name, unit in _named_units(module):
        prefix = f"{unit_name}." if unit_name else ""
        units.append((unit_name, [clean_tensor_name(prefix + fqn) for fqn in unit._handle.flat_param._fqns]))  # type: ignore[union-attr]
    return units


def _phase_label(thawed: int, frozen: int) -> str:
    if thawed < 0:
        return "never thawed"
    return f"phase {thawed}" + (f", frozen at phase {frozen}" if frozen >= 0 else "")
