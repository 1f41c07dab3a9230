"""A small built-in example: a three-block MLP "pretrained" on one task, fine-tuned on a related one.

It runs on a CPU in seconds and shows every phase transition; the real-model demo lives elsewhere.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from fts_dist.callbacks import FinetuningScheduler, FTSCheckpoint, FTSEarlyStopping

TOY_SCHEDULE: dict[int, dict[str, Any]] = {
    0: {"params": ["head.weight", "head.bias"], "max_transition_epoch": 2},
    1: {"params": ["body.2.*"], "max_transition_epoch": 4, "lr": 1e-3},
    2: {"params": ["body.0.*"], "lr": 1e-3},
}


class ToyClassifier(pl.LightningModule):
    """Two hidden layers and a linear head; logs ``val_loss`` and ``val_acc``."""

    def __init__(self, in_features: int = 16, hidden: int = 32, classes: int = 4, lr: float = 1e-2) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, classes)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @override
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    @override
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y), prog_bar=True, sync_dist=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True, sync_dist=True)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW((p for p in self.parameters() if p.requires_grad), lr=self.hparams["lr"])


def make_loaders(
    seed: int = 0, samples: int = 512, in_features: int = 16, classes: int = 4
) -> tuple[DataLoader, DataLoader]:
    """A separable synthetic task: labels from a fixed random projection of the inputs."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, in_features, generator=generator)
    y = (x @ torch.randn(in_features, classes, generator=generator)).argmax(-1)
    split = samples * 3 // 4
    train = DataLoader(TensorDataset(x[:split], y[:split]), batch_size=32)
    val = DataLoader(TensorDataset(x[split:], y[split:]), batch_size=128)
    return train, val


class ToyDataModule(pl.LightningDataModule):
    """:func:`make_loaders` as a LightningDataModule, for LightningCLI configs (``fts-dist fit``)."""

    def __init__(self, seed: int = 0, samples: int = 512) -> None:
        super().__init__()
        self.seed, self.samples = seed, samples
        self._loaders: tuple[DataLoader, DataLoader] | None = None

    @override
    def setup(self, stage: str) -> None:
        self._loaders = make_loaders(self.seed, self.samples)

    @override
    def train_dataloader(self) -> DataLoader:
        assert self._loaders is not None
        return self._loaders[0]

    @override
    def val_dataloader(self) -> DataLoader:
        assert self._loaders is not None
        return self._loaders[1]


def run_toy_example(max_epochs: int = 8, root_dir: str | None = None) -> dict[str, float]:
    """Fine-tune :class:`ToyClassifier` with :data:`TOY_SCHEDULE` on CPU and return the final metrics."""
    pl.seed_everything(0, workers=True)
    root = Path(root_dir or tempfile.mkdtemp(prefix="fts_dist_example_"))
    model = ToyClassifier()
    train, val = make_loaders()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        default_root_dir=root,
        callbacks=[
            FinetuningScheduler(ft_schedule=TOY_SCHEDULE),
            FTSEarlyStopping(monitor="val_loss", patience=2),
            FTSCheckpoint(monitor="val_loss", dirpath=root / "checkpoints"),
        ],
        logger=pl.loggers.CSVLogger(root),
        enable_model_summary=False,
        enable_progress_bar=False,
        log_every_n_steps=5,
    )
    trainer.fit(model, train, val)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}
