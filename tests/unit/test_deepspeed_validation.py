"""What the DeepSpeed adapter refuses before step 0, each with its message (no processes needed)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from fts_dist import DeepSpeedStrategy, FTSConfigError
from fts_dist.adapters import DeepSpeedAdapter
from fts_dist.schedule import Phase, Schedule

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="pip install fts-dist[deepspeed]")


def adapter(config: dict[str, Any], **strategy: Any) -> DeepSpeedAdapter:
    return DeepSpeedAdapter(DeepSpeedStrategy(config={"zero_optimization": {"stage": 2}, **config}, **strategy))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"optimizer": {"type": "AdamW"}}, "The DeepSpeed config has an `optimizer` or `scheduler` block"),
        ({"scheduler": {"type": "WarmupLR"}}, "needs the optimizer .* from `configure_optimizers`"),
        ({"fp16": {"enabled": True}}, "fp16 with dynamic loss scaling"),
        ({"fp16": {"enabled": True, "loss_scale": 0}}, "Use bf16 .* or a static scale"),
        ({"zero_optimization": {"stage": 0}}, "ZeRO stage 0 has no ZeRO optimizer to rebuild"),
        ({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme"}}}, "NVMe"),
        ({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "ratio": 0.5}}}, "partial offload"),
    ],
)
def test_configs_a_transition_cannot_keep_are_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(FTSConfigError, match=message):
        adapter(config).validate_schedule(None, None)  # type: ignore[arg-type]


def test_checkpoints_without_frozen_parameters_are_refused() -> None:
    with pytest.raises(FTSConfigError, match="exclude_frozen_parameters=True leaves frozen parameters out"):
        adapter({}, exclude_frozen_parameters=True).validate_schedule(None, None)  # type: ignore[arg-type]


def test_a_static_fp16_scale_and_bf16_are_accepted() -> None:
    schedule = Schedule((Phase(("w",)),))
    adapter({"fp16": {"enabled": True, "loss_scale": 128}}).validate_schedule(schedule, None)  # type: ignore[arg-type]
    adapter({"bf16": {"enabled": True}}).validate_schedule(schedule, None)  # type: ignore[arg-type]


def test_gradient_accumulation_that_does_not_divide_an_epoch_is_refused() -> None:
    ds = adapter({})
    ds.strategy.model = SimpleNamespace(gradient_accumulation_steps=lambda: 4)  # the engine's setting
    with pytest.raises(FTSConfigError, match="over 4 batches does not divide the 10 training batches"):
        ds.validate_training_loop(SimpleNamespace(num_training_batches=10))  # type: ignore[arg-type]
    ds.validate_training_loop(SimpleNamespace(num_training_batches=12))  # type: ignore[arg-type]


def test_an_empty_group_deepspeed_would_drop_is_refused_when_it_misaligns_the_scheduler() -> None:
    """DeepSpeed drops parameter groups without parameters; the LR scheduler built on them keeps one entry more."""
    weight = torch.nn.Parameter(torch.zeros(2))
    client = torch.optim.SGD([{"params": [weight]}, {"params": []}], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(client, step_size=1)
    client.param_groups[:] = [g for g in client.param_groups if g["params"]]  # what deepspeed.initialize does
    trainer = SimpleNamespace(optimizers=[client], lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)])
    with pytest.raises(FTSConfigError, match="returned 2 parameter groups, 1 of them without a trainable parameter"):
        DeepSpeedAdapter.check_scheduler_alignment(trainer)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("optimizer", "accepted"),
    [
        (lambda p: torch.optim.AdamW(p), True),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), True),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.5), False),
        (lambda p: torch.optim.NAdam(p), False),
    ],
)
def test_only_optimizers_a_rebuild_carries_over_are_accepted(optimizer: Any, accepted: bool) -> None:
    from fts_dist.adapters.deepspeed.adapter import _rebuildable

    assert _rebuildable(optimizer([torch.nn.Parameter(torch.zeros(2))])) is accepted


def test_a_freeze_that_empties_an_optimizer_group_is_refused() -> None:
    """DeepSpeed drops a group without trainable parameters; freezing part of a group is fine."""
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    ds = adapter({})
    ds.group_members = [[module[1].weight, module[1].bias]]  # phase 0's group, as configure_optimizers built it
    trainer = SimpleNamespace(lightning_module=module)

    def schedule(freeze: tuple[str, ...]) -> Schedule:
        return Schedule((Phase(("1.weight", "1.bias")), Phase(("0.weight", "0.bias"), freeze=freeze)))

    ds.validate_schedule(schedule(("1.bias",)), trainer)  # type: ignore[arg-type]
    with pytest.raises(FTSConfigError, match=r"Phase 1 freezes every parameter of an optimizer group \(\['1.weight'"):
        ds.validate_schedule(schedule(("1.weight", "1.bias")), trainer)  # type: ignore[arg-type]
