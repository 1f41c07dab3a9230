"""The strategy adapter interface, implemented for one process; other families override its seams.

.. warning:: The seams are an experimental extension point: their names and arguments may change while the sharded
   and DeepSpeed adapters settle. :meth:`StrategyAdapter.apply_plan`, the order of a transition, is not a seam: it
   lives in :mod:`fts_dist.adapters.transition`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, final

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from typing_extensions import override

from fts_dist.adapters import transition
from fts_dist.adapters.checkpoint_checks import verify_before_load
from fts_dist.adapters.checkpoint_sync import CheckpointViews, sync_checkpoint
from fts_dist.adapters.replicas import ReplicaView, replica_problems, replica_view
from fts_dist.adapters.resume_path import agree_on_resume_path
from fts_dist.adapters.strategy_hooks import lightning_method, wrap_lightning_method
from fts_dist.checkpoint_io import install_atomic_checkpoint_io, remove_path
from fts_dist.checkpoint_manifest import sidecar_path
from fts_dist.coordinator import Comm, LocalComm, PhasePlan
from fts_dist.errors import CheckpointRestoreError, FTSConfigError, ReplicaMismatchError
from fts_dist.log import rank_zero_info
from fts_dist.optim.param_groups import (
    PhaseGroup,
    add_param_group,
    check_lr_scheduler_supported,
    lr_schedulers,
    release_state,
    truncate_param_groups,
)
from fts_dist.optim.reinit import (
    OptimizerFactory,
    configured_optimizer_factory,
    rebind_lr_schedulers,
)
from fts_dist.schedule import Schedule

__all__ = ["CheckpointRestoreError", "ReplicaMismatchError", "StrategyAdapter"]


class StrategyAdapter:
    """Applies the coordinator's phase plans on one rank, for one family of Lightning strategies.

    The base class is the single-process implementation. :meth:`apply_plan` holds the order of a transition, once,
    for every family: restore a checkpoint, thaw, extend the optimizer, check the replicas, re-register the
    trainable set. Each step is a seam an adapter overrides:

    - :meth:`load_checkpoint_state`: model and optimizer state from a file, a sharded directory, an engine;
    - :meth:`thaw`: make exactly a set of parameters trainable;
    - :meth:`extend_optimizer`: add phases' groups;
    - :meth:`install_optimizer`: replace the optimizer (a phase's ``new_optimizer``);
    - :meth:`replica_view`: what this rank holds that its peers must agree with;
    - :meth:`on_trainable_changed`: re-register the trainable set with a wrapper or engine.

    Around a transition, an adapter may also override: :attr:`comm` (collectives), :meth:`schedule_parameters` (the
    names a schedule resolves against, and the live parameters), :meth:`validate_strategy`,
    :meth:`validate_schedule` and :meth:`validate_training_loop` (refuse what cannot work, before step 0),
    :meth:`setup_optimizer` and :meth:`optimizer_parameters`, :meth:`prepare_checkpointing`,
    :meth:`checkpoint_metadata` and :meth:`after_checkpoint_load` (checkpoint formats), :meth:`scheduled_optimizer`,
    :meth:`keep_frozen_through_model_setup`, :meth:`parameters_without_gradient` and
    :meth:`unused_parameters_are_fatal`.

    Args:
        strategy: the trainer's strategy.
    """

    @override
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "apply_plan" in vars(cls):
            raise TypeError(
                f"{cls.__name__} overrides apply_plan, the order of a transition, which every adapter shares; "
                "override its seams instead (load_checkpoint_state, thaw, extend_optimizer, install_optimizer, "
                "replica_view, on_trainable_changed)."
            )

    def __init__(self, strategy: pl.strategies.Strategy) -> None:
        self.strategy = strategy
        self._phase0_groups: int | None = None
        self.configured_optimizer: OptimizerFactory | None = None  # rebuilds configure_optimizers' optimizer
        self.optimizer_phase = 0  # the phase whose optimizer is installed (0: configure_optimizers')
        self.lr_scheduler_phase = 0  # the phase whose LR scheduler runs (0: configure_optimizers')
        self.apply_lambdas_new_pgs = False  # set by the callback: new groups start at lr x the scheduler's lambda
        self.enforce_phase0_params = True  # set by the callback: regroup an optimizer that holds more than phase 0
        self._load_strategy_checkpoint = lightning_method(strategy, "load_checkpoint")  # never intercepted
        self._checkpoint_views: CheckpointViews | None = None

    # -- seams -------------------------------------------------------------------------------------------------
    @property
    def comm(self) -> Comm:
        """Collectives across the ranks that run the schedule."""
        return LocalComm()

    @property
    def checkpoint_views(self) -> CheckpointViews:
        """Which ranks see the same copy of each checkpoint directory (nodes without a shared filesystem)."""
        if self._checkpoint_views is None:
            self._checkpoint_views = CheckpointViews(self.comm)
        return self._checkpoint_views

    def validate_strategy(self, trainer: pl.Trainer) -> None:
        """Raise :class:`FTSConfigError` for a strategy configuration this adapter cannot run correctly."""

    def schedule_parameters(self, module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
        """The parameters a schedule names, by the names it uses (``named_parameters()`` of the unwrapped module)."""
        return dict(module.named_parameters())

    def validate_schedule(self, schedule: Schedule, trainer: pl.Trainer) -> None:
        """Check the resolved schedule against the strategy's layout once the model is wrapped (before step 0)."""

    def prepare_checkpointing(self, trainer: pl.Trainer, before_resume_load: Callable[[dict[str, Any]], None]) -> None:
        """Make checkpoint writes atomic (whole or absent), unless the user configured a checkpoint IO.

        A checkpoint to resume from is the one rank 0 chose (:mod:`fts_dist.adapters.resume_path`), sent to the
        nodes that lack it (:func:`~fts_dist.adapters.checkpoint_sync.sync_checkpoint`) and checked on every rank
        before Lightning loads it (the ranks agree first:
        :func:`~fts_dist.adapters.checkpoint_checks.verify_before_load`).
        Strategies that restore a checkpoint after setup (sharded, DeepSpeed) load optimizer state and callback
        states in one call, after ``on_fit_start``: the optimizer's groups must already match the saved depth. For
        those, ``before_resume_load`` receives the checkpoint's :meth:`checkpoint_metadata` right before Lightning
        loads a checkpoint to resume from.
        """
        install_atomic_checkpoint_io(self.strategy)
        after_setup = self.strategy.restore_checkpoint_after_setup
        for callback in trainer.checkpoint_callbacks:  # each directory's views, before step 0 (said when not shared)
            directory = getattr(callback, "dirpath", None)
            if directory:
                self.checkpoint_views.of(Path(directory))
        agree_on_resume_path(trainer, self.comm)
        wrap_lightning_method(self.strategy, "remove_checkpoint", self._remove_from_every_view)

        def intercept(load: Callable[..., Any]) -> Callable[..., Any]:
            def load_checkpoint(checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:
                if trainer.state.fn == "fit":
                    path = str(self.strategy.broadcast(checkpoint_path))
                    sync_checkpoint(self.comm, self.checkpoint_views, path, "resume from the checkpoint")
                    verify_before_load(
                        self.comm, path, "resume from the checkpoint"
                    )  # before any rank starts a collective load
                    if after_setup:
                        before_resume_load(self.checkpoint_metadata(path))
                loaded = load(checkpoint_path, *args, **kwargs)
                if after_setup:
                    self.after_checkpoint_load(trainer)
                return loaded

            return load_checkpoint

        wrap_lightning_method(self.strategy, "load_checkpoint", intercept)

    def _remove_from_every_view(self, remove: Callable[..., Any]) -> Callable[..., Any]:
        """Lightning removes an old checkpoint on rank 0 only; each other view's leader removes its own copy."""

        def remove_checkpoint(filepath: Any) -> None:
            remove(filepath)
            views = self.checkpoint_views.known(Path(str(filepath)).parent)
            if views is not None and self.comm.rank != 0 and views.is_leader(self.comm.rank):
                remove_path(Path(filepath))
                sidecar_path(Path(filepath)).unlink(missing_ok=True)

        return remove_checkpoint

    def after_checkpoint_load(self, trainer: pl.Trainer) -> None:
        """Called after the strategy loaded a checkpoint to resume from (an engine may need to re-link its state)."""

    def validate_training_loop(self, trainer: pl.Trainer) -> None:
        """Check what depends on the training loop (batches per epoch) once it is known, before step 0."""

    def keep_frozen_through_model_setup(self, trainer: pl.Trainer, phase0_params: Sequence[str]) -> None:
        """Freeze everything but phase 0 again right before the strategy builds the optimizer.

        The freeze at ``setup`` precedes ``configure_model``, which may change ``requires_grad`` (tensor parallelism's
        ``parallelize_module`` re-enabled it on frozen parameters before torch PR 171709); ``configure_optimizers``
        must still see phase 0 alone.
        """

        def refreeze(setup_optimizers: Callable[..., Any]) -> Callable[..., Any]:
            def setup_optimizers_frozen(trainer_: pl.Trainer) -> None:
                self.thaw(trainer_.lightning_module, phase0_params)
                setup_optimizers(trainer_)

            return setup_optimizers_frozen

        wrap_lightning_method(self.strategy, "setup_optimizers", refreeze)

    def checkpoint_metadata(self, path: str) -> dict[str, Any]:
        """Everything a checkpoint holds besides weights and optimizer state (loops, callbacks, schedulers)."""
        if Path(path).is_dir():  # a distributed checkpoint: Lightning keeps the rest in meta.pt
            return dict(torch.load(Path(path) / "meta.pt", map_location="cpu", weights_only=False))
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}

    def parameters_without_gradient(self, module: torch.nn.Module) -> list[str]:
        """Right after a backward: the trainable parameters that got no gradient."""
        return [name for name, p in self.schedule_parameters(module).items() if p.requires_grad and p.grad is None]

    def unused_parameters_are_fatal(self) -> bool:
        """Whether a thawed parameter that gets no gradient breaks training under this strategy (not just idles)."""
        return False

    def load_checkpoint_state(self, path: str, phases: Sequence[Sequence[str]], trainer: pl.Trainer) -> None:
        """Load the weights and optimizer state saved at ``path``, leaving the optimizer with exactly the groups it
        saved: phase 0's and one for each later phase in ``phases`` (each phase's parameters that trained at the
        checkpoint's depth, from phase 0 to that depth). Raise before changing anything when the checkpoint cannot be
        used."""
        groups = self.group_count(len(phases) - 1)
        checkpoint = self._load_strategy_checkpoint(path)
        saved_groups = len(checkpoint["optimizer_states"][0]["param_groups"])
        if saved_groups != groups:
            raise ValueError(f"it holds {saved_groups} optimizer group(s) where this schedule expects {groups}")
        self.strategy.load_model_state_dict(checkpoint, strict=True)
        truncate_param_groups(trainer.optimizers[0], groups, lr_schedulers(trainer))
        release_state(trainer.optimizers[0])  # the loaded state replaces it: never both at once
        self.strategy.load_optimizer_state_dict(checkpoint)

    def optimizer_parameters(self, trainer: pl.Trainer) -> list[list[torch.nn.Parameter]]:
        """The model parameters each optimizer group holds (an engine's optimizer may hold flat copies instead)."""
        return [list(group["params"]) for group in trainer.optimizers[0].param_groups]

    def thaw(self, module: torch.nn.Module, trainable: Iterable[str]) -> None:
        """Make exactly the parameters named in ``trainable`` require grad."""
        keep = set(trainable)
        for name, param in self.schedule_parameters(module).items():
            param.requires_grad_(name in keep)

    def extend_optimizer(self, trainer: pl.Trainer, groups: Sequence[PhaseGroup]) -> None:
        """Give each phase in ``groups`` a new optimizer group, in order, and extend the LR schedulers with it."""
        for group in groups:
            add_param_group(
                trainer.optimizers[0], group, lr_schedulers(trainer), apply_lambdas=self.apply_lambdas_new_pgs
            )

    def install_optimizer(self, trainer: pl.Trainer, make: OptimizerFactory, groups: list[dict[str, Any]]) -> None:
        """Replace the optimizer with ``make(groups)`` (fresh state), and point the LR schedulers at it."""
        optimizer = make(groups)
        self.strategy.optimizers = [optimizer]
        rebind_lr_schedulers(lr_schedulers(trainer), optimizer)

    def scheduled_optimizer(self, trainer: pl.Trainer) -> torch.optim.Optimizer:
        """The optimizer whose groups the LR schedulers set (an engine's may be the one inside its own)."""
        return trainer.optimizers[0]

    def replica_view(self, module: torch.nn.Module) -> ReplicaView:
        """This rank's trainable set and what it holds that its peers must agree with."""
        live = self.schedule_parameters(module)
        return replica_view(live.items(), (n for n, p in live.items() if p.requires_grad))

    def on_trainable_changed(self, trainer: pl.Trainer) -> None:
        """Called after the trainable set grew (a transition, or a resume past phase 0)."""

    def memory_layout(self) -> dict[str, Any] | None:
        """How :func:`fts_dist.memory.plan_memory` models this strategy (``strategy``, ``zero_stage``, ``offload``),
        or ``None`` where no plan fits. One process holds everything, as one DDP rank does."""
        return {"strategy": "ddp"}

    # -- setup -------------------------------------------------------------------------------------------------
    def setup_optimizer(self, trainer: pl.Trainer, phase0_params: Sequence[str]) -> None:
        """Check that there is one optimizer, holding only phase 0's parameters (with ``enforce_phase0_params``: make
        it so), with a supported LR scheduler, and remember its group count (each later phase adds one group)."""
        if len(trainer.optimizers) != 1:
            raise FTSConfigError(
                f"fts_dist schedules exactly one optimizer; `configure_optimizers` returned {len(trainer.optimizers)}. "
                "Return a single optimizer (use parameter groups for per-parameter options).",
                key="optimizer",
            )
        for config in trainer.lr_scheduler_configs:
            check_lr_scheduler_supported(config.scheduler)
        live = self.schedule_parameters(trainer.lightning_module)
        held = {id(p) for group in self.optimizer_parameters(trainer) for p in group}
        phase0 = set(phase0_params)
        extra = [n for n, p in live.items() if id(p) in held and n not in phase0]
        missing = [n for n, p in live.items() if n in phase0 and id(p) not in held]
        optimizer = trainer.optimizers[0]
        regroupable = isinstance(optimizer, torch.optim.Optimizer) and not hasattr(optimizer, "optim")  # not sharded
        if (extra or missing) and self.enforce_phase0_params and regroupable:
            truncate_param_groups(optimizer, 1, lr_schedulers(trainer))
            optimizer.param_groups[0]["params"] = [p for n, p in live.items() if n in phase0]
            if "param_names" in optimizer.param_groups[0]:
                optimizer.param_groups[0]["param_names"] = [n for n in live if n in phase0]
            rank_zero_info(
                f"fts_dist: the optimizer from `configure_optimizers` held {len(extra)} parameter(s) outside phase 0 "
                f"(e.g. {extra[:3]}) and lacked {len(missing)} of phase 0's (e.g. {missing[:3]}): its groups are now "
                "one group of phase 0's parameters, with group 0's settings (enforce_phase0_params=True)."
            )
        elif extra:
            raise FTSConfigError(
                f"The optimizer holds {len(extra)} parameter(s) that phase 0 does not thaw, e.g. {extra[:3]}. "
                "Build the optimizer from trainable parameters only "
                "(`filter(lambda p: p.requires_grad, self.parameters())`), add them to phase 0"
                + (", or leave `enforce_phase0_params` on to let fts_dist regroup it." if regroupable else ".")
                + ("" if regroupable else " (A sharded optimizer cannot be regrouped.)"),
                phase=0,
                key="params",
            )
        elif missing:
            rank_zero_warn(
                f"Phase 0 thaws {missing[:3]} (and {max(len(missing) - 3, 0)} more) but the optimizer "
                "does not hold them, so they will not train in phase 0."
            )
        self._phase0_groups = len(trainer.optimizers[0].param_groups)
        self.configured_optimizer = configured_optimizer_factory(self.scheduled_optimizer(trainer))

    def group_count(self, depth: int) -> int:
        """Optimizer groups at ``depth``: phase 0's from ``configure_optimizers``, then one per phase."""
        if self._phase0_groups is None:
            raise RuntimeError("setup_optimizer() must run before phase plans are applied")
        return self._phase0_groups + depth

    # -- the order of a transition -----------------------------------------------------------------------------
    @final
    def apply_plan(self, plan: PhasePlan, trainer: pl.Trainer, check_replicas: bool = False) -> None:
        """Bring this rank to ``plan.depth``: restore, thaw, extend (or replace) the optimizer, check, re-register.

        The order is written once, in :func:`fts_dist.adapters.transition.apply_plan`; it calls this adapter's seams.
        """
        transition.apply_plan(self, plan, trainer, check_replicas)

    def check_replicas(self, module: torch.nn.Module, depth: int) -> None:
        """Collective: compare every rank's :meth:`replica_view`; raise on every rank if they disagree."""
        if self.comm.world_size == 1:
            return
        problems = replica_problems(self.comm.all_gather(self.replica_view(module)))
        if problems:
            raise ReplicaMismatchError(
                f"Replicas diverged at phase {depth}: " + "; ".join(problems) + ". Every rank must apply the same "
                "plan to the same weights; check for rank-dependent code in the module or data."
            )
