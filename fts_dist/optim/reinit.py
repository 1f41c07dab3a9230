"""Building the optimizers and LR schedulers that phases re-initialise (``new_optimizer``, ``new_lr_scheduler``).

:func:`check_reinit_classes` (at setup) and :func:`check_new_lr_schedulers` (once the optimizer's group count is
known) import each configured class and build it once over a stand-in, before step 0, so a typo or a wrong argument
is reported with its phase instead of at a transition hours in. The builders
are used by :meth:`fts_dist.adapters.StrategyAdapter.apply_plan` on every rank.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from pytorch_lightning.core.optimizer import _configure_schedulers_automatic_opt
from pytorch_lightning.utilities.types import LRSchedulerConfig
from torch.distributed.optim import ZeroRedundancyOptimizer

from fts_dist.errors import FTSConfigError
from fts_dist.optim.param_groups import GroupSettings, check_lr_scheduler_supported, walk_schedulers
from fts_dist.schedule import Schedule
from fts_dist.schedule.reinit import OptimizerReinit, SchedulerReinit

OptimizerFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]


def import_class(class_path: str, phase: int, key: str) -> type[Any]:
    """The class at ``class_path`` (``package.module.Class``); raise naming the phase and key when it cannot load."""
    module_name, _, class_name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise FTSConfigError(
            f"Phase {phase} `{key}`: cannot import `class_path` '{class_path}' ({type(err).__name__}: {err}). Give the "
            "full import path, e.g. torch.optim.AdamW or torch.optim.lr_scheduler.CosineAnnealingLR.",
            phase=phase,
            key=key,
        ) from err


def check_reinit_classes(schedule: Schedule) -> None:
    """Import every phase's new optimizer and LR scheduler class, and build each optimizer once over a stand-in.

    Raises:
        FTSConfigError: naming the phase, the key and the failure (import, not an optimizer, bad ``init_args``).
    """
    for depth, phase in enumerate(schedule.phases):
        if phase.new_optimizer is not None:
            _try_optimizer(phase.new_optimizer, depth)
        if phase.new_lr_scheduler is not None:
            import_class(phase.new_lr_scheduler.class_path, depth, "new_lr_scheduler")
            if "optimizer" in phase.new_lr_scheduler.init_args:
                raise FTSConfigError(
                    f"Phase {depth} `new_lr_scheduler` `init_args` has `optimizer`: the new scheduler always schedules "
                    "the run's optimizer. Remove it.",
                    phase=depth,
                    key="new_lr_scheduler",
                )


def check_new_lr_schedulers(schedule: Schedule, group_count: Callable[[int], int] | None = None) -> None:
    """Build every phase's ``new_lr_scheduler`` once over a stand-in optimizer with the groups its phase will have
    (``group_count(phase)``; without it, as many as ``init_pg_lrs`` gives, else phase + 1), so per-group arguments (a
    ``min_lr`` or ``max_lr`` list) and ``init_pg_lrs`` are checked against them.

    Raises:
        FTSConfigError: naming the phase: ``init_pg_lrs`` of another length than the group count, an unsupported
            scheduler, bad ``init_args`` or ``pl_lrs_cfg``.
    """
    for depth, phase in enumerate(schedule.phases):
        spec = phase.new_lr_scheduler
        if spec is None:
            continue
        if group_count is not None:
            groups = group_count(depth)
        else:
            groups = len(spec.init_pg_lrs) if spec.init_pg_lrs is not None else depth + 1
        if spec.init_pg_lrs is not None and len(spec.init_pg_lrs) != groups:
            raise FTSConfigError(
                f"Phase {depth} `new_lr_scheduler` `init_pg_lrs` has {len(spec.init_pg_lrs)} learning rates, but the "
                f"optimizer will have {groups} parameter groups at phase {depth} (phase 0's {groups - depth}, then "
                "one per phase). Give one rate per group.",
                phase=depth,
                key="new_lr_scheduler",
            )
        _try_lr_scheduler(spec, depth, groups)


def build_optimizer(spec: OptimizerReinit, groups: list[dict[str, Any]], phase: int) -> torch.optim.Optimizer:
    """``spec``'s optimizer over ``groups`` (dicts with ``params`` and group settings); every group gets an
    ``initial_lr`` (its ``lr`` unless set), so a later LR scheduler re-initialisation can start from it."""
    optimizer: torch.optim.Optimizer = import_class(spec.class_path, phase, "new_optimizer")(groups, **spec.init_args)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return optimizer


def build_lr_scheduler(spec: SchedulerReinit, optimizer: torch.optim.Optimizer, phase: int) -> LRSchedulerConfig:
    """``spec``'s LR scheduler over ``optimizer``, with Lightning's settings from ``pl_lrs_cfg``.

    Every group's ``lr`` is set first, as finetuning-scheduler does: to ``init_pg_lrs`` (also the new
    ``initial_lr``), else the current ``lr`` with ``use_current_optimizer_pg_lrs``, else the group's ``initial_lr``.
    """
    groups = optimizer.param_groups
    if spec.init_pg_lrs is not None and len(spec.init_pg_lrs) != len(groups):
        raise FTSConfigError(
            f"Phase {phase} `new_lr_scheduler` `init_pg_lrs` has {len(spec.init_pg_lrs)} learning rates, but the "
            f"optimizer has {len(groups)} parameter groups at this phase. Give one per group.",
            phase=phase,
            key="new_lr_scheduler",
        )
    for index, group in enumerate(groups):
        if spec.init_pg_lrs is not None:
            group["lr"] = group["initial_lr"] = spec.init_pg_lrs[index]
        elif not spec.use_current_optimizer_pg_lrs:
            group["lr"] = group.get("initial_lr", group["lr"])
    scheduler = import_class(spec.class_path, phase, "new_lr_scheduler")(optimizer, **spec.init_args)
    settings = {**spec.pl_lrs_cfg, "scheduler": scheduler}
    # Lightning's own conversion of a `configure_optimizers` scheduler dict: the same checks and defaults (private)
    return _configure_schedulers_automatic_opt([settings], spec.pl_lrs_cfg.get("monitor"))[0]


def configured_optimizer_factory(optimizer: torch.optim.Optimizer) -> OptimizerFactory:
    """Builds an optimizer like ``optimizer`` (class and constructor defaults) over new groups: the kind a checkpoint
    written before a ``new_optimizer`` phase restores into."""
    optimizer_class, defaults = type(optimizer), constructor_defaults(optimizer)
    return lambda groups: optimizer_class(groups, **defaults)


def rebind_lr_schedulers(schedulers: Sequence[Any], optimizer: torch.optim.Optimizer) -> None:
    """Point every scheduler (and each child of a ChainedScheduler or SequentialLR) at ``optimizer``."""
    for scheduler in walk_schedulers(schedulers):
        scheduler.optimizer = optimizer


_ONE_CYCLE_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")


def reapply_learning_rates(before: GroupSettings, optimizer: torch.optim.Optimizer, schedulers: Sequence[Any]) -> None:
    """A replaced optimizer's earlier groups take their learning rates from before the transition, and the LR
    schedulers their state (the new optimizer's other settings stay)."""
    for group, settings in zip(optimizer.param_groups, before.groups, strict=False):
        group["lr"] = settings["lr"]
        if "max_lr" in settings:  # OneCycleLR keeps its cycle in the groups: it goes on with the same one
            group.update({k: settings[k] for k in _ONE_CYCLE_KEYS if k in settings})
    for scheduler, state in zip(schedulers, before.scheduler_states, strict=True):
        scheduler.load_state_dict(state)


def check_lr_schedulers_bound(optimizer: torch.optim.Optimizer, schedulers: Sequence[Any]) -> None:
    """Raise when a scheduler (or a composite's child) still schedules another optimizer than ``optimizer``."""
    unbound = [type(s).__name__ for s in walk_schedulers(schedulers) if s.optimizer is not optimizer]
    if unbound:
        raise RuntimeError(
            f"fts_dist: LR scheduler(s) {unbound} still schedule a replaced optimizer after a transition."
        )


def _try_optimizer(spec: OptimizerReinit, phase: int) -> None:
    cls = import_class(spec.class_path, phase, "new_optimizer")
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise FTSConfigError(
            f"Phase {phase} `new_optimizer` class '{spec.class_path}' is not a torch.optim.Optimizer.",
            phase=phase,
            key="new_optimizer",
        )
    if issubclass(cls, ZeroRedundancyOptimizer):
        raise FTSConfigError(
            f"Phase {phase} `new_optimizer`: ZeroRedundancyOptimizer wraps another optimizer and cannot be built from "
            "`init_args`. Name the optimizer it would wrap (e.g. torch.optim.AdamW).",
            phase=phase,
            key="new_optimizer",
        )
    try:
        cls([torch.nn.Parameter(torch.zeros(1))], **spec.init_args)
    except Exception as err:
        raise FTSConfigError(
            f"Phase {phase} `new_optimizer`: {spec.class_name}(**{spec.init_args}) fails: {type(err).__name__}: {err}. "
            "Fix `init_args`.",
            phase=phase,
            key="new_optimizer",
        ) from err


def _try_lr_scheduler(spec: SchedulerReinit, phase: int, groups: int) -> None:
    try:
        stand_in = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(groups)]
        config = build_lr_scheduler(spec, torch.optim.SGD(stand_in, lr=1.0), phase)
    except FTSConfigError:
        raise
    except Exception as err:
        raise FTSConfigError(
            f"Phase {phase} `new_lr_scheduler`: {spec.class_name}(optimizer, **{spec.init_args}) with Lightning "
            f"settings {spec.pl_lrs_cfg} fails over {groups} parameter group(s): {type(err).__name__}: {err}. Fix "
            "`init_args` or `pl_lrs_cfg`.",
            phase=phase,
            key="new_lr_scheduler",
        ) from err
    try:
        check_lr_scheduler_supported(config.scheduler)
    except FTSConfigError as err:
        raise FTSConfigError(f"Phase {phase} `new_lr_scheduler`: {err}", phase=phase, key="new_lr_scheduler") from err


def constructor_defaults(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's defaults that its constructor accepts (AdamW's defaults hold ``decoupled_weight_decay``,
    which its constructor refuses), and what DeepSpeed's Adams keep outside their defaults."""
    accepted = inspect.signature(type(optimizer).__init__).parameters
    defaults = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    mode = getattr(optimizer, "adam_w_mode", None)  # DeepSpeedCPUAdam and FusedAdam keep AdamW-or-L2 here
    for argument in ("adamw_mode", "adam_w_mode"):
        if mode is not None and argument in accepted:
            defaults[argument] = bool(mode)
    for attribute in ("fp32_optimizer_states", "set_grad_none"):
        if attribute in accepted and hasattr(optimizer, attribute):
            defaults[attribute] = getattr(optimizer, attribute)
    return defaults
