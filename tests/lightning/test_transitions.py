"""Phase boundaries, trainable sets and group learning rates per epoch, with a real Trainer on CPU."""

from __future__ import annotations

import logging

import pytest
import pytorch_lightning as pl
import torch

from fts_dist import FinetuningScheduler
from tests.lightning.conftest import Recorder
from tests.modules import SCHEDULE, depths_by_epoch

HEAD = ["layers.3.weight", "layers.3.bias"]
PHASE1 = ["layers.2.weight", "layers.2.bias"]
ALL = [f"layers.{i}.{k}" for i in range(4) for k in ("weight", "bias")]


def with_epochs(*epochs: int) -> dict:
    return {d: {**phase, "max_transition_epoch": e} for (d, phase), e in zip(SCHEDULE.items(), epochs, strict=True)}


def test_epoch_transitions_only(fit) -> None:
    model, trainer, fts = fit(ft_schedule=with_epochs(1, 3, 3), epoch_transitions_only=True, max_epochs=5)
    assert depths_by_epoch(model.records) == [0, 1, 1, 2, 2]
    assert [r["trainable"] for r in model.records[:2]] == [HEAD, sorted(PHASE1 + HEAD, key=ALL.index)]
    assert sorted(model.records[-1]["trainable"]) == sorted(ALL)
    assert model.records[-1]["lrs"] == [0.1, 0.05, 0.02]
    assert fts.curr_depth == 2 and fts.depth_remaining == 0
    assert trainer.current_epoch == 5  # the final phase runs until max_epochs


def test_early_stopping_drives_phases_and_ends_the_run_in_the_last_one(fit) -> None:
    model = Recorder(scripted_val_loss=[1.0, 0.9, 0.95, 0.8, 0.85, 0.7, 0.75, 0.6])
    model, trainer, _ = fit(model, ft_schedule=SCHEDULE, max_epochs=20)
    # no improvement at epoch 2 -> phase 1 from epoch 3; at epoch 4 -> phase 2 from 5; at 6 the run stops
    assert depths_by_epoch(model.records) == [0, 0, 0, 1, 1, 2, 2]
    assert trainer.should_stop and trainer.current_epoch == 7


def test_composed_mode_takes_whichever_comes_first(fit) -> None:
    model = Recorder(scripted_val_loss=[1.0, 0.9, 0.8, 0.7, 0.75, 0.6, 0.5, 0.4])
    model, _, _ = fit(model, ft_schedule=with_epochs(1, -1, -1), max_epochs=8)
    assert depths_by_epoch(model.records) == [0, 1, 1, 1, 1, 2, 2, 2]  # epoch 1 by epoch, epoch 5 by ES


def test_max_depth_stops_the_schedule(fit) -> None:
    model, _, fts = fit(ft_schedule=with_epochs(1, 2, 3), epoch_transitions_only=True, max_depth=1, max_epochs=5)
    assert depths_by_epoch(model.records) == [0, 1, 1, 1, 1]
    assert fts.curr_depth == 1 and fts.depth_remaining == 0
    assert not any(n.startswith(("layers.0", "layers.1")) for n in model.records[-1]["trainable"])


def test_depth_is_logged_as_a_metric(fit, tmp_path) -> None:
    fit(ft_schedule=with_epochs(1, 2, 3), epoch_transitions_only=True, max_epochs=3)
    text = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "finetuning_depth" in text.splitlines()[0]
    assert {"0.0", "1.0", "2.0"} <= set(text.replace(",", "\n").splitlines())


@pytest.mark.parametrize("restore_best", [True, False])
def test_restore_best_loads_the_best_weights_at_the_transition(fit, restore_best: bool) -> None:
    model = Recorder(scripted_val_loss=[1.0, 0.5, 0.9, 0.8, 0.7])  # epoch 1 is best; epoch 2 ends phase 0
    model, trainer, _ = fit(model, ft_schedule=SCHEDULE, max_epochs=4, restore_best=restore_best)
    best_path = trainer.checkpoint_callback.best_model_path
    assert "epoch=1" in best_path
    best = torch.load(best_path, weights_only=False)["state_dict"]
    assert depths_by_epoch(model.records) == [0, 0, 0, 1]
    at_transition = model.records[3]["weights"]
    assert all(torch.equal(at_transition[k], v) for k, v in best.items()) is restore_best
    # start of epoch 2 == end of epoch 1 == best; without a restore, epoch 2's updates are still there at epoch 3
    assert all(torch.equal(model.records[2]["weights"][k], v) for k, v in best.items())


def test_group_lrs_follow_the_lr_scheduler_and_survive_restores(fit) -> None:
    def step_lr(optimizer):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    model = Recorder(scheduler=step_lr)
    model, _, _ = fit(model, ft_schedule=with_epochs(1, 2, 3), epoch_transitions_only=True, max_epochs=4)
    assert [r["lrs"] for r in model.records] == [
        [0.1],
        [0.05, 0.05],  # phase 0 stepped once; phase 1 starts at its own lr
        [0.025, 0.025, 0.02],
        [0.0125, 0.0125, 0.01],
    ]


def test_step_moves_to_the_next_phase_on_demand(fit) -> None:
    class StepAtEpochTwo(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 2:
                scheduler = next(c for c in trainer.callbacks if isinstance(c, FinetuningScheduler))
                scheduler.step()

    model, _, fts = fit(
        Recorder(scripted_val_loss=[1.0, 0.9, 0.8, 0.7]),
        ft_schedule=SCHEDULE,
        max_epochs=4,
        extra_callbacks=[StepAtEpochTwo()],
    )
    assert depths_by_epoch(model.records)[:3] == [0, 0, 1]
    assert fts.schedule[1].params == tuple(PHASE1)


def test_each_phase_logs_what_it_held_beside_its_plan(fit, caplog: pytest.LogCaptureFixture) -> None:
    """One process: the tensors held after each phase's steps (weights, gradients, SGD momentum) are exactly what
    ``fts_dist.memory`` planned for the schedule before training."""
    with caplog.at_level(logging.INFO):
        _, _, scheduler = fit(ft_schedule=with_epochs(1, 3, 3), epoch_transitions_only=True, max_epochs=5)
    memory = scheduler.memory
    assert memory.planned is not None and sorted(memory.held) == [0, 1, 2]
    assert [memory.held[d] for d in range(3)] == memory.planned
    assert memory.planned[0] < memory.planned[1] < memory.planned[2]
    assert "fts_dist: phase 2 held" in caplog.text and "1.00x" in caplog.text
