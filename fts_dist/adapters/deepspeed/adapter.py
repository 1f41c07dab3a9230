"""The DeepSpeed adapter: scheduled fine-tuning under Lightning's ``DeepSpeedStrategy``, ZeRO stages 1, 2 and 3.

At every transition the engine's ZeRO optimizer is rebuilt inside the live engine for the new trainable set
(:mod:`fts_dist.adapters.deepspeed.engine`): earlier groups keep their weights, fp32 masters and optimizer state,
step counts included; the new phase's group starts fresh; frozen parameters hold no gradient buffer, no fp32 copy
and no optimizer state on any rank. The documented alternative, frozen parameters in an ``lr=0`` group (DeepSpeed
issue 2615), holds masters and state for them all along and advances Adam's step counts before they thaw.

A phase that freezes parameters again (``freeze:``) rebuilds without them: their group keeps its place and its
other parameters, and the adapter remembers every group's members (:attr:`DeepSpeedAdapter.group_members`), so a
restore of a checkpoint from before the freeze gives them back their group.

Checkpoints are DeepSpeed's own directories, written through a staging directory like sharded ones; a restore
first rebuilds the optimizer with exactly the groups the checkpoint holds, then lets the engine load it (each rank
its own partitions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DeepSpeedStrategy
from typing_extensions import override

from fts_dist.adapters.deepspeed.engine import (
    group_parameters,
    mapping_model_states,
    rebuild_zero_optimizer,
    relink_after_load,
    zero_stage,
)
from fts_dist.adapters.distributed import DistributedAdapter
from fts_dist.adapters.replicas import ReplicaView
from fts_dist.adapters.staged_saves import stage_checkpoint_directories
from fts_dist.errors import FTSConfigError
from fts_dist.optim.param_groups import (
    PhaseGroup,
    extend_schedulers,
    lr_schedulers,
    truncate_schedulers,
    walk_schedulers,
)
from fts_dist.optim.reinit import OptimizerFactory, build_optimizer, rebind_lr_schedulers
from fts_dist.schedule import Schedule


class DeepSpeedAdapter(DistributedAdapter):
    """Applies phase plans under ``DeepSpeedStrategy`` (and :class:`fts_dist.DeepSpeedStrategy`, also on CPU).

    The optimizer comes from ``configure_optimizers`` (DeepSpeed wraps it), not from the DeepSpeed config.
    """

    serves = DeepSpeedStrategy

    def __init__(self, strategy: pl.strategies.Strategy) -> None:
        super().__init__(strategy)
        self.group_members: list[list[torch.nn.Parameter]] = []  # each group's parameters, frozen ones included
        self._trainable: set[int] = set()  # ids of the parameters the last thaw made trainable

    @override
    def validate_schedule(self, schedule: Schedule, trainer: pl.Trainer) -> None:
        """The DeepSpeed config, as Lightning completed it at setup (precision, batch sizes), and the groups a
        ``freeze`` would empty, before step 0."""
        assert isinstance(self.strategy, DeepSpeedStrategy)
        config: dict[str, Any] = self.strategy.config or {}
        for problem, fix in _config_problems(config, self.strategy):
            raise FTSConfigError(f"{problem} {fix}", key="deepspeed")
        self._check_no_group_emptied(schedule, trainer)
        for depth, phase in enumerate(schedule.phases):
            spec = phase.new_optimizer
            if spec is not None and not _rebuildable(build_optimizer(spec, [{"params": [_STAND_IN]}], depth)):
                raise FTSConfigError(
                    f"Phase {depth} `new_optimizer` {spec.class_name} cannot run under DeepSpeed here: every "
                    "transition rebuilds the ZeRO optimizer and restores its state. Use torch.optim.Adam, AdamW or SGD "
                    "(dampening 0), or DeepSpeed's DeepSpeedCPUAdam or FusedAdam.",
                    phase=depth,
                    key="new_optimizer",
                )

    @override
    def setup_optimizer(self, trainer: pl.Trainer, phase0_params: Sequence[str]) -> None:
        self.check_scheduler_alignment(trainer)
        basic = self._engine().optimizer.optimizer  # the optimizer from configure_optimizers, inside ZeRO's
        if not _rebuildable(basic):
            raise FTSConfigError(
                f"{type(basic).__name__} cannot be carried across a transition: each transition rebuilds the ZeRO "
                "optimizer and restores Adam's or SGD's state. Use torch.optim.Adam, AdamW or SGD (dampening 0), or "
                "DeepSpeed's DeepSpeedCPUAdam or FusedAdam.",
                phase=0,
                key="optimizer",
            )
        super().setup_optimizer(trainer, phase0_params)
        self.group_members = group_parameters(self._engine())
        self._trainable = {id(p) for params in self.group_members for p in params}

    @override
    def thaw(self, module: torch.nn.Module, trainable: Iterable[str]) -> None:
        names = set(trainable)
        super().thaw(module, names)
        self._trainable = {id(p) for name, p in self.schedule_parameters(module).items() if name in names}

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
        stage_checkpoint_directories(self.strategy, self.comm, self.checkpoint_views)

    @override
    def after_checkpoint_load(self, trainer: pl.Trainer) -> None:
        relink_after_load(self._engine())

    @override
    def memory_layout(self) -> dict[str, Any] | None:
        config: dict[str, Any] = getattr(self.strategy, "config", None) or {}
        zero = config.get("zero_optimization", {})
        offload = (zero.get("offload_optimizer") or {}).get("device") == "cpu"
        stage = int(zero.get("stage", 0)) or None
        return {"strategy": "deepspeed", "zero_stage": stage, "offload": offload, "zero": zero}

    @override
    def unused_parameters_are_fatal(self) -> bool:
        config: dict[str, Any] = getattr(self.strategy, "config", None) or {}
        return not config.get("zero_optimization", {}).get("ignore_unused_parameters", True)

    @override
    def checkpoint_metadata(self, path: str) -> dict[str, Any]:
        """The client state Lightning saved with the engine (callbacks, loops), in rank 0's model-states file."""
        if not Path(path).is_dir():
            return super().checkpoint_metadata(path)
        files = _checkpoint_files(Path(path), rank=0)
        state = torch.load(files[0], map_location="cpu", weights_only=False, mmap=True)
        return {k: v for k, v in state.items() if k not in _DEEPSPEED_KEYS}

    @override
    def load_checkpoint_state(self, path: str, phases: Sequence[Sequence[str]], trainer: pl.Trainer) -> None:
        # each rank reads its own files: every rank checks them before any collective, and all agree
        try:
            _checkpoint_files(Path(path), rank=self.comm.rank)
            failure = None
        except (OSError, ValueError) as err:
            failure = str(err)
        failed = [(rank, message) for rank, message in enumerate(self.comm.all_gather(failure)) if message]
        if failed:
            raise FileNotFoundError(f"rank {failed[0][0]}: {failed[0][1]}")
        groups = self.group_count(len(phases) - 1)
        names = {name for phase in phases for name in phase}
        trained = {id(p) for name, p in self.schedule_parameters(trainer.lightning_module).items() if name in names}
        saved = [[p for p in members if id(p) in trained] for members in self.group_members[:groups]]
        if _ids(saved) != _ids(group_parameters(self._engine())):  # an earlier phase's: the optimizer gets its groups
            self._rebuild(trainer, [{"params": params} for params in saved])
            del self.group_members[groups:]
            truncate_schedulers(lr_schedulers(trainer), groups)
        with mapping_model_states(self._engine()):  # the engine loads weights and its partitions' optimizer state
            self._load_strategy_checkpoint(path)
        relink_after_load(self._engine())

    @override
    def extend_optimizer(self, trainer: pl.Trainer, groups: Sequence[PhaseGroup]) -> None:
        """One rebuild of the engine's ZeRO optimizer for all of ``groups`` in this call (a restore of an earlier
        phase's checkpoint makes two calls: the groups it dropped, then the new phase's). Each group holds its
        members that the last :meth:`thaw` made trainable, so parameters a phase froze again leave ZeRO (a rebuild
        sets ``requires_grad`` by group membership: it cannot be read back between the two calls)."""
        named = "param_names" in self._engine().optimizer.param_groups[0]  # optimizers built from named_parameters()
        self.group_members += [list(g.params) for g in groups]
        settings: list[dict[str, Any]] = [{}] * (len(self.group_members) - len(groups)) + [
            {"lr": g.lr, "initial_lr": g.lr, **({"param_names": list(g.names)} if named else {})} for g in groups
        ]
        trainable = [[p for p in members if id(p) in self._trainable] for members in self.group_members]
        self._rebuild(trainer, [{"params": params, **extra} for params, extra in zip(trainable, settings, strict=True)])
        for group in groups:
            extend_schedulers(lr_schedulers(trainer), group.lr, apply_lambdas=self.apply_lambdas_new_pgs)

    @override
    def install_optimizer(self, trainer: pl.Trainer, make: OptimizerFactory, groups: list[dict[str, Any]]) -> None:
        """A fresh ZeRO optimizer around ``make``'s basic optimizer, inside the live engine."""
        self.group_members = [list(group["params"]) for group in groups]
        self._rebuild(trainer, groups, fresh=make)

    @override
    def scheduled_optimizer(self, trainer: pl.Trainer) -> torch.optim.Optimizer:
        return self._engine().optimizer.optimizer

    @override
    def replica_view(self, module: torch.nn.Module) -> ReplicaView:
        if zero_stage(self._engine()) == 3:  # every rank holds a different partition: only the trainable set
            live = self.schedule_parameters(module)
            return ReplicaView(tuple(sorted(n for n, p in live.items() if p.requires_grad)), {})
        return super().replica_view(module)

    @override
    def parameters_without_gradient(self, module: torch.nn.Module) -> list[str]:
        return []  # ZeRO moves gradients into its own buffers during backward: ``.grad`` says nothing here

    def _rebuild(
        self, trainer: pl.Trainer, groups: list[dict[str, Any]], fresh: OptimizerFactory | None = None
    ) -> None:
        engine = self._engine()
        if engine.micro_steps % engine.gradient_accumulation_steps():
            raise FTSConfigError(
                "A phase transition fell between two micro-batches of an accumulated step (the epoch length changed, "
                "or a resume restarted DeepSpeed's micro-step count): make every epoch a multiple of "
                "`accumulate_grad_batches`, or resume from an epoch-end checkpoint.",
                key="accumulate_grad_batches",
            )
        schedulers = lr_schedulers(trainer)
        self.strategy.optimizers = []  # Lightning's references to the old optimizer go before the new one is built
        for scheduler in walk_schedulers(schedulers):
            scheduler.optimizer = None
        optimizer = rebuild_zero_optimizer(engine, groups, fresh)
        self.strategy.optimizers = [optimizer]
        rebind_lr_schedulers(schedulers, optimizer.optimizer)  # they schedule the new basic optimizer's groups

    def _engine(self) -> Any:
        return self.strategy.model

    def _check_no_group_emptied(self, schedule: Schedule, trainer: pl.Trainer) -> None:
        """DeepSpeed drops a group without trainable parameters (and ZeRO 1/2 fail on one): refuse a ``freeze`` that
        leaves a group with none."""
        if not any(phase.freeze for phase in schedule.phases):
            return
        live = self.schedule_parameters(trainer.lightning_module)
        phase0_groups = [[n for n, p in live.items() if id(p) in ids] for ids in _ids(self.group_members)]
        for depth in range(1, len(schedule)):
            trainable = set(schedule.trainable_at(depth))
            groups = [*phase0_groups, *(phase.params for phase in schedule.phases[1 : depth + 1])]
            emptied = next((g for g in groups if g and not trainable.intersection(g)), None)
            if emptied is not None:
                raise FTSConfigError(
                    f"Phase {depth} freezes every parameter of an optimizer group ({list(emptied)[:3]}): DeepSpeed "
                    "drops a group without trainable parameters, and the learning-rate schedule would lose its "
                    "place. Keep at least one parameter of each group trainable, or leave the whole phase in "
                    "training and lower its learning rate with `scale_lrs`.",
                    phase=depth,
                    key="freeze",
                )


_STAND_IN = torch.nn.Parameter(torch.zeros(1))


def _ids(groups: Sequence[Sequence[torch.nn.Parameter]]) -> list[set[int]]:
    return [{id(p) for p in group} for group in groups]


_DEEPSPEED_KEYS = ("module", "optimizer", "buffer_names", "param_shapes", "frozen_param_shapes",
                   "frozen_param_fragments", "shared_params", "ds_config", "ds_version", "lr_scheduler",
                   "sparse_tensor_module_names", "skipped_steps", "global_steps", "global_samples", "dp_world_size",
                   "mp_world_size")  # fmt: skip


def _checkpoint_files(path: Path, rank: int) -> list[Path]:
    """Rank ``rank``'s files of a DeepSpeed checkpoint directory (model states first); raise naming what is missing."""
    latest = path / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"'{path}' is not a DeepSpeed checkpoint directory (no 'latest' file)")
    directory = path / latest.read_text().strip()
    names = [f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt", "mp_rank_00_model_states.pt"]
    model = next((directory / n for n in names if (directory / n).is_file()), None)
    optimizer = sorted(directory.glob(f"*zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"))
    if model is None or not optimizer:
        raise FileNotFoundError(f"'{directory}' lacks rank {rank}'s model or optimizer states")
    return [model, *optimizer]


def _rebuildable(optimizer: torch.optim.Optimizer) -> bool:
    """Optimizers whose state a rebuild restores and whose fresh state the optimizer creates itself."""
    names = {"Adam", "AdamW", "DeepSpeedCPUAdam", "FusedAdam"}
    if type(optimizer).__name__ in names:
        return True
    return isinstance(optimizer, torch.optim.SGD) and all(not g.get("dampening") for g in optimizer.param_groups)


def _config_problems(config: dict[str, Any], strategy: DeepSpeedStrategy) -> list[tuple[str, str]]:
    """Each DeepSpeed setting a transition cannot carry, with its fix."""
    zero = config.get("zero_optimization", {})
    offload = zero.get("offload_optimizer", {}) or {}
    fp16, autocast = config.get("fp16", {}), config.get("torch_autocast", {})
    checks = [
        ("optimizer" in config or "scheduler" in config,
         "The DeepSpeed config has an `optimizer` or `scheduler` block.",
         "fts_dist adds an optimizer group at every phase and needs the optimizer (and LR scheduler) from "
         "`configure_optimizers`: remove the block and return them there."),
        (fp16.get("enabled") and not fp16.get("loss_scale"),
         "fp16 with dynamic loss scaling: the loss scaler's state lives in the ZeRO optimizer that every transition "
         "rebuilds, so it would start over at each phase.",
         "Use bf16 (precision='bf16-mixed'), or a static scale (`fp16: {loss_scale: 128}` in the DeepSpeed config)."),
        (autocast.get("enabled") and "16" in str(autocast.get("dtype", "")) and "bf" not in str(autocast.get("dtype")),
         "torch_autocast with fp16 keeps a dynamic GradScaler in the ZeRO optimizer, which every transition rebuilds.",
         "Use bf16."),
        (zero.get("stage", 0) < 1,
         "ZeRO stage 0 has no ZeRO optimizer to rebuild at a transition.",
         "Use stage 1, 2 or 3, or DDPStrategy for plain data parallelism."),
        (getattr(strategy, "exclude_frozen_parameters", False),
         "exclude_frozen_parameters=True leaves frozen parameters out of checkpoints, but restoring an earlier phase "
         "needs the parameters a later phase thawed.",
         "Leave exclude_frozen_parameters off."),
        (getattr(strategy, "load_full_weights", False),
         "load_full_weights=True reads single-file checkpoints, but transitions restore DeepSpeed's checkpoint "
         "directories.",
         "Leave load_full_weights off while fine-tuning with fts_dist."),
        (offload.get("device") == "nvme" or offload.get("ratio", 1.0) < 1.0,
         "Optimizer offload to NVMe, or partial offload (ratio < 1), keeps state where a transition's rebuild does not "
         "read it.",
         "Offload to `cpu` with ratio 1, or not at all."),
        (bool(config.get("zenflow")) or bool(zero.get("super_offload")),
         "ZenFlow and SuperOffload replace the ZeRO optimizer with their own, which a transition cannot rebuild.",
         "Use plain ZeRO with `offload_optimizer: {device: cpu}`."),
    ]  # fmt: skip
    return [(problem, fix) for failing, problem, fix in checks if failing]
