"""Fuzzed schedules through a real Trainer: FTSConfigError before any training step, weights untouched."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from hypothesis import HealthCheck, given, settings

from fts_dist import FinetuningScheduler, FTSCheckpoint, FTSConfigError, FTSEarlyStopping
from tests.fuzzing import examples
from tests.lightning.conftest import Recorder
from tests.modules import loaders
from tests.unit.test_schedule_fuzz import assert_names_its_location, schedules


@settings(max_examples=examples(25), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=schedules)
def test_fuzzed_schedules_fail_before_the_first_step_or_train(tmp_path: Path, raw) -> None:
    model = Recorder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        callbacks=[
            FinetuningScheduler(ft_schedule=raw),
            FTSEarlyStopping(monitor="val_loss"),
            FTSCheckpoint(monitor="val_loss", dirpath=tmp_path / "ckpt"),
        ],
    )
    try:
        trainer.fit(model, *loaders())
    except FTSConfigError as err:
        assert_names_its_location(err)
        assert model.steps == 0
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    else:
        assert model.steps == 1  # a schedule that happens to be valid trains normally
