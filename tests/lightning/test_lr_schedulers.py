"""Every optimizer group's learning rate at every optimizer step across phase transitions, with a real Trainer and
each LR scheduler fts_dist extends, against the scheduler alone.

The reference ("the scheduler alone") is the same scheduler class and arguments over a plain SGD holding every
phase's group from step 0, each at its phase's learning rate L, stepped as often without Lightning. Phase 0's group
gets exactly the reference's rates at every step. A group that joins at step j follows its scheduler's rule
(``SCHEDULER_RULES`` in fts_dist/optim/param_groups.py) from then on, later transitions notwithstanding:

- ``EQUAL``, closed-form schedulers (LambdaLR, hence transformers' warmup schedules; CosineAnnealingWarmRestarts;
  OneCycleLR): it starts at L (OneCycleLR: at the schedule's current rate), then gets the reference's rates;
- ``PROPORTIONAL``, chainable schedulers (MultiplicativeLR, ConstantLR, LinearLR, PolynomialLR): it starts at L and
  moves by the others' factors, so it stays at the reference times L / reference[j];
- ChainedScheduler: ``EQUAL`` when a child computes from the base rates (it rewrites every rate at each step),
  ``PROPORTIONAL`` when all are chainable; SequentialLR follows its active child until a milestone restarts every
  group from its base rate, to the reference's rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.optim import lr_scheduler

from fts_dist import FTSConfigError
from fts_dist.optim.param_groups import check_lr_scheduler_supported
from tests.lightning.conftest import Recorder
from tests.modules import REFREEZE_SCHEDULE, SCHEDULE

EPOCHS, BATCHES = 6, 4  # tests.modules.loaders() gives 4 batches an epoch
STEPS = EPOCHS * BATCHES


def with_transition_epochs(schedule: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """``schedule`` with phase 1 from epoch 1 and phase 2 from epoch 3."""
    return {d: {**p, "max_transition_epoch": e} for (d, p), e in zip(schedule.items(), (1, 3, 3), strict=True)}


EPOCH_SCHEDULE = with_transition_epochs(SCHEDULE)
SCALING_SCHEDULE = with_transition_epochs(REFREEZE_SCHEDULE)  # phase 2 also halves groups 0 and 1's rates
JOINS = (0, 4, 12)  # the step at which each phase's group joins: phase 1 from epoch 1, phase 2 from epoch 3
LRS = (0.1, SCHEDULE[1]["lr"], SCHEDULE[2]["lr"])  # Recorder's lr, then each phase's
EQUAL, PROPORTIONAL = "equal", "proportional"

Factory = Callable[[torch.optim.Optimizer], Any]


@dataclass(frozen=True)
class Case:
    """A scheduler factory (for an optimizer of any number of groups) and the rule its new groups follow."""

    factory: Factory
    rule: str
    starts_on_schedule: bool = False  # a new group starts at the reference's rate, not at L
    restarts: tuple[int, ...] = ()  # steps from which every group is at the reference's rate (SequentialLR)


def transformers_warmup(kind: str) -> Factory:
    def factory(optimizer: torch.optim.Optimizer) -> Any:
        from transformers import optimization  # slow to import: only for the tests that use it

        schedule = getattr(optimization, f"get_{kind}_schedule_with_warmup")
        return schedule(optimizer, num_warmup_steps=6, num_training_steps=STEPS)

    return factory


CASES = {
    "MultiplicativeLR": Case(lambda o: lr_scheduler.MultiplicativeLR(o, lambda step: 0.95), PROPORTIONAL),
    # phase 1 joins before total_iters, so ends at L / factor; phase 2 after, at L
    "ConstantLR": Case(lambda o: lr_scheduler.ConstantLR(o, factor=0.5, total_iters=8), PROPORTIONAL),
    "LinearLR": Case(lambda o: lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=16), PROPORTIONAL),
    "PolynomialLR": Case(lambda o: lr_scheduler.PolynomialLR(o, total_iters=30, power=2.0), PROPORTIONAL),
    "CosineAnnealingWarmRestarts": Case(
        lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2, eta_min=1e-3), EQUAL
    ),
    "OneCycleLR": Case(
        lambda o: lr_scheduler.OneCycleLR(o, max_lr=[g["lr"] for g in o.param_groups], total_steps=STEPS),
        EQUAL,
        starts_on_schedule=True,
    ),
    "ChainedScheduler": Case(
        lambda o: lr_scheduler.ChainedScheduler(
            [
                lr_scheduler.LinearLR(o, start_factor=0.5, total_iters=8),
                lr_scheduler.MultiplicativeLR(o, lambda s: 0.95),
            ]
        ),
        PROPORTIONAL,
    ),
    "ChainedScheduler-closed-form": Case(
        lambda o: lr_scheduler.ChainedScheduler(
            [lr_scheduler.LambdaLR(o, lambda step: 0.95**step), lr_scheduler.ExponentialLR(o, gamma=0.9)]
        ),
        EQUAL,
    ),
    # phase 1 joins in the LinearLR warmup, phase 2 in ExponentialLR; the milestones restart both
    "SequentialLR": Case(
        lambda o: lr_scheduler.SequentialLR(
            o,
            [
                lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=8),
                lr_scheduler.ExponentialLR(o, gamma=0.9),
                lr_scheduler.CosineAnnealingLR(o, T_max=8),
            ],
            milestones=[8, 16],
        ),
        PROPORTIONAL,
        restarts=(8, 16),
    ),
    "transformers-linear-warmup": Case(transformers_warmup("linear"), EQUAL),
    "transformers-cosine-warmup": Case(transformers_warmup("cosine"), EQUAL),
}


class RateRecorder(pl.Callback):
    """Every group's (lr, momentum) as each optimizer step will use them."""

    def __init__(self) -> None:
        self.rates: list[list[tuple[float, float]]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self.rates.append([(g["lr"], g["momentum"]) for g in trainer.optimizers[0].param_groups])


def scheduler_alone(factory: Factory, steps: int = STEPS) -> list[list[tuple[float, float]]]:
    """The reference: ``factory``'s scheduler over an SGD that holds every phase's group from step 0."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in LRS]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, LRS, strict=True)]
    optimizer = torch.optim.SGD(groups, lr=LRS[0], momentum=0.9)
    scheduler = factory(optimizer)
    rates = []
    for _ in range(steps):
        rates.append([(g["lr"], g["momentum"]) for g in optimizer.param_groups])
        optimizer.step()  # no gradients: only keeps the scheduler's step-order check quiet
        scheduler.step()
    return rates


def expected_rates(
    case: Case, reference: list[list[tuple[float, float]]], scale: float = 1.0
) -> list[list[tuple[float, float]]]:
    """Each group's (lr, momentum) at each step from its join on, by ``case``'s rule (see the module docstring);
    from phase 2 on, the earlier groups' rates times ``scale``."""
    expected = []
    for step, at_step in enumerate(reference):
        rates = []
        for group, join in enumerate(JOINS):
            if step < join:
                break
            lr, momentum = at_step[group]
            start = reference[join][group][0] if case.starts_on_schedule or group == 0 else LRS[group]
            restarted = any(join < restart <= step for restart in case.restarts)
            if step == join:
                lr = start
            elif case.rule == PROPORTIONAL and not restarted:
                lr *= start / reference[join][group][0]
            scaled = group < 2 and step >= JOINS[2]
            rates.append((lr * scale if scaled else lr, momentum))
        expected.append(rates)
    return expected


def fit_with(
    fit: Any, factory: Factory, scripted_val_loss: list[float] | None = None, **fts_kwargs: Any
) -> list[list[tuple[float, float]]]:
    recorder = RateRecorder()
    scheduler = lambda optimizer: {"scheduler": factory(optimizer), "interval": "step"}  # noqa: E731
    model = Recorder(scheduler=scheduler, scripted_val_loss=scripted_val_loss)
    fts_kwargs = {"ft_schedule": EPOCH_SCHEDULE, "epoch_transitions_only": True, "restore_best": False, **fts_kwargs}
    fit(model, max_epochs=EPOCHS, extra_callbacks=[recorder], **fts_kwargs)
    return recorder.rates


def assert_rates(rates: list[list[tuple[float, float]]], expected: list[list[tuple[float, float]]]) -> None:
    assert [len(r) for r in rates] == [len(e) for e in expected]  # every phase's group joins at its step
    for step, (got, want) in enumerate(zip(rates, expected, strict=True)):
        flat = [value for rate in want for value in rate]  # approx compares flat sequences only
        assert [value for rate in got for value in rate] == pytest.approx(flat, rel=1e-9, abs=1e-15), f"step {step}"


@pytest.mark.parametrize("name", list(CASES))
def test_every_group_follows_the_scheduler_at_every_step(fit, name: str) -> None:
    case = CASES[name]
    rates = fit_with(fit, case.factory)
    assert_rates(rates, expected_rates(case, scheduler_alone(case.factory)))


@pytest.mark.parametrize("name", ["OneCycleLR", "SequentialLR"])
def test_a_restore_that_drops_a_group_does_not_disturb_the_schedule(fit, name: str) -> None:
    """Phase 2's transition restores epoch 0's checkpoint, of phase 0: phase 1's group leaves the optimizer and the
    schedulers (children included) and comes back with its settings, as if nothing happened."""
    case = CASES[name]
    rates = fit_with(fit, case.factory, [0.5, 0.9, 0.8, 0.7, 0.6, 0.5], restore_best=True)
    assert_rates(rates, expected_rates(case, scheduler_alone(case.factory)))


@pytest.mark.parametrize("name", ["OneCycleLR", "ChainedScheduler-closed-form", "SequentialLR"])
def test_scale_lrs_scales_the_rates_a_scheduler_computes_from(fit, name: str) -> None:
    """``scale_lrs`` halves the earlier groups' rates for good: OneCycleLR's bounds in the groups and the children's
    base rates scale too (SequentialLR's last milestone, after the scaling, restarts every group from them)."""
    case = CASES[name]
    rates = fit_with(fit, case.factory, ft_schedule=SCALING_SCHEDULE)
    assert SCALING_SCHEDULE[2]["scale_lrs"] == 0.5
    assert_rates(rates, expected_rates(case, scheduler_alone(case.factory), scale=0.5))


def test_apply_lambdas_new_pgs_starts_a_new_group_on_the_lambda(fit) -> None:
    """finetuning-scheduler's ``apply_lambdas_new_pgs``: a group joins a LambdaLR at L * lambda(now) (its ``lr`` and
    ``initial_lr``) while its base rate stays L, so it is on the schedule from the join itself."""
    case = Case(CASES["transformers-linear-warmup"].factory, EQUAL, starts_on_schedule=True)
    rates = fit_with(fit, case.factory, apply_lambdas_new_pgs=True)
    assert_rates(rates, expected_rates(case, scheduler_alone(case.factory)))


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda o: lr_scheduler.CyclicLR(o, 0.01, 0.1), "LR scheduler CyclicLR is not supported"),
        (
            lambda o: lr_scheduler.SequentialLR(
                o, [lr_scheduler.ExponentialLR(o, 0.9), lr_scheduler.CyclicLR(o, 0.01, 0.1)], milestones=[2]
            ),
            r"LR scheduler CyclicLR \(in SequentialLR\) is not supported",
        ),
    ],
)
def test_an_unsupported_scheduler_is_refused_with_an_alternative(make: Factory, named: str) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    with pytest.raises(FTSConfigError, match=named) as refused:
        check_lr_scheduler_supported(make(optimizer))
    assert "OneCycleLR" in str(refused.value) and "Wrap the schedule in LambdaLR" in str(refused.value)
