"""The DDP adapter: every thawed parameter stays in gradient sync after every transition."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from fts_dist.adapters.distributed import DistributedAdapter
from fts_dist.errors import FTSConfigError
from fts_dist.schedule import Schedule


class DDPAdapter(DistributedAdapter):
    """Applies phase plans under Lightning's ``DDPStrategy`` (``ddp``, ``ddp_spawn``, ``ddp_fork``, torchrun).

    DDP builds its gradient reducer from the parameters that require grad when it wraps the module, so a
    parameter thawed later would never be all-reduced and the replicas would drift apart. After every change
    of the trainable set this adapter wraps the module anew through the strategy, with the strategy's own DDP
    options (bucket size, static graph, gradient-as-bucket-view, comm hooks) - so ``find_unused_parameters``
    never has to stay on for the whole run. A wrap broadcasts rank 0's parameters and buffers unless told not to:
    a transition whose replica check has just proved the replicas equal re-wraps with ``init_sync=False`` (no
    O(model) broadcast per transition); one without the check (``check_replicas=False``, a resume) keeps the sync.
    The check runs before the wrap either way, so a divergence is reported, not silently overwritten.
    """

    serves = DDPStrategy

    def __init__(self, strategy: pl.strategies.Strategy) -> None:
        super().__init__(strategy)
        self._replicas_verified = False  # the last transition's replica check passed: the next wrap needs no sync

    @override
    def check_replicas(self, module: torch.nn.Module, depth: int) -> None:
        super().check_replicas(module, depth)
        self._replicas_verified = self.comm.world_size > 1

    @override
    def setup_optimizer(self, trainer: pl.Trainer, phase0_params: Sequence[str]) -> None:
        super().setup_optimizer(trainer, phase0_params)
        optimizer = trainer.optimizers[0]
        if isinstance(optimizer, ZeroRedundancyOptimizer) and optimizer._overlap_with_ddp:
            raise FTSConfigError(
                "ZeroRedundancyOptimizer(overlap_with_ddp=True) supports a single parameter group, but every "
                "phase adds one. Construct it with overlap_with_ddp=False.",
                key="optimizer",
            )

    @override
    def validate_schedule(self, schedule: Schedule, trainer: pl.Trainer) -> None:
        """A ``new_optimizer`` would replace a sharded optimizer (ZeroRedundancyOptimizer, fairscale's OSS) with a
        plain one, silently: refused before step 0."""
        optimizer = trainer.optimizers[0]
        phase = next((d for d, p in enumerate(schedule.phases) if p.new_optimizer is not None), None)
        if phase is not None and hasattr(optimizer, "optim"):
            raise FTSConfigError(
                f"Phase {phase} `new_optimizer` would replace {type(optimizer).__name__}, which shards optimizer state "
                "across ranks, with an unsharded optimizer. Use a plain torch optimizer in `configure_optimizers`, or "
                "leave `new_optimizer` out and change learning rates with `new_lr_scheduler`.",
                phase=phase,
                key="new_optimizer",
            )

    @override
    def unused_parameters_are_fatal(self) -> bool:
        assert isinstance(self.strategy, DDPStrategy)
        return not self.strategy._ddp_kwargs.get("find_unused_parameters", False)

    @override
    def on_trainable_changed(self, trainer: pl.Trainer) -> None:
        strategy = self.strategy
        assert isinstance(strategy, DDPStrategy)
        if not isinstance(strategy.model, DistributedDataParallel):
            return  # not wrapped yet (resume before setup finished) or not fitting
        previous = weakref.ref(strategy.model)
        strategy.model = strategy.lightning_module
        if previous() is not None:  # kept alive by a reference cycle: its reducer's hooks and buckets must go now
            gc.collect()
        verified, self._replicas_verified = self._replicas_verified, False
        skip_sync = verified and "init_sync" not in strategy._ddp_kwargs  # a user's own setting wins
        if skip_sync:
            strategy._ddp_kwargs["init_sync"] = False
        try:
            strategy.configure_ddp()
        finally:
            if skip_sync:
                del strategy._ddp_kwargs["init_sync"]
