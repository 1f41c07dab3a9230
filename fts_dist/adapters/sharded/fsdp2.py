"""The FSDP2 adapter: scheduled fine-tuning under Lightning's ``ModelParallelStrategy`` (``fully_shard``, DTensor).

FSDP2 keeps each parameter as a DTensor shard and checks ``requires_grad`` at every all-gather, so a thaw takes
effect at the next forward and only thawed parameters get gradients and optimizer state. What it needs from us
(each measured on torch 2.13, CPU/gloo):

- An FSDP root whose parameters are all frozen keeps them unsharded after a training forward (no backward reshards
  them): thawing those plain tensors would train nothing (measured in plain torch). Lightning's validation before
  a transition leaves them sharded, but ``FinetuningScheduler.step()`` mid-epoch would not; every FSDP module is
  resharded before a thaw, so the sharded DTensors are what thaws and what joins the optimizer.
- Mixed precision: a parameter group that was all frozen at the first forward has no reduce dtype, and the first
  backward after its thaw fails (``attempting to assign a gradient with dtype BFloat16 ... grad_dtype Float``,
  pytorch issue 186998). Its dtypes are recomputed after each thaw.
- One optimizer group mixing DTensors and plain tensors fails in the foreach and fused kernels (pytorch issue
  134212): refused before step 0, naming the plain parameters.

HSDP and tensor parallelism work as the module's ``configure_model`` sets them up; the replica check compares
shards only between ranks that hold the same shard (along replicate dimensions).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed.checkpoint as dcp
from pytorch_lightning.strategies import ModelParallelStrategy
from pytorch_lightning.utilities import rank_zero_warn
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from typing_extensions import override

from fts_dist.adapters.sharded.common import ShardedAdapter, check_saved_group_count
from fts_dist.errors import FTSConfigError
from fts_dist.optim.param_groups import lr_schedulers, truncate_param_groups
from fts_dist.schedule import Schedule


class FSDP2Adapter(ShardedAdapter):
    """Applies phase plans under ``ModelParallelStrategy``: FSDP2 (``fully_shard``), HSDP and tensor parallelism.

    Each phase adds one optimizer group over the phase's DTensor parameters, identically on every rank; frozen
    parameters hold no gradient and no optimizer state. ``restore_best`` reads each rank's own shards of the best
    checkpoint (``ModelParallelStrategy(save_distributed_checkpoint=True)``, the default).
    """

    serves = ModelParallelStrategy

    @override
    def memory_layout(self) -> dict[str, Any] | None:
        return {"strategy": "fsdp2"}

    @override
    def validate_strategy(self, trainer: pl.Trainer) -> None:
        super().validate_strategy(trainer)
        assert isinstance(self.strategy, ModelParallelStrategy)
        whole = not self.strategy._save_distributed_checkpoint
        self.warn_if_checkpoints_are_whole(whole, "save_distributed_checkpoint=False")
        # Lightning's sharded loader imports this deprecated alias on first use (0.1-0.8 s here): pay it at setup,
        # not inside the first transition
        importlib.import_module("torch.distributed._tensor")

    @override
    def validate_schedule(self, schedule: Schedule, trainer: pl.Trainer) -> None:
        module = trainer.lightning_module
        _reshard(module)
        live = self.schedule_parameters(module)
        for depth, phase in enumerate(schedule.phases):
            plain = [name for name in phase.params if not isinstance(live[name], DTensor)]
            if plain and len(plain) < len(phase.params):
                raise FTSConfigError(
                    f"Phase {depth} mixes sharded (DTensor) parameters and {len(plain)} plain one(s), e.g. "
                    f"{plain[:3]}; "
                    "one optimizer group of both fails in the foreach and fused optimizer kernels (pytorch issue "
                    "134212). Apply `fully_shard` (or your tensor-parallel plan) in `configure_model` to the modules "
                    "holding them, or schedule them in a phase of their own.",
                    phase=depth,
                    key="params",
                )

    @override
    def load_checkpoint_state(self, path: str, phases: Sequence[Sequence[str]], trainer: pl.Trainer) -> None:
        """A sharded checkpoint loads in one pass into the live shards: the model's DTensors are the load's
        targets, and the optimizer state joins the same read (Lightning's loader reads model and optimizer in two
        passes, each with its own planning round, then copies the weights once more)."""
        if not Path(path).is_dir():
            super().load_checkpoint_state(path, phases, trainer)  # a whole-model file: Lightning's loader
            return
        groups = self.group_count(len(phases) - 1)
        check_saved_group_count(Path(path), groups)
        optimizer, model = trainer.optimizers[0], trainer.lightning_module
        truncate_param_groups(optimizer, groups, lr_schedulers(trainer))
        weights, optimizer_state = get_model_state_dict(model), get_optimizer_state_dict(model, optimizer)
        try:  # the keys Lightning's ModelParallelStrategy saves under
            dcp.load({"state_dict": weights, "optimizer_0": optimizer_state}, checkpoint_id=path)
        except CheckpointException as err:  # a BaseException: make it an ordinary error the transition reports
            raise RuntimeError(str(err)) from err
        if not _loaded_in_place(optimizer_state, optimizer):  # else the load wrote into the optimizer's own state
            set_optimizer_state_dict(model, optimizer, optim_state_dict=optimizer_state)

    @override
    def thaw(self, module: torch.nn.Module, trainable: object) -> None:
        _reshard(module)  # a frozen root keeps its unsharded tensors after forward: thaw the sharded DTensors
        super().thaw(module, trainable)  # type: ignore[arg-type]
        _refresh_mixed_precision_dtypes(module)


def _loaded_in_place(optimizer_state: dict[str, Any], optimizer: torch.optim.Optimizer) -> bool:
    """Whether every state tensor of ``optimizer_state`` (``get_optimizer_state_dict``'s, loaded by DCP) is one of the
    optimizer's own: DCP then loaded into the live state, and a ``set_optimizer_state_dict`` would only copy it onto
    itself (its group settings the transition sets back anyway). Scalars (``step`` as a float) would be replaced, not
    loaded in place, so they require the copy."""
    live = {id(value) for state in optimizer.state.values() for value in state.values()}
    loaded = [value for state in optimizer_state.get("state", {}).values() for value in state.values()]
    return bool(loaded) and all(torch.is_tensor(value) and id(value) in live for value in loaded)


def _fsdp_modules(module: torch.nn.Module) -> list[FSDPModule]:
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def _reshard(module: torch.nn.Module) -> None:
    for fsdp_module in _fsdp_modules(module):
        fsdp_module.reshard()


def _refresh_mixed_precision_dtypes(module: torch.nn.Module) -> None:
    """Recompute each FSDP parameter group's compute and reduce dtypes from its current trainable set.

    FSDP2 fixes them at the root's first forward from the parameters trainable then (pytorch issue 186998); a group
    thawed later would keep none. ``_init_mp_dtypes`` is private: where a torch version lacks it, nothing is done.
    """
    for fsdp_module in _fsdp_modules(module):
        group = getattr(fsdp_module._get_fsdp_state(), "_fsdp_param_group", None)
        if group is None:
            continue
        init_dtypes = getattr(group, "_init_mp_dtypes", None)
        if init_dtypes is not None:
            init_dtypes()
        elif getattr(group.mp_policy, "param_dtype", None) is not None:
            rank_zero_warn(
                "fts_dist: this torch version's FSDP2 has no _init_mp_dtypes: a module thawed after running frozen "
                "under MixedPrecisionPolicy may fail its first backward (pytorch issue 186998); use torch 2.13."
            )
