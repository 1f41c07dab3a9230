"""The optimizer surgery (``fts_dist/optim``) on a bare torch optimizer and its LR schedulers: no trainer, no process
group, no engine."""

from __future__ import annotations

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR

from fts_dist.optim.param_groups import (
    GroupSettings,
    PhaseGroup,
    add_param_group,
    scale_learning_rates,
    truncate_param_groups,
)


def layers(count: int = 3) -> list[torch.nn.Linear]:
    torch.manual_seed(0)
    return [torch.nn.Linear(2, 2) for _ in range(count)]


def phase(layer: torch.nn.Linear, lr: float) -> PhaseGroup:
    return PhaseGroup(("weight", "bias"), tuple(layer.parameters()), lr)


def step(optimizer: torch.optim.Optimizer, modules: list[torch.nn.Linear]) -> None:
    optimizer.zero_grad()
    sum(m(torch.ones(1, 2)).sum() for m in modules).backward()
    optimizer.step()


def test_a_phase_group_joins_at_its_rate_and_every_scheduler_learns_of_it() -> None:
    modules = layers()
    optimizer = torch.optim.AdamW(modules[0].parameters(), lr=1e-2)
    decay = LambdaLR(optimizer, lambda epoch: 0.5**epoch)
    decay.step()  # epoch 1: group 0 at 5e-3
    add_param_group(optimizer, phase(modules[1], 1e-3), [decay])
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5e-3, 1e-3])
    assert decay.base_lrs == pytest.approx([1e-2, 1e-3])
    decay.step()  # epoch 2: each group from its own base rate
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2.5e-3, 2.5e-4])


def test_apply_lambdas_starts_the_new_group_where_the_schedule_is() -> None:
    modules = layers()
    optimizer = torch.optim.SGD(modules[0].parameters(), lr=1e-2)
    decay = LambdaLR(optimizer, lambda epoch: 0.5**epoch)
    decay.step()
    add_param_group(optimizer, phase(modules[1], 1e-3), [decay], apply_lambdas=True)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(5e-4)
    assert decay.base_lrs[1] == pytest.approx(1e-3)


def test_truncation_drops_later_groups_with_their_state_and_scheduler_entries() -> None:
    modules = layers()
    optimizer = torch.optim.AdamW(modules[0].parameters(), lr=1e-2)
    cycle = OneCycleLR(optimizer, max_lr=1e-2, total_steps=10)
    for module, lr in zip(modules[1:], (1e-3, 1e-4), strict=True):
        add_param_group(optimizer, phase(module, lr), [cycle])
    step(optimizer, modules)
    assert len(optimizer.state) == 6 and len(cycle.base_lrs) == 3
    truncate_param_groups(optimizer, 1, [cycle])
    assert len(optimizer.param_groups) == 1 and len(cycle.base_lrs) == 1
    assert set(optimizer.state) == set(modules[0].parameters())


def test_scaling_moves_group_rates_and_the_schedulers_bases_together() -> None:
    modules = layers(2)
    optimizer = torch.optim.SGD(modules[0].parameters(), lr=1e-2)
    decay = LambdaLR(optimizer, lambda epoch: 1.0)
    add_param_group(optimizer, phase(modules[1], 1e-3), [decay])
    scale_learning_rates(optimizer, 0.1, [decay])
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-4])
    decay.step()  # recomputed from the scaled base rates, not the old ones
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-4])


def test_captured_settings_come_back_after_a_load_rewrote_them() -> None:
    modules = layers(2)
    optimizer = torch.optim.AdamW(modules[0].parameters(), lr=1e-2, betas=(0.8, 0.9))
    add_param_group(optimizer, phase(modules[1], 1e-3), [])
    captured = GroupSettings.capture(optimizer, [])
    saved = optimizer.state_dict()
    for group in saved["param_groups"]:
        group["lr"], group["betas"] = 1.0, (0.1, 0.1)  # an older checkpoint's settings
    optimizer.load_state_dict(saved)
    assert captured.drift(optimizer)
    captured.reapply(optimizer, [])
    assert not captured.drift(optimizer)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-2, 1e-3])
