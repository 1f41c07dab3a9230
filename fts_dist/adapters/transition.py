"""The order of a phase transition, written once for every strategy: restore, thaw, check the replicas, extend (or
replace) the optimizer, re-register the trainable set.

:meth:`StrategyAdapter.apply_plan <fts_dist.adapters.base.StrategyAdapter.apply_plan>` runs :func:`apply_plan`; each
step it takes is one of the adapter's seams, which the strategy families override. Nothing here knows a strategy.
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl

from fts_dist.adapters.checkpoint_checks import verify_before_load
from fts_dist.adapters.checkpoint_sync import sync_checkpoint
from fts_dist.coordinator import PhasePlan
from fts_dist.errors import CheckpointRestoreError
from fts_dist.log import rank_zero_info
from fts_dist.optim.param_groups import GroupSettings, PhaseGroup, lr_schedulers, scale_learning_rates
from fts_dist.optim.reinit import (
    OptimizerFactory,
    build_lr_scheduler,
    build_optimizer,
    check_lr_schedulers_bound,
    reapply_learning_rates,
)
from fts_dist.runtime.stalls import mark

if TYPE_CHECKING:
    import torch

    from fts_dist.adapters.base import StrategyAdapter


def apply_plan(adapter: StrategyAdapter, plan: PhasePlan, trainer: pl.Trainer, check_replicas: bool = False) -> None:
    """Bring this rank to ``plan.depth``: restore, thaw, check, extend (or replace) the optimizer, re-register.

    Groups restored with the checkpoint keep the checkpoint's optimizer state; every group of an earlier phase
    keeps the settings it had before the transition (restoring weights rewinds neither the LR schedule nor any
    hyperparameter); each new phase's group starts at its scheduled learning rate with fresh state. Seams may
    replace the optimizer (an engine rebuilds its own), so it is looked up again after each.

    A phase with ``new_optimizer`` replaces the optimizer: phase 0's groups (same members, the new optimizer's
    settings) and one per later phase, with fresh state; the earlier groups keep their learning rates and the LR
    schedulers keep their state (finetuning-scheduler's rule). A checkpoint restores into the kind of optimizer
    that wrote it; when that is not the kind the phase trains with, only its weights carry over. A phase with
    ``new_lr_scheduler`` replaces the LR scheduler once its group is added.

    The transition runs without automatic garbage collection: most of its steps are collectives, and a collection
    that one rank starts inside one stalls every other rank (measured: FSDP2's second restore took 0.33 s instead
    of 0.10 s when a full collection landed inside the checkpoint load).
    """
    with _without_collector_pauses():
        _apply_plan(adapter, plan, trainer, check_replicas)


@contextlib.contextmanager
def _without_collector_pauses() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _apply_plan(adapter: StrategyAdapter, plan: PhasePlan, trainer: pl.Trainer, check_replicas: bool) -> None:
    mark(f"in the transition to phase {plan.depth}: starting")
    before = GroupSettings.capture(trainer.optimizers[0], lr_schedulers(trainer))
    held = len(before.groups) - adapter.group_count(0)  # the depth the optimizer holds groups for
    if plan.restore is not None:
        saved_optimizer_phase = plan.optimizer_phase(plan.restore.depth)
        if saved_optimizer_phase != adapter.optimizer_phase:  # the checkpoint's state loads into its own kind
            _replace_optimizer(adapter, plan, trainer, saved_optimizer_phase, held)
        _restore(adapter, plan, trainer)
    mark(f"in the transition to phase {plan.depth}: thaw and replica check")
    adapter.thaw(trainer.lightning_module, plan.trainable)
    if check_replicas:  # before any optimizer change: a ZeRO rebuild's collectives assume the ranks agree
        adapter.check_replicas(trainer.lightning_module, plan.depth)
    mark(f"in the transition to phase {plan.depth}: optimizer groups")
    _add_phase_groups(adapter, plan, trainer, held)  # what a restore dropped
    optimizer_phase = plan.optimizer_phase(plan.depth)
    if optimizer_phase != adapter.optimizer_phase:
        _replace_optimizer(adapter, plan, trainer, optimizer_phase, held)
        reapply_learning_rates(before, trainer.optimizers[0], lr_schedulers(trainer))
        if plan.restore is not None:
            _say_optimizer_state_dropped(adapter, plan, trainer)
    elif plan.restore is not None:
        before.reapply(trainer.optimizers[0], lr_schedulers(trainer))
    scheduler_phase = plan.lr_scheduler_phase(plan.depth)
    if scheduler_phase != adapter.lr_scheduler_phase:  # built over the groups its phase had (a resume skips ahead)
        _add_phase_groups(adapter, plan, trainer, max(held, scheduler_phase))
        _replace_lr_scheduler(adapter, plan, trainer, scheduler_phase)
    _add_phase_groups(adapter, plan, trainer, plan.depth)
    _check_group_count(trainer.optimizers[0], adapter.group_count(plan.depth))
    check_lr_schedulers_bound(adapter.scheduled_optimizer(trainer), lr_schedulers(trainer))
    adapter.on_trainable_changed(trainer)


def _replace_optimizer(adapter: StrategyAdapter, plan: PhasePlan, trainer: pl.Trainer, phase: int, depth: int) -> None:
    """Install phase ``phase``'s optimizer (0: ``configure_optimizers``') with fresh state and the groups of
    phases 0..``depth``: phase 0's members as they are, each later phase's at its scheduled learning rate."""
    spec = plan.phase_optimizers[phase] if phase else None
    if spec is not None:
        make: OptimizerFactory = lambda groups: build_optimizer(spec, groups, phase)  # noqa: E731
    elif adapter.configured_optimizer is not None:
        make = adapter.configured_optimizer
    else:
        raise RuntimeError("setup_optimizer() must run before phase plans are applied")
    live = adapter.schedule_parameters(trainer.lightning_module)
    phases = plan.trainable_phases(depth)
    groups: list[dict[str, Any]] = [
        {"params": list(params)} for params in adapter.optimizer_parameters(trainer)[: adapter.group_count(0)]
    ]
    groups += [
        {"params": [live[name] for name in phases[d]], "lr": _phase_lr(plan, d, depth)} for d in range(1, depth + 1)
    ]
    adapter.install_optimizer(trainer, make, groups)
    adapter.optimizer_phase = phase


def _replace_lr_scheduler(adapter: StrategyAdapter, plan: PhasePlan, trainer: pl.Trainer, phase: int) -> None:
    """Build phase ``phase``'s ``new_lr_scheduler`` over the optimizer as it is."""
    spec = plan.phase_lr_schedulers[phase]
    assert spec is not None
    adapter.strategy.lr_scheduler_configs = [build_lr_scheduler(spec, adapter.scheduled_optimizer(trainer), phase)]
    adapter.lr_scheduler_phase = phase


def _say_optimizer_state_dropped(adapter: StrategyAdapter, plan: PhasePlan, trainer: pl.Trainer) -> None:
    assert plan.restore is not None
    phase = adapter.optimizer_phase
    rank_zero_info(
        f"fts_dist: phase {plan.depth} trains with {type(adapter.scheduled_optimizer(trainer)).__name__} "
        + (f"(phase {phase}'s `new_optimizer`)" if phase else "(from `configure_optimizers`)")
        + f": the weights of '{plan.restore.path}' (phase {plan.restore.depth}) are restored, but not its "
        "optimizer state, which belongs to another optimizer; the optimizer starts fresh."
    )


def _restore(adapter: StrategyAdapter, plan: PhasePlan, trainer: pl.Trainer) -> None:
    """Collective: every rank checks its part of the checkpoint and all agree, before any rank loads; then every
    rank loads, and all agree again: a failure on any rank is raised on every rank."""
    assert plan.restore is not None
    mark(f"in the transition to phase {plan.depth}: restore")
    adapter.comm.barrier()  # the writer finished before anyone reads
    sync_checkpoint(adapter.comm, adapter.checkpoint_views, plan.restore.path, "restore the best checkpoint")
    verify_before_load(adapter.comm, plan.restore.path, "restore the best checkpoint")
    mark(f"in the transition to phase {plan.depth}: loading the checkpoint")
    failure = None
    try:
        adapter.load_checkpoint_state(plan.restore.path, plan.trainable_phases(plan.restore.depth), trainer)
    except Exception as err:
        failure = f"{type(err).__name__}: {err}"
    failed = [(rank, message) for rank, message in enumerate(adapter.comm.all_gather(failure)) if message]
    if failed:
        rank, message = failed[0]
        raise CheckpointRestoreError(
            f"Cannot restore the best checkpoint '{plan.restore.path}' at a phase transition (rank {rank}: "
            f"{message}). The checkpoint is left as it is; resume from the last checkpoint, or set "
            "`restore_best=False`."
        )


def _add_phase_groups(adapter: StrategyAdapter, plan: PhasePlan, trainer: pl.Trainer, depth: int) -> None:
    """Extend the optimizer with the groups of the phases after the ones it holds, up to ``depth``.

    Each phase entered scales the learning rates of the groups before its own by its ``scale_lrs``: the groups
    held already by the product of all the entered phases' factors, each new group by those of the phases after
    it.
    """
    held = len(trainer.optimizers[0].param_groups) - adapter.group_count(0)
    entering = range(held + 1, depth + 1)
    if not entering:
        return
    live = adapter.schedule_parameters(trainer.lightning_module)
    groups = [
        PhaseGroup(plan.phase_params[d], tuple(live[name] for name in plan.phase_params[d]), _phase_lr(plan, d, depth))
        for d in entering
    ]
    scale_learning_rates(trainer.optimizers[0], math.prod(plan.lr_scale(d) for d in entering), lr_schedulers(trainer))
    adapter.extend_optimizer(trainer, groups)


def _phase_lr(plan: PhasePlan, phase: int, depth: int) -> float:
    """Phase ``phase``'s group learning rate at ``depth``: its scheduled rate, scaled by the later phases'
    ``scale_lrs`` up to ``depth``."""
    return plan.phase_lrs[phase] * math.prod(plan.lr_scale(later) for later in range(phase + 1, depth + 1))


def _check_group_count(optimizer: torch.optim.Optimizer, expected: int) -> None:
    if len(optimizer.param_groups) != expected:
        raise RuntimeError(
            f"fts_dist: the optimizer has {len(optimizer.param_groups)} parameter groups after the transition, "
            f"expected {expected}: an adapter seam added or dropped groups."
        )
