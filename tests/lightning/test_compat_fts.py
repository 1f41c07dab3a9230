"""Same module, same schedule: fts_dist and finetuning-scheduler 2.14.1 train the same parameters at the same
learning rates every epoch, end with the same weights, and generate the same implicit schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from fts_dist import gen_ft_schedule
from tests.lightning.conftest import Recorder
from tests.modules import SCHEDULE, define_module, loaders

fts_original = pytest.importorskip("finetuning_scheduler", reason="pip install 'fts-dist[compat]'")
lightning_pl = pytest.importorskip("lightning.pytorch")
OriginalRecorder = define_module(lightning_pl)

pytestmark = pytest.mark.compat


def run_original(model: Any, root: Path, max_epochs: int, **fts_kwargs: Any) -> Any:
    callbacks = [
        fts_original.FinetuningScheduler(**fts_kwargs),
        fts_original.FTSCheckpoint(monitor="val_loss", dirpath=root / "ckpts"),
    ]
    if not fts_kwargs.get("epoch_transitions_only"):
        callbacks.append(fts_original.FTSEarlyStopping(monitor="val_loss", patience=1))
    trainer = lightning_pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        default_root_dir=root,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        deterministic=True,
    )
    trainer.fit(model, *loaders())
    return model


def step_lr(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)


def lambda_lr(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.9**epoch)


# finetuning-scheduler 2.x's re-initialisation keys, as its documentation writes them
ADAMW = {"optimizer_init": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01, "weight_decay": 0.05}}}
NESTEROV = {
    "optimizer_init": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.5, "nesterov": True}}
}
HALVING = {
    "lr_scheduler_init": {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": 0.5}},
    "pl_lrs_cfg": {"interval": "epoch", "frequency": 1, "name": "halving"},
    "use_current_optimizer_pg_lrs": True,
}
COSINE_FROM = {
    "lr_scheduler_init": {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR", "init_args": {"T_max": 3}},
    "init_pg_lrs": [0.01, 0.02, 0.03],
}
DECAY = {"lr_scheduler_init": {"class_path": "torch.optim.lr_scheduler.ExponentialLR", "init_args": {"gamma": 0.7}}}
WITH_NORM = {**SCHEDULE, 2: {**SCHEDULE[2], "params": [*SCHEDULE[2]["params"], "norm.*"]}}
LOSSES = [1.0, 0.5, 0.9, 0.8, 0.85, 0.7, 0.6]
IMPROVING = [1.0, 0.9, 0.95, 0.8, 0.85, 0.7, 0.75]  # each phase's best is its own (the original restores no further)


SCENARIOS = {
    "early-stopping+restore": (dict(scripted_val_loss=[1.0, 0.5, 0.9, 0.8, 0.85, 0.7, 0.6]), {}),
    "epochs+steplr": (
        dict(scheduler=step_lr),
        {
            "ft_schedule": {
                d: {**p, "max_transition_epoch": e} for (d, p), e in zip(SCHEDULE.items(), (1, 3, 3), strict=True)
            },
            "epoch_transitions_only": True,
        },
    ),
    "composed+lambdalr+no-restore": (
        dict(scripted_val_loss=[1.0, 0.9, 0.8, 0.7, 0.75, 0.6, 0.5], scheduler=lambda_lr),
        {"ft_schedule": {**SCHEDULE, 0: {**SCHEDULE[0], "max_transition_epoch": 2}}, "restore_best": False},
    ),
    "new_optimizer+new_lr_scheduler+restore": (
        dict(scripted_val_loss=IMPROVING, scheduler=step_lr),
        {"ft_schedule": {0: SCHEDULE[0], 1: {**SCHEDULE[1], "new_optimizer": ADAMW, "new_lr_scheduler": HALVING},
                         2: {**SCHEDULE[2], "new_lr_scheduler": COSINE_FROM}}},
    ),
    "new_optimizer-alone+epochs": (
        dict(scheduler=lambda_lr),
        {"ft_schedule": {0: {**SCHEDULE[0], "max_transition_epoch": 2}, 1: {**SCHEDULE[1], "max_transition_epoch": 4},
                         2: {**SCHEDULE[2], "max_transition_epoch": 6, "new_optimizer": NESTEROV}},
         "epoch_transitions_only": True},
    ),
    "reinit_optim_cfg+reinit_lr_cfg+implicit": (
        dict(scripted_val_loss=IMPROVING, scheduler=step_lr),
        {"ft_schedule": None, "reinit_optim_cfg": NESTEROV, "reinit_lr_cfg": DECAY},
    ),
    "apply_lambdas_new_pgs": (
        dict(scripted_val_loss=LOSSES, scheduler=lambda_lr), {"apply_lambdas_new_pgs": True, "restore_best": False}
    ),
    "enforce_phase0_params+string-keys": (
        dict(scripted_val_loss=LOSSES, optimize_all=True), {"ft_schedule": {str(d): p for d, p in SCHEDULE.items()}}
    ),
    "batchnorm-tracks-when-frozen": (dict(scripted_val_loss=LOSSES, batchnorm=True), {"ft_schedule": WITH_NORM}),
    "frozen_bn_track_running_stats=False": (
        dict(scripted_val_loss=LOSSES, batchnorm=True),
        {"ft_schedule": WITH_NORM, "frozen_bn_track_running_stats": False},
    ),
}  # fmt: skip


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_epoch_by_epoch_equivalence(fit, tmp_path: Path, scenario: str) -> None:
    module_kwargs, fts_kwargs = SCENARIOS[scenario]
    fts_kwargs = {"ft_schedule": SCHEDULE, **fts_kwargs}
    ours, _, _ = fit(Recorder(**module_kwargs), max_epochs=7, **fts_kwargs)
    theirs = run_original(OriginalRecorder(**module_kwargs), tmp_path / "original", 7, **fts_kwargs)
    assert len(ours.records) == len(theirs.records)
    for mine, original in zip(ours.records, theirs.records, strict=True):
        assert (mine["epoch"], mine["trainable"]) == (original["epoch"], original["trainable"])
        assert mine["lrs"] == pytest.approx(original["lrs"], rel=1e-9)
    for name, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, rtol=0, atol=1e-6)
    assert len({len(r["lrs"]) for r in ours.records}) >= 3  # every scenario reaches phase 2 at least


def test_implicit_schedules_are_identical(tmp_path: Path) -> None:
    ours = yaml.safe_load(gen_ft_schedule(Recorder(), tmp_path / "ours").read_text())
    original_path = fts_original.ScheduleImplMixin._gen_ft_schedule_impl(OriginalRecorder(), tmp_path / "theirs")
    assert ours == yaml.safe_load(Path(original_path).read_text())


def test_both_write_their_schedule_files_to_log_dir(fit, tmp_path: Path) -> None:
    fit(Recorder(), ft_schedule=SCHEDULE, log_dir=tmp_path / "ours", max_epochs=1)
    run_original(OriginalRecorder(), tmp_path / "original", 1, ft_schedule=SCHEDULE, log_dir=tmp_path / "theirs")
    assert [p.name for p in (tmp_path / "ours").iterdir()] == ["Recorder_ft_schedule_resolved.yaml"]
    assert [p.name for p in (tmp_path / "theirs").iterdir()] == ["Recorder_ft_schedule.yaml"]
