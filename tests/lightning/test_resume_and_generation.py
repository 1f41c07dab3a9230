"""Resuming mid-schedule (from epoch-end and mid-epoch checkpoints), implicit schedules and gen_ft_sched_only."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler

from fts_dist import gen_ft_schedule
from tests.lightning.conftest import Recorder
from tests.modules import SCHEDULE, depths_by_epoch, loaders

SCRIPT = [1.0, 0.9, 0.95, 0.8, 0.85, 0.7, 0.65, 0.6]  # phase 0 ends after epoch 2 (a resume point), 1 after 4


def step_lr(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)


@pytest.mark.parametrize("stop_after", [3, 4])
def test_resume_equals_the_uninterrupted_run(fit, tmp_path_factory, stop_after: int) -> None:
    full, _, _ = fit(Recorder(scripted_val_loss=SCRIPT, scheduler=step_lr), ft_schedule=SCHEDULE, max_epochs=7)

    every_epoch = tmp_path_factory.mktemp("every_epoch")
    first, _, _ = fit(
        Recorder(scripted_val_loss=SCRIPT, scheduler=step_lr),
        ft_schedule=SCHEDULE,
        max_epochs=stop_after,
        extra_callbacks=[ModelCheckpoint(dirpath=every_epoch, filename="{epoch}", save_top_k=-1)],
    )
    last = every_epoch / f"epoch={stop_after - 1}.ckpt"
    resumed, _, fts = fit(
        Recorder(scripted_val_loss=SCRIPT, scheduler=step_lr), ft_schedule=SCHEDULE, max_epochs=7, ckpt_path=str(last)
    )

    records = first.records + resumed.records
    assert depths_by_epoch(records) == depths_by_epoch(full.records) == [0, 0, 0, 1, 1, 2, 2]
    for expected, got in zip(full.records, records, strict=True):
        assert got["trainable"] == expected["trainable"]
        assert got["lrs"] == expected["lrs"]
    for name, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=1e-6)
    assert fts.curr_depth == 2


def fit_with_mid_epoch_checkpoints(fit, directory: Path, stateful: bool, ckpt_path: Path | None = None):
    """The 7-epoch schedule on shuffled data, 4 batches an epoch, with a checkpoint every 2 steps (mid-epoch).

    The shuffle is torchdata's stateful ``RandomSampler`` with a generator of its own. Measured alternatives that
    do not resume exactly: ``StatefulDataLoader(shuffle=True, generator=g)`` replays the rest of the epoch but not
    the seed its iterator also draws from ``g``, so later epochs shuffle differently (weights 0.009 apart at the
    end); torch's ``RandomSampler`` keeps no state, so even the rest of the epoch differs."""
    dataset = loaders()[0].dataset
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(1))
    train = (StatefulDataLoader if stateful else DataLoader)(dataset, batch_size=8, sampler=sampler)
    every_2_steps = ModelCheckpoint(dirpath=directory, filename="{epoch}-{step}", every_n_train_steps=2, save_top_k=-1)
    model, _, fts = fit(
        Recorder(scripted_val_loss=SCRIPT, scheduler=step_lr),
        ft_schedule=SCHEDULE,
        max_epochs=7,
        train_loader=train,
        extra_callbacks=[every_2_steps],
        ckpt_path=None if ckpt_path is None else str(ckpt_path),
    )
    return model, fts


def largest_weight_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((a.state_dict()[k] - v).abs().max()) for k, v in b.state_dict().items())


@pytest.mark.parametrize("mid_epoch_checkpoint", ["epoch=3-step=14.ckpt", "epoch=5-step=22.ckpt"])  # phase 1, 2
def test_a_mid_epoch_checkpoint_resumes_exactly_with_a_stateful_loader(
    fit, tmp_path_factory, mid_epoch_checkpoint: str
) -> None:
    full_dir, resumed_dir = tmp_path_factory.mktemp("full"), tmp_path_factory.mktemp("resumed")
    full, _ = fit_with_mid_epoch_checkpoints(fit, full_dir, stateful=True)
    resumed, fts = fit_with_mid_epoch_checkpoints(fit, resumed_dir, True, full_dir / mid_epoch_checkpoint)

    assert resumed.steps == 28 - int(mid_epoch_checkpoint.split("step=")[1].split(".")[0])  # only the rest
    assert depths_by_epoch(resumed.records) == depths_by_epoch(full.records)[-len(resumed.records) :]
    assert resumed.records[-1]["lrs"] == full.records[-1]["lrs"] and fts.curr_depth == 2
    assert largest_weight_difference(resumed, full) <= 1e-6


def test_a_mid_epoch_checkpoint_with_a_plain_loader_replays_the_epochs_first_batches(fit, tmp_path_factory) -> None:
    """What RELIABILITY.md documents: without loader state, the rest of the epoch starts the data over, so the
    result differs from the uninterrupted run (the control that shows the test above can fail)."""
    full_dir, resumed_dir = tmp_path_factory.mktemp("full"), tmp_path_factory.mktemp("resumed")
    full, _ = fit_with_mid_epoch_checkpoints(fit, full_dir, stateful=False)
    resumed, _ = fit_with_mid_epoch_checkpoints(fit, resumed_dir, False, full_dir / "epoch=3-step=14.ckpt")
    assert largest_weight_difference(resumed, full) > 1e-4


def test_implicit_schedule_is_written_to_log_dir_and_run(fit, tmp_path: Path) -> None:
    model, trainer, fts = fit(Recorder(scripted_val_loss=[1.0, 1.1] * 10), max_epochs=10)
    written = Path(trainer.log_dir) / "Recorder_ft_schedule.yaml"
    phases = yaml.safe_load(written.read_text())
    assert phases[0] == {"params": ["layers.3.bias", "layers.3.weight"]}
    assert len(phases) == 4 and fts.curr_depth > 0
    assert depths_by_epoch(model.records)[:3] == [0, 0, 1]  # patience 1: epoch 1 did not improve
    assert model.records[2]["trainable"] == ["layers.2.weight", "layers.2.bias", "layers.3.weight", "layers.3.bias"]
    assert model.records[2]["lrs"] == [0.1, 1e-5]  # base_max_lr for phases without an lr


def test_gen_ft_sched_only_writes_and_exits_before_training(fit, tmp_path: Path) -> None:
    model = Recorder()
    with pytest.raises(SystemExit) as exit_info:
        fit(model, gen_ft_sched_only=True)
    assert exit_info.value.code == 0 and model.steps == 0
    generated = yaml.safe_load(next(tmp_path.rglob("Recorder_ft_schedule.yaml")).read_text())
    assert generated == yaml.safe_load(gen_ft_schedule(Recorder(), tmp_path / "direct").read_text())


def test_explicit_schedule_file_runs_and_its_resolution_is_saved(fit, tmp_path: Path) -> None:
    path = tmp_path / "schedule.yaml"
    path.write_text(yaml.safe_dump({**SCHEDULE, 0: {**SCHEDULE[0], "max_transition_epoch": 1}}))
    model, trainer, _ = fit(ft_schedule=str(path), max_epochs=2)
    assert depths_by_epoch(model.records) == [0, 1]
    resolved = yaml.safe_load((Path(trainer.log_dir) / "Recorder_ft_schedule_resolved.yaml").read_text())
    assert resolved[2]["params"] == ["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"]


def test_group_settings_a_loader_drops_on_resume_are_set_back(fit, tmp_path_factory) -> None:
    """The settings saved beside the optimizer state are checked after a resume: a loader that leaves a later group's
    hyperparameters behind (as DCP's did, pytorch issue 143828) is caught and corrected, with a warning."""
    every_epoch = tmp_path_factory.mktemp("every_epoch")
    fit(
        Recorder(scripted_val_loss=SCRIPT, scheduler=step_lr),
        ft_schedule=SCHEDULE,
        max_epochs=4,
        extra_callbacks=[ModelCheckpoint(dirpath=every_epoch, filename="{epoch}", save_top_k=-1)],
    )
    saved_lrs = [
        g["lr"]
        for g in torch.load(every_epoch / "epoch=3.ckpt", weights_only=False)["optimizer_states"][0]["param_groups"]
    ]

    class DroppingLoader(pl.Callback):
        """Makes the strategy's optimizer-state loader leave group 1's learning rate behind."""

        def on_fit_start(self, trainer, pl_module) -> None:
            load = trainer.strategy.load_optimizer_state_dict

            def load_and_drop(checkpoint) -> None:
                load(checkpoint)
                trainer.optimizers[0].param_groups[1]["lr"] = 123.0

            trainer.strategy.load_optimizer_state_dict = load_and_drop

    with pytest.warns(
        UserWarning, match=r"group settings differed from the saved ones: \['group 1 lr=123.0 \(expected"
    ):
        resumed, _, _ = fit(
            Recorder(scripted_val_loss=SCRIPT, scheduler=step_lr),
            ft_schedule=SCHEDULE,
            max_epochs=5,
            ckpt_path=str(every_epoch / "epoch=3.ckpt"),
            extra_callbacks=[DroppingLoader()],
        )
    assert len(saved_lrs) == 2 and resumed.records[0]["lrs"] == [round(lr, 12) for lr in saved_lrs]
