"""The strategy adapter interface, implemented for one process; other families override its seams."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from fts_dist.adapters.param_groups import (
    add_param_group,
    check_lr_scheduler_supported,
    params_in_optimizer,
    truncate_param_groups,
)
from fts_dist.checkpoint_io import install_atomic_checkpoint_io
from fts_dist.coordinator import Comm, LocalComm, PhasePlan
from fts_dist.errors import FTSConfigError


class CheckpointRestoreError(RuntimeError):
    """The checkpoint chosen for a phase transition could not be read or applied; names the file."""


class ReplicaMismatchError(RuntimeError):
    """Ranks disagree on the trainable set or the weights after a transition; names the parameters."""


class StrategyAdapter:
    """Applies the coordinator's phase plans on one rank, for one family of Lightning strategies.

    The base class is the single-process implementation. An adapter for another family overrides the seams
    it needs: :meth:`validate_strategy` (refuse what cannot work, before step 0), :meth:`comm` (collectives),
    :meth:`on_trainable_changed` (re-register thawed parameters with a wrapper), :meth:`restore_checkpoint`
    (sharded or engine-specific state). The order of every step of a transition lives here, once.

    Args:
        strategy: the trainer's strategy.
    """

    family: ClassVar[str] = "single_device"

    def __init__(self, strategy: pl.strategies.Strategy) -> None:
        self.strategy = strategy
        self.rank_locations: list[tuple[str, int]] = []  # (host, pid) of every rank, once known

    # -- seams -------------------------------------------------------------------------------------------------
    @property
    def comm(self) -> Comm:
        return LocalComm()

    def validate_strategy(self, trainer: pl.Trainer) -> None:
        """Raise :class:`FTSConfigError` for a strategy configuration this adapter cannot run correctly."""

    def on_trainable_changed(self, trainer: pl.Trainer) -> None:
        """Called after the trainable set grew (a transition, or a resume past phase 0)."""

    def start_liveness_checks(self, trainer: pl.Trainer) -> None:
        """Multi-process adapters: make this rank end when its launcher dies (see :mod:`fts_dist.adapters.liveness`)."""

    def describe_failure(self) -> str | None:
        """After an exception: what this rank can tell about its peers (e.g. which ones died), or None."""
        return None

    def prepare_checkpointing(self, trainer: pl.Trainer) -> None:
        """Make checkpoint writes atomic (whole file or none), unless the user configured a checkpoint IO."""
        install_atomic_checkpoint_io(self.strategy)

    def unused_parameters_are_fatal(self) -> bool:
        """Whether a thawed parameter that gets no gradient breaks training under this strategy (not just idles)."""
        return False

    def restore_checkpoint(self, path: str, trainer: pl.Trainer) -> None:
        """Load weights and optimizer state from ``path``; the optimizer keeps only the groups saved there."""
        self.comm.barrier()  # the writer (rank 0) finished before anyone reads
        try:
            checkpoint = self.strategy.load_checkpoint(path)
            self.strategy.load_model_state_dict(checkpoint, strict=True)
            optimizer_state = checkpoint["optimizer_states"][0]
        except Exception as err:
            raise CheckpointRestoreError(
                f"Cannot restore the best checkpoint '{path}' at a phase transition: {type(err).__name__}: {err}. "
                "The file is left as it is; resume from the last checkpoint, or set `restore_best=False`."
            ) from err
        optimizer = trainer.optimizers[0]
        truncate_param_groups(optimizer, len(optimizer_state["param_groups"]), self._schedulers(trainer))
        self.strategy.load_optimizer_state_dict(checkpoint)

    # -- setup -------------------------------------------------------------------------------------------------
    def freeze(self, module: torch.nn.Module, trainable: Iterable[str]) -> None:
        """Make exactly the parameters named in ``trainable`` require grad."""
        keep = set(trainable)
        for name, param in module.named_parameters():
            param.requires_grad_(name in keep)

    def validate_optimizers(self, trainer: pl.Trainer, phase0_params: Sequence[str]) -> None:
        """One optimizer, holding only phase 0's parameters, with a supported LR scheduler."""
        if len(trainer.optimizers) != 1:
            raise FTSConfigError(
                f"fts_dist schedules exactly one optimizer; `configure_optimizers` returned {len(trainer.optimizers)}. "
                "Return a single optimizer (use parameter groups for per-parameter options).",
                key="optimizer",
            )
        for config in trainer.lr_scheduler_configs:
            check_lr_scheduler_supported(config.scheduler)
        module = trainer.lightning_module
        held = params_in_optimizer(trainer.optimizers[0])
        phase0 = set(phase0_params)
        extra = [n for n, p in module.named_parameters() if id(p) in held and n not in phase0]
        if extra:
            raise FTSConfigError(
                f"The optimizer holds {len(extra)} parameter(s) that phase 0 does not thaw, e.g. {extra[:3]}. "
                "Build the optimizer from trainable parameters only "
                "(`filter(lambda p: p.requires_grad, self.parameters())`), or add them to phase 0.",
                phase=0,
                key="params",
            )
        missing = [n for n, p in module.named_parameters() if n in phase0 and id(p) not in held]
        if missing:
            rank_zero_warn(
                f"Phase 0 thaws {missing[:3]} (and {max(len(missing) - 3, 0)} more) but the optimizer "
                "does not hold them, so they will not train in phase 0."
            )

    # -- transitions -------------------------------------------------------------------------------------------
    def apply_plan(self, plan: PhasePlan, trainer: pl.Trainer, check_replicas: bool = False) -> None:
        """Bring this rank to ``plan.depth``: restore, thaw, add groups, keep LR schedulers consistent.

        Groups restored with the checkpoint keep the checkpoint's optimizer state; every group of an earlier
        phase keeps the learning rate it had before the transition (restoring weights does not rewind the LR
        schedule), and the new phase's group starts at its scheduled learning rate.
        """
        module = trainer.lightning_module
        optimizer = trainer.optimizers[0]
        schedulers = self._schedulers(trainer)
        lrs_before = [group["lr"] for group in optimizer.param_groups]
        scheduler_states = [s.state_dict() for s in schedulers]
        if plan.restore_checkpoint:
            self.restore_checkpoint(plan.restore_checkpoint, trainer)
        self.freeze(module, (name for phase in plan.phase_params for name in phase))
        by_name = dict(module.named_parameters())
        for depth in range(1, plan.depth + 1):
            held = params_in_optimizer(optimizer)
            params = [by_name[n] for n in plan.phase_params[depth] if id(by_name[n]) not in held]
            if params:
                if depth == plan.depth:
                    self._restore_lr_state(optimizer, lrs_before, schedulers, scheduler_states)
                add_param_group(optimizer, params, plan.phase_lrs[depth], schedulers)
        if check_replicas:
            self.check_consistency(module, plan.depth)
        self.on_trainable_changed(trainer)

    def check_consistency(self, module: torch.nn.Module, depth: int) -> None:
        """Compare trainable names and per-parameter checksums across ranks; raise on every rank if they differ."""
        if self.comm.world_size == 1:
            return
        trainable = sorted(n for n, p in module.named_parameters() if p.requires_grad)
        sums = {n: float(p.detach().double().sum()) for n, p in module.named_parameters()}
        gathered = self.comm.all_gather((trainable, sums))
        reference_trainable, reference_sums = gathered[0]
        problems = []
        for rank, (names, rank_sums) in enumerate(gathered[1:], start=1):
            if names != reference_trainable:
                diff = sorted(set(names) ^ set(reference_trainable))
                problems.append(f"rank {rank} trainable set differs from rank 0's: {diff[:5]}")
            differing = [n for n in reference_sums if rank_sums.get(n) != reference_sums[n]]
            if differing:
                problems.append(f"rank {rank} weights differ from rank 0's in {differing[:5]}")
        if problems:
            raise ReplicaMismatchError(
                f"Replicas diverged at phase {depth}: " + "; ".join(problems) + ". Every rank must apply the same "
                "plan to the same weights; check for rank-dependent code in the module or data."
            )

    # -- helpers -----------------------------------------------------------------------------------------------
    @staticmethod
    def _schedulers(trainer: pl.Trainer) -> list[Any]:
        return [config.scheduler for config in trainer.lr_scheduler_configs]

    @staticmethod
    def _restore_lr_state(
        optimizer: torch.optim.Optimizer, lrs: list[float], schedulers: list[Any], states: list[dict[str, Any]]
    ) -> None:
        for group, lr in zip(optimizer.param_groups, lrs, strict=False):
            group["lr"] = lr
        for scheduler, state in zip(schedulers, states, strict=True):
            scheduler.load_state_dict(state)
