"""FinetuningScheduler: the Lightning callback that runs a multi-phase fine-tuning schedule."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn
from typing_extensions import override

from fts_dist.adapters import StrategyAdapter, resolve_adapter
from fts_dist.callbacks.batchnorm import FrozenBatchNormPolicy
from fts_dist.callbacks.checkpoint import FTSCheckpoint
from fts_dist.callbacks.coordinated_stop import CoordinatedStop
from fts_dist.callbacks.dependencies import check_keeps_a_best_checkpoint, ensure_callbacks
from fts_dist.callbacks.early_stopping import FTSEarlyStopping
from fts_dist.callbacks.memory_report import PhaseMemory
from fts_dist.callbacks.rank_states import RankStates
from fts_dist.callbacks.reports import check_unused_parameters, end_of_fit_line
from fts_dist.callbacks.stall_marks import StallMarks
from fts_dist.coordinator import (
    CheckpointRef,
    PhasePlan,
    ScheduleCoordinator,
    TransitionSignals,
    run_on_rank_zero,
    should_transition,
)
from fts_dist.errors import FTSConfigError
from fts_dist.export.names import model_names
from fts_dist.log import logger, rank_zero_info
from fts_dist.optim.param_groups import GroupSettings
from fts_dist.optim.reinit import check_new_lr_schedulers, check_reinit_classes
from fts_dist.runtime.clean_exit import leave_process_group_at_exit
from fts_dist.runtime.liveness import RankLiveness
from fts_dist.runtime.preemption import PreemptedStop, signal_names
from fts_dist.schedule import ResolvedSchedule, Schedule, ScheduleSource, load_schedule, write_schedule_file

_DEPTH_METRIC = "finetuning_depth"


class FinetuningScheduler(Callback):
    """Runs scheduled fine-tuning (gradual unfreezing) of a LightningModule, identically on every rank.

    Phase 0's parameters train from the first step; at each transition the best checkpoint so far is restored
    (``restore_best``), the next phase's parameters thaw, and they join the optimizer as a new parameter group at
    the phase's learning rate. A phase ends when :class:`FTSEarlyStopping` runs out of patience or at its
    ``max_transition_epoch``, whichever comes first (or only the latter with ``epoch_transitions_only``); the run
    ends when the last phase's criteria are met. Rank 0 makes every decision and broadcasts it.

    Args:
        ft_schedule: a schedule YAML path or dict in finetuning-scheduler's format; ``None`` generates the
            implicit schedule (two parameters per phase from the top) and writes it to
            ``Trainer.log_dir/<ModuleClass>_ft_schedule.yaml``.
        max_depth: the last phase to run; -1 (or beyond the schedule) runs all of it.
        base_max_lr: learning rate of phases that set no ``lr``; ``None`` uses a tenth of phase 0's.
        restore_best: restore the best checkpoint (per :class:`FTSCheckpoint`) at every transition.
        gen_ft_sched_only: write the implicit schedule and exit (``SystemExit(0)``) before any training step.
        epoch_transitions_only: end phases only at their ``max_transition_epoch`` (every phase needs one).
        reinit_optim_cfg: ``{"optimizer_init": {"class_path": ..., "init_args": {...}}}``: a new optimizer at every
            phase after 0 (as a ``new_optimizer`` key in each phase would; it wins over the phases' own).
        reinit_lr_cfg: ``{"lr_scheduler_init": {...}, "pl_lrs_cfg": {...}, "use_current_optimizer_pg_lrs": ...}``: a
            new LR scheduler at every phase after 0 of the implicit schedule (explicit schedules use
            ``new_lr_scheduler`` in their phases).
        allow_untested: run on a strategy without an fts_dist adapter, with a warning.
        apply_lambdas_new_pgs: a new group joins a scheduler with ``lr_lambdas`` (LambdaLR, MultiplicativeLR) at
            its ``lr`` times the last lambda at the current epoch, instead of at its ``lr``.
        logging_level: the level of the ``fts_dist`` logger (transitions, restores, why training stopped).
        enforce_phase0_params: when the optimizer from ``configure_optimizers`` holds other parameters than phase
            0's, rebuild its groups as one group of phase 0's parameters (group 0's settings); with ``False``, refuse
            to start instead.
        frozen_bn_track_running_stats: frozen BatchNorm layers keep updating their running statistics in training
            (``False``: they stop, as Lightning's ``BaseFinetuning.freeze`` does, until their phase thaws them).
        log_dir: where the schedule files go (default: ``Trainer.log_dir``, else ``default_root_dir``).
        frozen_bn_eval: keep BatchNorm layers whose parameters are all frozen in eval mode while training (they
            normalise with their running statistics and leave them unchanged), phase by phase.
        check_replicas: at each transition, right after the thaw, compare trainable sets and weight checksums across
            ranks.
        stall_timeout: seconds a rank may go without progress (a step, a backward, a validation batch, a step of a
            transition, a checkpoint save) before the job ends with exit status 76, every rank reporting where each
            rank was and naming the one behind (:mod:`fts_dist.runtime.stalls`). Set it above your longest
            checkpoint save. ``None`` (default): bounded only by the process-group timeout.
        stop_signals: signals (e.g. ``("SIGUSR1", "SIGTERM")``) that stop the run at the next step boundary: the ranks
            agree, save ``last.ckpt`` in the checkpoint callback's directory together, rank 0 requeues a SLURM job,
            and the process exits with status 85 (:mod:`fts_dist.runtime.preemption`). Default: the comma-separated
            names in ``$FTS_DIST_STOP_SIGNALS``, else none (the signals keep their usual effect).

    Example::

        from pytorch_lightning import Trainer
        from fts_dist import FinetuningScheduler
        trainer = Trainer(callbacks=[FinetuningScheduler(ft_schedule="my_schedule.yaml")])
        trainer.fit(model)
    """

    def __init__(
        self,
        ft_schedule: str | os.PathLike[str] | dict[Any, Any] | None = None,
        max_depth: int = -1,
        base_max_lr: float | None = 1e-5,
        restore_best: bool = True,
        gen_ft_sched_only: bool = False,
        epoch_transitions_only: bool = False,
        reinit_optim_cfg: dict[str, Any] | None = None,
        reinit_lr_cfg: dict[str, Any] | None = None,
        *,
        allow_untested: bool = False,
        apply_lambdas_new_pgs: bool = False,
        logging_level: int = logging.INFO,
        enforce_phase0_params: bool = True,
        frozen_bn_track_running_stats: bool = True,
        log_dir: str | os.PathLike[str] | None = None,
        frozen_bn_eval: bool = False,
        check_replicas: bool = True,
        stall_timeout: float | None = None,
        stop_signals: Sequence[str] | str | None = None,
    ) -> None:
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < -1:
            raise FTSConfigError(
                f"`max_depth` must be an integer >= -1 (-1: whole schedule), got {max_depth!r}.", key="max_depth"
            )
        if base_max_lr is not None and not (isinstance(base_max_lr, int | float) and base_max_lr > 0):
            raise FTSConfigError(
                f"`base_max_lr` must be a positive number or None, got {base_max_lr!r}.", key="base_max_lr"
            )
        if stall_timeout is not None and (
            isinstance(stall_timeout, bool) or not (isinstance(stall_timeout, int | float) and stall_timeout > 0)
        ):
            raise FTSConfigError(
                f"`stall_timeout` must be a positive number of seconds or None, got {stall_timeout!r}.",
                key="stall_timeout",
            )
        self.stall_timeout = stall_timeout
        try:
            self.stop_signals = signal_names(stop_signals)
        except ValueError as err:
            raise FTSConfigError(f"`stop_signals`: {err}.", key="stop_signals") from None
        self.ft_schedule = ft_schedule
        self.max_depth = max_depth
        self.base_max_lr = base_max_lr
        self.restore_best = restore_best
        self.gen_ft_sched_only = gen_ft_sched_only
        self.epoch_transitions_only = epoch_transitions_only
        self.reinit_optim_cfg = reinit_optim_cfg
        self.reinit_lr_cfg = reinit_lr_cfg
        self.allow_untested = allow_untested
        self.apply_lambdas_new_pgs = apply_lambdas_new_pgs
        self.enforce_phase0_params = enforce_phase0_params
        self.batchnorm = FrozenBatchNormPolicy(frozen_bn_track_running_stats, frozen_bn_eval)
        self._log_dir = log_dir
        self.check_replicas = check_replicas
        logger.setLevel(logging_level)
        self.coordinator: ScheduleCoordinator | None = None
        self.adapter: StrategyAdapter | None = None
        self.early_stopping: FTSEarlyStopping | None = None
        self.checkpoint: FTSCheckpoint | None = None
        self._loaded_state: dict[str, Any] | None = None
        self._trainer_ref: pl.Trainer | None = None
        self._check_unused_pending = False
        self._liveness = RankLiveness()
        self._numels: dict[str, int] = {}  # parameter -> elements, read before any wrapper shards it
        self.transition_seconds: dict[int, float] = {}  # depth -> wall time of its transition on this rank
        self.memory = PhaseMemory(None)  # each phase's memory beside its plan, planned at setup

    # -- public API of the original callback -------------------------------------------------------------------
    @property
    def curr_depth(self) -> int:
        """Index of the phase currently training."""
        return self.coordinator.depth if self.coordinator else 0

    @property
    def depth_remaining(self) -> int:
        """Number of phases still to run after the current one."""
        return self.coordinator.depth_remaining if self.coordinator else 0

    @property
    def trainable_numel(self) -> int:
        """Elements of the parameters that train in the current phase (whole tensors, however they are sharded)."""
        coordinator = self._coordinator
        return sum(self._numels[name] for name in coordinator.schedule.trainable_at(coordinator.depth))

    @property
    def log_dir(self) -> str | os.PathLike[str] | None:
        """Where the schedule files go: ``log_dir`` if given, else the trainer's ``log_dir`` or root directory."""
        if self._log_dir is not None:
            return self._log_dir
        trainer = self._trainer_ref
        return (trainer.log_dir or trainer.default_root_dir) if trainer is not None else None

    @property
    def schedule(self) -> Schedule:
        """The resolved schedule (exact parameter names) this run executes."""
        return self._coordinator.schedule

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        """Freeze every parameter but phase 0's (and apply the frozen-BatchNorm settings)."""
        self._adapter.thaw(pl_module, self.schedule[0].params)
        self.batchnorm.apply(pl_module)

    def should_transition(self, trainer: pl.Trainer) -> bool:
        """Whether the current phase's criteria are met at this epoch (this rank's view; rank 0's decides)."""
        coordinator = self._coordinator
        signals = TransitionSignals(trainer.current_epoch, self._es_phase_complete())
        return should_transition(
            coordinator.schedule, coordinator.depth, coordinator.max_depth, signals, self.epoch_transitions_only
        )

    def step(self) -> None:
        """Move to the next phase now (collective): restore the best checkpoint if configured, thaw, add groups."""
        trainer = self._trainer
        signals = TransitionSignals(trainer.current_epoch, es_phase_complete=True)
        plan = self._coordinator.decide(signals, self._best_checkpoint(), force=True)
        if plan is not None:
            self._apply(plan, trainer)

    def step_pg(self, optimizer: Any, depth: int, depth_sync: bool = True) -> None:
        """Move to phase ``depth`` now: thaw the phases up to it and give each an optimizer group (the schedule
        carries on from there). ``depth_sync`` has no effect: the groups always follow the thawed phases."""
        if optimizer is not self._trainer.optimizers[0]:
            raise FTSConfigError("step_pg() applies to the trainer's optimizer only.", key="optimizer")
        if depth < self.curr_depth:
            raise FTSConfigError(
                f"step_pg(depth={depth}) is below the current phase {self.curr_depth}: phases only thaw, never freeze "
                "again. Give a depth of at least the current one.",
                key="depth",
            )
        if depth > self._coordinator.max_depth:
            raise FTSConfigError(
                f"step_pg(depth={depth}) is past the last phase {self._coordinator.max_depth}.", key="depth"
            )
        self._adapter.apply_plan(self._coordinator.jump(self._trainer.current_epoch, depth), self._trainer)
        if self.early_stopping is not None:
            self.early_stopping.reset_phase()
        self._update_final_phase()

    def restore_best_ckpt(self) -> None:
        """Restore the best checkpoint's weights and optimizer state, keeping the current phase's groups."""
        best = self._best_checkpoint()
        if best is None:
            rank_zero_warn("fts_dist: no best checkpoint has been written yet; nothing restored.")
            return
        plan = self._coordinator.resume_plan(self._trainer.current_epoch, restore=best)
        self._adapter.apply_plan(plan, self._trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.coordinator is None:
            return dict(self._loaded_state or {})
        state = self.coordinator.state_dict()
        trainer = self._trainer_ref
        if trainer is not None and trainer.optimizers:  # saved beside the optimizer state: checked after a resume
            state["optimizer_groups"] = GroupSettings.capture(trainer.optimizers[0], []).groups
        if trainer is not None and self.adapter is not None:  # what an export must hold (fts_dist.export)
            module = trainer.lightning_module
            state["model_names"] = model_names(self.adapter.schedule_parameters(module), module)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded_state = dict(state_dict)
        if self.coordinator:
            self._load_coordinator_state()

    # -- Lightning hooks ---------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        self._trainer_ref = trainer
        self.early_stopping, self.checkpoint = ensure_callbacks(
            trainer, pl_module, stage, need_early_stopping=not (self.epoch_transitions_only or self.gen_ft_sched_only)
        )
        self.adapter = resolve_adapter(trainer.strategy, self.allow_untested)
        self.adapter.apply_lambdas_new_pgs = self.apply_lambdas_new_pgs
        self.adapter.enforce_phase0_params = self.enforce_phase0_params
        self.adapter.validate_strategy(trainer)
        self.adapter.prepare_checkpointing(trainer, self._resume_from_metadata)
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
        if not any(isinstance(c, RankStates) for c in callbacks):
            callbacks.append(RankStates(lambda: self._adapter.comm))  # each rank's generators and loader position
        if self.stall_timeout is not None and not any(isinstance(c, StallMarks) for c in callbacks):
            callbacks.append(StallMarks(self.stall_timeout, lambda: self.curr_depth))  # the watchdog's marks
        if self.stop_signals and not any(isinstance(c, CoordinatedStop) for c in callbacks):
            callbacks.append(CoordinatedStop(self.stop_signals, self.checkpoint))
        leave_process_group_at_exit()  # a preempted stop ends with exit code 85, not gloo's abort at exit
        ranks = self._liveness.start(self.adapter.comm, trainer.local_rank)
        if ranks:
            rank_zero_info(ranks)
        self._numels = {name: p.numel() for name, p in self.adapter.schedule_parameters(pl_module).items()}
        log_dir = Path(self.log_dir or trainer.default_root_dir)
        resolved = run_on_rank_zero(lambda: self._prepare_schedule(pl_module, log_dir), self.adapter.comm)
        if self.gen_ft_sched_only:
            rank_zero_info(f"fts_dist: wrote the implicit schedule to {log_dir}; exiting before training.")
            raise SystemExit(0)
        if resolved.unscheduled:
            rank_zero_warn(
                f"fts_dist: {len(resolved.unscheduled)} parameter(s) are in no phase and stay frozen: "
                f"{list(resolved.unscheduled)}"
            )
        if self.restore_best:
            check_keeps_a_best_checkpoint(self.checkpoint)
        self.coordinator = ScheduleCoordinator(
            resolved.schedule,
            max_depth=self.max_depth,
            base_max_lr=self.base_max_lr,
            epoch_transitions_only=self.epoch_transitions_only,
            restore_best=self.restore_best,
            comm=self.adapter.comm,
        )
        if self._loaded_state:
            self._load_coordinator_state()
        self.checkpoint.depth_source = lambda: self.curr_depth
        self._sync_max_epochs(trainer)
        self.freeze_before_training(pl_module)
        self.adapter.keep_frozen_through_model_setup(trainer, resolved.schedule[0].params)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        adapter, coordinator = self._adapter, self._coordinator
        adapter.setup_optimizer(trainer, coordinator.schedule[0].params)
        adapter.validate_schedule(coordinator.schedule, trainer)
        check_new_lr_schedulers(coordinator.schedule, adapter.group_count)
        coordinator.bind_phase0_lr(float(trainer.optimizers[0].param_groups[0]["lr"]))
        self.memory = PhaseMemory.plan(adapter, trainer, coordinator.schedule)
        self._resume_at_saved_depth(trainer)
        self._update_final_phase()
        self._check_unused_pending = True

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._adapter.validate_training_loop(trainer)
        saved = (self._loaded_state or {}).get("optimizer_groups")
        if saved is None or trainer.ckpt_path is None:
            return
        expected, optimizer = GroupSettings(saved, []), trainer.optimizers[0]
        drift = expected.drift(optimizer)
        if drift:  # a loader that drops group hyperparameters (pytorch issue 143828 reported one)
            expected.reapply(optimizer, [])
            rank_zero_warn(
                f"fts_dist: after loading '{trainer.ckpt_path}' the optimizer's group settings differed from the saved "
                f"ones: {drift[:4]}; set them back to the saved values."
            )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        signals = TransitionSignals(trainer.current_epoch, self._es_phase_complete())
        plan = self._coordinator.decide(signals, self._best_checkpoint())
        if plan is not None:
            self._apply(plan, trainer)
        self.batchnorm.apply(pl_module)  # the trainable set of this epoch (a transition, a resume)
        self.batchnorm.hold()
        self._log_depth(trainer)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batchnorm.hold()  # a mid-epoch validation may have set the whole module to train mode

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.memory.sample(trainer, self.curr_depth)  # after the phase's first optimizer step

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._check_unused_pending:  # once per phase: the first backward shows which thawed tensors get no grad
            self._check_unused_pending = False
            check_unused_parameters(self._adapter, pl_module, self.curr_depth)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, PreemptedStop):
            rank_zero_info(exception.message)
            return
        # printed by the failing rank itself (not rank 0 only), so a multi-rank log names who failed
        peers = self._liveness.describe_failure()
        print(
            f"fts_dist: rank {trainer.global_rank} failed at epoch {trainer.current_epoch}, phase {self.curr_depth}: "
            f"{type(exception).__name__}: {exception}" + (f" ({peers})" if peers else ""),
            file=sys.stderr,
            flush=True,
        )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.memory.end_phase(trainer)
        self.batchnorm.release(pl_module)
        rank_zero_info(end_of_fit_line(trainer, self._coordinator, self.early_stopping))

    # -- internals ---------------------------------------------------------------------------------------------
    def _apply(self, plan: PhasePlan, trainer: pl.Trainer) -> None:
        self.memory.end_phase(trainer)
        started = time.perf_counter()
        self._adapter.apply_plan(plan, trainer, check_replicas=self.check_replicas)
        self.transition_seconds[plan.depth] = time.perf_counter() - started
        if self.early_stopping is not None:
            self.early_stopping.reset_phase()
        self._update_final_phase()
        self._check_unused_pending = True
        restored = f"restored '{plan.restore.path}'" if plan.restore else "no checkpoint restored"
        rank_zero_info(
            f"fts_dist: phase {plan.depth} of {self._coordinator.max_depth} begins at epoch {plan.epoch}: "
            f"{self.trainable_numel:,} trainable parameters in {len(plan.trainable)} tensors, "
            f"{len(trainer.optimizers[0].param_groups)} optimizer groups, {restored} "
            f"(transition took {self.transition_seconds[plan.depth]:.2f} s)."
        )

    def _prepare_schedule(self, pl_module: pl.LightningModule, log_dir: Path) -> ResolvedSchedule:
        """Rank 0: load (or generate), check and resolve the schedule, and write what the run executes."""
        source: ScheduleSource = None if self.gen_ft_sched_only else self.ft_schedule  # gen-only writes the implicit
        names = list(self._adapter.schedule_parameters(pl_module))
        epochs_only = self.epoch_transitions_only and not self.gen_ft_sched_only
        resolved = load_schedule(
            source,
            names,
            epoch_transitions_only=epochs_only,
            reinit_optim_cfg=None if self.gen_ft_sched_only else self.reinit_optim_cfg,
            reinit_lr_cfg=None if self.gen_ft_sched_only else self.reinit_lr_cfg,
        )
        check_reinit_classes(resolved.schedule)
        path = write_schedule_file(resolved, source is None, log_dir, type(pl_module).__name__)
        if source is None:
            rank_zero_info(f"fts_dist: generated the implicit schedule ({len(resolved.schedule)} phases) at {path}.")
        return resolved

    def _resume_from_metadata(self, metadata: dict[str, Any]) -> None:
        """Before a strategy that restores after setup loads a checkpoint's optimizer state: this callback's state
        comes from the checkpoint's metadata now (Lightning restores it only later), and the optimizer gets the
        saved depth's groups to load into."""
        state = metadata.get("callbacks", {}).get(self.state_key)
        if state is not None:
            self.load_state_dict(state)
            self._resume_at_saved_depth(self._trainer)
            self._update_final_phase()

    def _resume_at_saved_depth(self, trainer: pl.Trainer) -> None:
        coordinator = self._coordinator
        optimizer = trainer.optimizers[0]
        if coordinator.depth > 0 and len(optimizer.param_groups) < self._adapter.group_count(coordinator.depth):
            self._adapter.apply_plan(coordinator.resume_plan(trainer.current_epoch), trainer)
            rank_zero_info(f"fts_dist: resumed at phase {coordinator.depth} of {coordinator.max_depth}.")

    def _update_final_phase(self) -> None:
        if self.early_stopping is not None:
            self.early_stopping.final_phase = self._coordinator.in_final_phase

    def _es_phase_complete(self) -> bool:
        return bool(self.early_stopping and self.early_stopping.es_phase_complete)

    def _best_checkpoint(self) -> CheckpointRef | None:
        if self.checkpoint is None or not self.checkpoint.best_model_path:
            return None
        return CheckpointRef(self.checkpoint.best_model_path, self.checkpoint.best_ckpt_depth)

    def _sync_max_epochs(self, trainer: pl.Trainer) -> None:
        """A last phase with its own ``max_transition_epoch`` runs until at least that epoch (the original's rule)."""
        coordinator = self._coordinator
        final_epoch = coordinator.schedule[coordinator.max_depth].max_transition_epoch
        if final_epoch >= 0 and trainer.fit_loop.max_epochs is not None and final_epoch > trainer.fit_loop.max_epochs:
            rank_zero_warn(f"fts_dist: raising max_epochs to {final_epoch}, the last phase's max_transition_epoch.")
            trainer.fit_loop.max_epochs = final_epoch

    def _load_coordinator_state(self) -> None:
        assert self._loaded_state is not None
        coordinator = self._coordinator
        saved_schedule = self._loaded_state.get("schedule")
        if saved_schedule is not None and saved_schedule != coordinator.schedule.to_dict():
            rank_zero_warn(
                "fts_dist: the schedule differs from the one saved in the checkpoint; resuming with "
                "the new schedule at the saved depth."
            )
        coordinator.load_state_dict(self._loaded_state)

    @rank_zero_only
    def _log_depth(self, trainer: pl.Trainer) -> None:
        for run_logger in trainer.loggers:
            run_logger.log_metrics({_DEPTH_METRIC: float(self.curr_depth)}, step=trainer.global_step)

    @property
    def _coordinator(self) -> ScheduleCoordinator:
        if self.coordinator is None:
            raise RuntimeError("FinetuningScheduler is not set up yet: call Trainer.fit first.")
        return self.coordinator

    @property
    def _adapter(self) -> StrategyAdapter:
        if self.adapter is None:
            raise RuntimeError("FinetuningScheduler is not set up yet: call Trainer.fit first.")
        return self.adapter

    @property
    def _trainer(self) -> pl.Trainer:
        trainer = self._trainer_ref
        if trainer is None:
            raise RuntimeError("FinetuningScheduler is not set up yet: call Trainer.fit first.")
        return trainer
