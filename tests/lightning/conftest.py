from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl

from fts_dist import FinetuningScheduler, FTSCheckpoint, FTSEarlyStopping
from tests.modules import define_module, loaders

Recorder = define_module(pl)


@pytest.fixture
def fit(tmp_path: Path):
    """Run a real Trainer on CPU with FinetuningScheduler; return (model, trainer, scheduler)."""

    def run(
        model: Any = None,
        *,
        max_epochs: int = 6,
        patience: int = 1,
        ckpt_path: str | None = None,
        extra_callbacks: list[Any] | None = None,
        save_last: bool = False,
        train_loader: Any = None,
        **fts_kwargs: Any,
    ) -> tuple[Any, pl.Trainer, FinetuningScheduler]:
        model = model if model is not None else Recorder()
        scheduler = FinetuningScheduler(**fts_kwargs)
        callbacks: list[Any] = [
            scheduler,
            FTSCheckpoint(monitor="val_loss", dirpath=tmp_path / "ckpts", save_last=save_last),
        ]
        if not fts_kwargs.get("epoch_transitions_only"):
            callbacks.append(FTSEarlyStopping(monitor="val_loss", patience=patience))
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=max_epochs,
            default_root_dir=tmp_path,
            callbacks=callbacks + (extra_callbacks or []),
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=pl.loggers.CSVLogger(tmp_path),
            deterministic=True,
        )
        train, val = loaders()
        trainer.fit(model, train_loader or train, val, ckpt_path=ckpt_path)
        return model, trainer, scheduler

    return run
