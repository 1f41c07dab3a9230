"""Resuming mid-schedule, implicit schedules and gen_ft_sched_only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint

from fts_dist import gen_ft_schedule
from tests.lightning.conftest import Recorder
from tests.modules import SCHEDULE, depths_by_epoch

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
