"""The DeepSpeed adapter: scheduled fine-tuning under Lightning's ``DeepSpeedStrategy``, ZeRO stages 1, 2 and 3.

At every transition the engine's ZeRO optimizer is rebuilt inside the live engine for the new trainable set
(:mod:`fts_dist.adapters.deepspeed_engine`): earlier groups keep their weights, fp32 masters and optimizer state,
step counts included; the new phase's group starts fresh; frozen parameters hold no gradient buffer, no fp32 copy
and no optimizer state on any rank. The documented alternative, frozen parameters in an ``lr=0`` group (DeepSpeed
issue 2615), keeps their masters and state on every rank and advances Adam's step counts before they thaw.

Checkpoints are DeepSpeed's own directories, written through a staging directory like sharded ones; a restore
first rebuilds the optimizer with exactly the groups the checkpoint holds, then lets the engine load it (each rank
its own partitions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DeepSpeedStrategy
from typing_extensions import override

from fts_dist.adapters.deepspeed_engine import (
    group_parameters,
    rebuild_zero_optimizer,
    relink_after_load,
    zero_stage,
)
from fts_dist.adapters.distributed import DistributedAdapter
from fts_dist.adapters.param_groups import PhaseGroup, extend_schedulers, lr_schedulers, truncate_schedulers
from fts_dist.adapters.replicas import ReplicaView
from fts_dist.adapters.sharded import stage_checkpoint_directories
from fts_dist.errors import FTSConfigError
from fts_dist.schedule import Schedule


class DeepSpeedAdapter(DistributedAdapter):
    """Applies phase plans under ``DeepSpeedStrategy`` (and :class:`fts_dist.DeepSpeedStrategy`, also on CPU).

    The optimizer comes from ``configure_optimizers`` (DeepSpeed wraps it), not from the DeepSpeed config.
    """

    serves = DeepSpeedStrategy

    @override
    def validate_schedule(self, schedule: Schedule, trainer: pl.Trainer) -> None:
        """The DeepSpeed config, as Lightning completed it at setup (precision, batch sizes), before step 0."""
        config: dict[str, Any] = self.strategy.config or {}  # type: ignore[attr-defined]
        for block in ("optimizer", "scheduler"):
            if block in config:
                raise FTSConfigError(
                    f"The DeepSpeed config has an `{block}` block. fts_dist adds an optimizer group at every phase "
                    "and needs the optimizer (and LR scheduler) from `configure_optimizers`: remove the block and "
                    "return them there.",
                    key=block,
                )
        fp16 = config.get("fp16", {})
        if fp16.get("enabled") and not fp16.get("loss_scale"):
            raise FTSConfigError(
                "fp16 with dynamic loss scaling: the loss scaler's state lives in the ZeRO optimizer that every "
                "transition rebuilds, so it would start over at each phase. Use bf16 (precision='bf16-mixed'), or a "
                "static scale (`fp16: {loss_scale: 128}` in the DeepSpeed config).",
                key="fp16",
            )

    @override
    def setup_optimizer(self, trainer: pl.Trainer, phase0_params: Sequence[str]) -> None:
        self.check_scheduler_alignment(trainer)
        super().setup_optimizer(trainer, phase0_params)

    @staticmethod
    def check_scheduler_alignment(trainer: pl.Trainer) -> None:
        """DeepSpeed drops parameter groups without parameters; an LR scheduler built before it keeps their entries."""
        groups = len(trainer.optimizers[0].param_groups)
        for config in trainer.lr_scheduler_configs:
            scheduled = len(getattr(config.scheduler, "base_lrs", [None] * groups))
            if scheduled != groups:
                raise FTSConfigError(
                    f"`configure_optimizers` returned {scheduled} parameter groups, {scheduled - groups} of them "
                    "without a trainable parameter: DeepSpeed drops empty groups, which misaligns the LR scheduler's "
                    "per-group state. Leave empty groups out.",
                    phase=0,
                    key="optimizer",
                )

    @override
    def validate_training_loop(self, trainer: pl.Trainer) -> None:
        """Every transition must fall on an optimizer-step boundary (no half-accumulated gradients to lose)."""
        accumulation = int(self._engine().gradient_accumulation_steps())
        batches = trainer.num_training_batches
        if accumulation > 1 and batches != float("inf") and int(batches) % accumulation:
            raise FTSConfigError(
                f"Gradient accumulation over {accumulation} batches does not divide the {int(batches)} training "
                "batches of an epoch: the last step of an epoch would carry gradients into the next phase, whose "
                "optimizer is rebuilt at the transition. Make the epoch a multiple of `accumulate_grad_batches` "
                "(`limit_train_batches`, the batch size) or accumulate over a divisor of it.",
                key="accumulate_grad_batches",
            )

    @override
    def optimizer_parameters(self, trainer: pl.Trainer) -> list[list[torch.nn.Parameter]]:
        return group_parameters(self._engine())

    @override
    def prepare_checkpointing(self, trainer: pl.Trainer, before_resume_load: Callable[[dict[str, Any]], None]) -> None:
        super().prepare_checkpointing(trainer, before_resume_load)
        stage_checkpoint_directories(self.strategy, self.comm)

    @override
    def after_checkpoint_load(self, trainer: pl.Trainer) -> None:
        relink_after_load(self._engine())

    @override
    def checkpoint_metadata(self, path: str) -> dict[str, Any]:
        """The client state Lightning saved with the engine (callbacks, loops): in the model-states file."""
        directory = Path(path) / (Path(path) / "latest").read_text().strip()
        files = sorted(directory.glob("*model_states.pt"), key=lambda f: ("zero_pp_rank_" in f.name, f.name))
        state = torch.load(files[0], map_location="cpu", weights_only=False, mmap=True)
        return {k: v for k, v in state.items() if k not in ("module", "optimizer", "buffer_names", "param_shapes")}

    @override
    def load_checkpoint_state(self, path: str, phases: Sequence[Sequence[str]], trainer: pl.Trainer) -> None:
        if not (Path(path) / "latest").is_file():
            raise FileNotFoundError(f"'{path}' is not a DeepSpeed checkpoint directory (no 'latest' file)")
        groups, current = self.group_count(len(phases) - 1), group_parameters(self._engine())
        if len(current) > groups:  # a checkpoint of an earlier phase: the optimizer gets its groups
            self._rebuild(trainer, [{"params": params} for params in current[:groups]])
            truncate_schedulers(lr_schedulers(trainer), groups)
        self._load_strategy_checkpoint(path)  # the engine loads weights and its partitions' optimizer state
        relink_after_load(self._engine())

    @override
    def extend_optimizer(self, trainer: pl.Trainer, groups: Sequence[PhaseGroup]) -> None:
        """One rebuild of the engine's ZeRO optimizer for all of ``groups`` (a rebuild is not cheap)."""
        current = [{"params": params} for params in group_parameters(self._engine())]
        added = [{"params": list(group.params), "lr": group.lr, "initial_lr": group.lr} for group in groups]
        self._rebuild(trainer, current + added)
        for group in groups:
            extend_schedulers(lr_schedulers(trainer), group.lr)

    @override
    def replica_view(self, module: torch.nn.Module) -> ReplicaView:
        if zero_stage(self._engine()) == 3:  # every rank holds a different partition: only the trainable set
            live = self.schedule_parameters(module)
            return ReplicaView(tuple(sorted(n for n, p in live.items() if p.requires_grad)), {})
        return super().replica_view(module)

    @override
    def parameters_without_gradient(self, module: torch.nn.Module) -> list[str]:
        return []  # ZeRO moves gradients into its own buffers during backward: ``.grad`` says nothing here

    def _rebuild(self, trainer: pl.Trainer, groups: list[dict[str, Any]]) -> None:
        engine = self._engine()
        if engine.micro_steps % engine.gradient_accumulation_steps():
            raise FTSConfigError(
                "A phase transition fell between two micro-batches of an accumulated step; make the epoch a "
                "multiple of `accumulate_grad_batches`.",
                key="accumulate_grad_batches",
            )
        optimizer = rebuild_zero_optimizer(engine, groups)
        self.strategy.optimizers = [optimizer]
        for scheduler in lr_schedulers(trainer):
            scheduler.optimizer = optimizer.optimizer  # the groups it schedules are the new basic optimizer's

    def _engine(self) -> Any:
        return self.strategy.model
