"""Optimizer parameter groups and LR schedulers kept in step as phases add groups.

Each phase adds one optimizer group at its learning rate L, and every LR scheduler's per-group state gets one more
entry, by the rule for its kind in :data:`SCHEDULER_RULES`. Against a *reference*, the same scheduler over an
optimizer that held the group at initial rate L from step 0, two behaviours follow:

- a *closed-form* scheduler computes each rate from the group's base rate and the step count: from the step after
  the group joins, its rate is the reference's (OneCycleLR's from the join itself);
- a *chainable* scheduler multiplies each group's current rate: the new group starts at L and moves by the others'
  factors, so it stays proportional to the reference (by L over the reference's rate at the join).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch.optim.lr_scheduler import (
    ChainedScheduler,
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    MultiplicativeLR,
    MultiStepLR,
    OneCycleLR,
    PolynomialLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

from fts_dist.errors import FTSConfigError


@dataclass(frozen=True)
class SchedulerRule:
    """How one kind of LR scheduler gives a new optimizer group its per-group state.

    ``extend(scheduler, group, lr)`` runs once the optimizer holds ``group``, added at the phase's rate ``lr``;
    ``group_keys`` are rates the scheduler keeps in the optimizer's groups themselves (scaled along with ``lr``).
    """

    kind: type[Any]
    new_group: str
    extend: Callable[[Any, dict[str, Any], float], None]
    group_keys: tuple[str, ...] = ()


def _extend_lists(scheduler: Any, group: dict[str, Any], lr: float) -> None:
    """Base rate ``lr``, the last group's lambda, the first group's floor; the last rate is the group's own."""
    for name, values in _per_group_lists(scheduler).items():
        if name == "base_lrs":
            values.append(lr)
        elif name == "_last_lr":
            values.append(group["lr"])
        else:
            values.append(values[0 if name == "min_lrs" else -1])


def _extend_one_cycle(scheduler: OneCycleLR, group: dict[str, Any], lr: float) -> None:
    # OneCycleLR keeps its bounds in the groups and stores neither div_factor nor final_div_factor: group 0's
    # ratios stand for them
    first = scheduler.optimizer.param_groups[0]
    group["max_lr"] = lr
    group["initial_lr"] = lr * first["initial_lr"] / first["max_lr"]
    group["min_lr"] = lr * first["min_lr"] / first["max_lr"]
    if scheduler.cycle_momentum:
        group["max_momentum"], group["base_momentum"] = first["max_momentum"], first["base_momentum"]
    # the scheduler's own formula over this group alone: get_lr() over the optimizer rewrites every group's momentum
    alone = copy.copy(scheduler)
    alone.optimizer = SimpleNamespace(param_groups=[group])  # type: ignore[assignment]
    alone._get_lr_called_within_step = True  # a computation, not the misuse get_lr() warns about
    group["lr"] = alone.get_lr()[0]  # sets the group's momentum too, as a step would
    _extend_lists(scheduler, group, group["initial_lr"])


def _extend_children(scheduler: ChainedScheduler | SequentialLR, group: dict[str, Any], lr: float) -> None:
    for child in scheduler._schedulers:
        _rule_for(child).extend(child, group, lr)  # type: ignore[union-attr]  # checked at setup
    scheduler._last_lr.append(group["lr"])


SCHEDULER_RULES: tuple[SchedulerRule, ...] = (
    SchedulerRule(
        LambdaLR,
        "closed-form: base rate L and the last group's lambda, so L * lambda(step) after starting at L (with "
        "apply_lambdas at L * lambda(now)).",
        _extend_lists,
    ),
    SchedulerRule(MultiplicativeLR, "chainable: starts at L, multiplied by the last group's lambda.", _extend_lists),
    SchedulerRule(StepLR, "chainable: starts at L, decays by gamma with the others.", _extend_lists),
    SchedulerRule(MultiStepLR, "chainable: starts at L, decays by gamma with the others.", _extend_lists),
    SchedulerRule(ExponentialLR, "chainable: starts at L, decays by gamma with the others.", _extend_lists),
    SchedulerRule(
        ConstantLR, "chainable: starts at L, and rises by 1 / factor at total_iters if it joined before.", _extend_lists
    ),
    SchedulerRule(LinearLR, "chainable: starts at L, then moves by the others' factor each step.", _extend_lists),
    SchedulerRule(
        PolynomialLR,
        "chainable: starts at L, decays to 0 at total_iters (stays at L if it joins after).",
        _extend_lists,
    ),
    SchedulerRule(
        CosineAnnealingLR,
        "chainable: starts at L, then takes the others' cosine steps (proportional up to T_max if eta_min is 0).",
        _extend_lists,
    ),
    SchedulerRule(
        CosineAnnealingWarmRestarts,
        "closed-form: base rate L, so eta_min + (L - eta_min) * the cosine factor of the step.",
        _extend_lists,
    ),
    SchedulerRule(
        OneCycleLR,
        "closed-form on the group's own keys: max_lr L, initial_lr and min_lr in group 0's ratios to its max_lr, "
        "momentum bounds copied; starts at the schedule's current rate (and momentum) for it.",
        _extend_one_cycle,
        group_keys=("max_lr", "min_lr"),
    ),
    SchedulerRule(ReduceLROnPlateau, "starts at L with group 0's min_lr, reduced with the others.", _extend_lists),
    SchedulerRule(
        ChainedScheduler,
        "each child by its own rule: closed-form if a child is (it rewrites every rate each step), else chainable.",
        _extend_children,
    ),
    SchedulerRule(
        SequentialLR,
        "each child by its own rule: it follows the active child, and a milestone restarts it from its base rate.",
        _extend_children,
    ),
)
SUPPORTED_LR_SCHEDULERS: tuple[type[Any], ...] = tuple(rule.kind for rule in SCHEDULER_RULES)


def check_lr_scheduler_supported(scheduler: Any) -> None:
    """Refuse an LR scheduler whose per-group state fts_dist cannot give a new group.

    Supported: the kinds in :data:`SCHEDULER_RULES` and their subclasses (transformers'
    ``get_*_schedule_with_warmup`` return a LambdaLR), and ChainedScheduler and SequentialLR whose children all are.
    Others (CyclicLR, a custom LRScheduler) keep per-group state whose meaning for a new group fts_dist does not
    know: the error suggests wrapping the schedule in a LambdaLR, whose new groups follow it from their own rate.
    """
    where = _unsupported(scheduler)
    if where is None:
        return
    names = ", ".join(cls.__name__ for cls in SUPPORTED_LR_SCHEDULERS)
    raise FTSConfigError(
        f"LR scheduler {where} is not supported: each phase adds an optimizer parameter group and fts_dist extends "
        f"only these schedulers' per-group state: {names} (or subclasses; composites of them). Wrap the schedule in "
        "LambdaLR instead (`LambdaLR(optimizer, lambda step: factor(step))`, the factor relative to each group's "
        "initial rate), or use one of them in `configure_optimizers`.",
        key="lr_scheduler",
    )


@dataclass(frozen=True)
class PhaseGroup:
    """One phase's new optimizer group: its parameters (by schedule name and live object) and learning rate."""

    names: tuple[str, ...]
    params: tuple[torch.nn.Parameter, ...]
    lr: float


def add_param_group(
    optimizer: torch.optim.Optimizer, group: PhaseGroup, schedulers: Sequence[Any], *, apply_lambdas: bool = False
) -> None:
    """Append ``group`` at its ``lr`` (other options from the optimizer's defaults) and extend each scheduler.

    An optimizer built from ``named_parameters()`` (torch >= 2.6) keeps ``param_names`` in every group and refuses
    a group without them, so the group's names go along then. ``apply_lambdas``: see :func:`extend_schedulers`.
    """
    entry: dict[str, Any] = {"params": list(group.params), "lr": group.lr, "initial_lr": group.lr}
    if "param_names" in optimizer.param_groups[0]:
        entry["param_names"] = list(group.names)
    optimizer.add_param_group(entry)
    extend_schedulers(schedulers, group.lr, apply_lambdas=apply_lambdas)


def scale_learning_rates(optimizer: torch.optim.Optimizer, factor: float, schedulers: Sequence[Any]) -> None:
    """Multiply every group's learning rate by ``factor``, and each scheduler's base and last learning rates with
    it, so a scheduler that computes from its base rates (LambdaLR, CosineAnnealingLR) keeps the scaled rate.

    The rates a scheduler keeps in the groups (OneCycleLR's ``max_lr``, ``min_lr``) and the children of a composite
    scheduler scale too."""
    if factor == 1.0:
        return
    keys = {"lr", "initial_lr"}.union(
        *(rule.group_keys for rule in map(_rule_for, walk_schedulers(schedulers)) if rule)
    )
    for group in optimizer.param_groups:
        for key in keys.intersection(group):
            group[key] *= factor
    for scheduler in walk_schedulers(schedulers):
        for name in ("base_lrs", "_last_lr"):
            rates = getattr(scheduler, name, None)
            if isinstance(rates, list):
                rates[:] = [rate * factor for rate in rates]


def extend_schedulers(schedulers: Sequence[Any], lr: float, *, apply_lambdas: bool = False) -> None:
    """Give each scheduler's per-group state one more group: the first optimizer group past those it covers, added
    at ``lr``, by the scheduler's :class:`SchedulerRule`.

    With ``apply_lambdas`` (finetuning-scheduler's ``apply_lambdas_new_pgs``), a scheduler with ``lr_lambdas``
    (LambdaLR, MultiplicativeLR; not a composite's child) starts the group at ``lr * lr_lambdas[-1](last_epoch)``,
    its ``lr`` and ``initial_lr``, while its base rate stays ``lr``.
    """
    for scheduler in schedulers:
        check_lr_scheduler_supported(scheduler)
    located = [(scheduler, _next_group(scheduler)) for scheduler in schedulers]
    if apply_lambdas:
        for scheduler, group in located:
            lambdas = getattr(scheduler, "lr_lambdas", None)
            if lambdas:
                group["lr"] = group["initial_lr"] = group["lr"] * lambdas[-1](scheduler.last_epoch)
    for scheduler, group in located:
        _rule_for(scheduler).extend(scheduler, group, lr)  # type: ignore[union-attr]  # checked above


def truncate_schedulers(schedulers: Sequence[Any], count: int) -> None:
    """Drop each scheduler's (and composite's child's) per-group state past ``count`` groups."""
    for scheduler in walk_schedulers(schedulers):
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


def release_state(optimizer: torch.optim.Optimizer) -> None:
    """Drop a plain torch optimizer's state right before a checkpoint load replaces it, so that the rank does not
    hold the old state and the loaded one at once (a sharded optimizer, which keeps its state in a local optimizer
    of its own, is left as it is)."""
    if isinstance(optimizer, torch.optim.Optimizer) and not hasattr(optimizer, "optim"):
        optimizer.state.clear()


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


def _rule_for(scheduler: Any) -> SchedulerRule | None:
    return next((rule for rule in SCHEDULER_RULES if isinstance(scheduler, rule.kind)), None)


def _unsupported(scheduler: Any, within: str = "") -> str | None:
    """The name of the first scheduler (``scheduler`` or a child of it) without a rule, or ``None``."""
    if _rule_for(scheduler) is None:
        return f"{type(scheduler).__name__}{within}"
    children = getattr(scheduler, "_schedulers", ()) if isinstance(scheduler, ChainedScheduler | SequentialLR) else ()
    where = f" (in {type(scheduler).__name__})"
    return next(filter(None, (_unsupported(child, where) for child in children)), None)


def walk_schedulers(schedulers: Sequence[Any]) -> Iterator[Any]:
    """Each scheduler, then (recursively) the children of a composite one."""
    for scheduler in schedulers:
        yield scheduler
        if isinstance(scheduler, ChainedScheduler | SequentialLR):
            yield from walk_schedulers(scheduler._schedulers)


def _next_group(scheduler: Any) -> dict[str, Any]:
    """The first of the scheduler's optimizer groups that its per-group state does not cover yet."""
    lists = _per_group_lists(scheduler)
    covered = len(next(lists[name] for name in ("_last_lr", "base_lrs", "min_lrs") if name in lists))
    groups = scheduler.optimizer.param_groups
    if covered >= len(groups):
        raise RuntimeError(f"{type(scheduler).__name__} already covers all {len(groups)} optimizer groups")
    return groups[covered]


def _per_group_lists(scheduler: Any) -> dict[str, list[Any]]:
    """The scheduler attributes holding one entry per optimizer group."""
    names = ("base_lrs", "_last_lr", "min_lrs", "lr_lambdas")
    return {name: getattr(scheduler, name) for name in names if isinstance(getattr(scheduler, name, None), list)}
