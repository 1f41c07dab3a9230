"""Optimizer parameter groups and LR schedulers kept in step as phases add groups."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    MultiStepLR,
    ReduceLROnPlateau,
    StepLR,
)

from fts_dist.errors import FTSConfigError

SUPPORTED_LR_SCHEDULERS: tuple[type[Any], ...] = (
    StepLR,
    MultiStepLR,
    ExponentialLR,
    CosineAnnealingLR,
    LambdaLR,
    ReduceLROnPlateau,
)


def check_lr_scheduler_supported(scheduler: Any) -> None:
    """Refuse a scheduler whose per-group state fts_dist does not know how to extend."""
    if not isinstance(scheduler, SUPPORTED_LR_SCHEDULERS):
        names = ", ".join(cls.__name__ for cls in SUPPORTED_LR_SCHEDULERS)
        raise FTSConfigError(
            f"LR scheduler {type(scheduler).__name__} is not supported: each phase adds an optimizer parameter "
            f"group and fts_dist extends only these schedulers' per-group state: {names} (or subclasses). "
            "Use one of them in `configure_optimizers`.",
            key="lr_scheduler",
        )


@dataclass(frozen=True)
class PhaseGroup:
    """One phase's new optimizer group: its parameters (by schedule name and live object) and learning rate."""

    names: tuple[str, ...]
    params: tuple[torch.nn.Parameter, ...]
    lr: float


def add_param_group(optimizer: torch.optim.Optimizer, group: PhaseGroup, schedulers: Sequence[Any]) -> None:
    """Append ``group`` at its ``lr`` (other options from the optimizer's defaults) and extend each scheduler.

    An optimizer built from ``named_parameters()`` (torch >= 2.6) keeps ``param_names`` in every group and refuses
    a group without them, so the group's names go along then.
    """
    entry: dict[str, Any] = {"params": list(group.params), "lr": group.lr, "initial_lr": group.lr}
    if "param_names" in optimizer.param_groups[0]:
        entry["param_names"] = list(group.names)
    optimizer.add_param_group(entry)
    extend_schedulers(schedulers, group.lr)


def scale_learning_rates(optimizer: torch.optim.Optimizer, factor: float, schedulers: Sequence[Any]) -> None:
    """Multiply every group's learning rate by ``factor``, and each scheduler's base and last learning rates with
    it, so a scheduler that computes from its base rates (LambdaLR, CosineAnnealingLR) keeps the scaled rate."""
    if factor == 1.0:
        return
    for group in optimizer.param_groups:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor
    for scheduler in schedulers:
        for name in ("base_lrs", "_last_lr"):
            rates = getattr(scheduler, name, None)
            if isinstance(rates, list):
                rates[:] = [rate * factor for rate in rates]


def extend_schedulers(schedulers: Sequence[Any], lr: float) -> None:
    """Give each scheduler's per-group state one more group, starting at ``lr``."""
    for scheduler in schedulers:
        for name, value in _per_group_lists(scheduler).items():
            # a new group takes the first group's floor and the last group's lambda, its own base lr
            value.append(lr if name in ("base_lrs", "_last_lr") else value[0 if name == "min_lrs" else -1])


def truncate_schedulers(schedulers: Sequence[Any], count: int) -> None:
    """Drop each scheduler's per-group state past ``count`` groups."""
    for scheduler in schedulers:
        for value in _per_group_lists(scheduler).values():
            del value[count:]


def truncate_param_groups(optimizer: torch.optim.Optimizer, count: int, schedulers: Sequence[Any]) -> None:
    """Drop the groups past ``count`` (and their optimizer state and scheduler entries).

    ``ZeroRedundancyOptimizer`` and fairscale's ``OSS`` step a local optimizer over this rank's shard, with one
    group per group of theirs, and cache their partition: both are cut back too, or loading a checkpoint with fewer
    groups fails (``Mismatch between number of source and destination parameter groups``).
    """
    local = getattr(optimizer, "optim", None)
    for opt in (optimizer, local) if isinstance(local, torch.optim.Optimizer) else (optimizer,):
        for group in opt.param_groups[count:]:
            for param in group["params"]:
                opt.state.pop(param, None)
        del opt.param_groups[count:]
    clear_partition_cache = getattr(optimizer, "_clear_cache", None)
    if clear_partition_cache is not None:
        clear_partition_cache()
    truncate_schedulers(schedulers, count)


def lr_schedulers(trainer: Any) -> list[Any]:
    """The LR schedulers a Lightning trainer steps."""
    return [config.scheduler for config in trainer.lr_scheduler_configs]


@dataclass
class GroupSettings:
    """Every group's hyperparameters (``lr``, ``betas``, ``weight_decay``, ...) and the LR schedulers' states, as
    they were before a checkpoint restore: restoring weights rewinds neither the LR schedule nor any setting."""

    groups: list[dict[str, Any]]
    scheduler_states: list[dict[str, Any]]

    @classmethod
    def capture(cls, optimizer: torch.optim.Optimizer, schedulers: Sequence[Any]) -> GroupSettings:
        groups = [{k: copy.deepcopy(v) for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
        return cls(groups, [copy.deepcopy(s.state_dict()) for s in schedulers])

    def drift(self, optimizer: torch.optim.Optimizer) -> list[str]:
        """Where the optimizer's groups differ from the captured settings, one entry per setting."""
        if len(optimizer.param_groups) != len(self.groups):
            return [f"{len(optimizer.param_groups)} groups, {len(self.groups)} captured"]
        return [
            f"group {index} {key}={group.get(key)!r} (expected {value!r})"
            for index, (group, settings) in enumerate(zip(optimizer.param_groups, self.groups, strict=True))
            for key, value in settings.items()
            if group.get(key) != value
        ]

    def reapply(self, optimizer: torch.optim.Optimizer, schedulers: Sequence[Any]) -> None:
        """Set the captured values again; the optimizer must hold the captured number of groups again."""
        if len(optimizer.param_groups) != len(self.groups):
            raise RuntimeError(f"{len(optimizer.param_groups)} optimizer groups, but {len(self.groups)} were captured")
        for group, settings in zip(optimizer.param_groups, self.groups, strict=True):
            group.update(copy.deepcopy(settings))
        for scheduler, state in zip(schedulers, self.scheduler_states, strict=True):
            scheduler.load_state_dict(state)


def _per_group_lists(scheduler: Any) -> dict[str, list[Any]]:
    """The scheduler attributes holding one entry per optimizer group."""
    names = ("base_lrs", "_last_lr", "min_lrs", "lr_lambdas")
    return {name: getattr(scheduler, name) for name in names if isinstance(getattr(scheduler, name, None), list)}
