"""One run of a 7-phase MLP fine-tuning on a synthetic teacher task, on 1 process or as one rank under torchrun.

Variants: ``plain`` (plain Lightning, everything trainable from the start), ``fts_dist`` and
``finetuning-scheduler`` (2.14.1, under ``lightning.pytorch``), both with the same epoch-driven schedule. Writes
OUT/VARIANT-wWORLD.json on rank 0: last-epoch step times, wall time, validation accuracy, and the largest weight
difference between ranks.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

IN_FEATURES, WIDTH, DEPTH, BATCH, CLASSES = 32, 256, 6, 64, 10


def schedule() -> dict[int, dict[str, Any]]:
    phases: dict[int, dict[str, Any]] = {0: {"params": ["head.*"], "max_transition_epoch": 1}}
    for i, block in enumerate(reversed(range(DEPTH)), start=1):
        phases[i] = {"params": [f"body.{block}.*"], "max_transition_epoch": 1 + i, "lr": 3e-4}
    return phases


def teacher_data(samples: int) -> tuple[TensorDataset, TensorDataset]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples + 1024, IN_FEATURES, generator=generator)
    teacher = torch.randn(IN_FEATURES, CLASSES, generator=generator)
    y = (x @ teacher).argmax(-1)  # a linear teacher: learnable from the head down
    return TensorDataset(x[:samples], y[:samples]), TensorDataset(x[samples:], y[samples:])


def build_module(pl: Any) -> Any:
    class Mlp(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            widths = [IN_FEATURES] + [WIDTH] * DEPTH
            self.body = nn.Sequential(
                *[nn.Sequential(nn.Linear(i, o), nn.ReLU()) for i, o in itertools.pairwise(widths)]
            )
            self.head = nn.Linear(WIDTH, CLASSES)
            self.step_times: list[float] = []
            self._t0 = 0.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self.current_epoch == self.trainer.max_epochs - 1 and batch_idx >= 3:  # last phase, warm
                self.step_times.append(time.perf_counter() - self._t0)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            logits = self(x)
            self.log("val_loss", nn.functional.cross_entropy(logits, y), sync_dist=True)
            self.log("val_acc", (logits.argmax(-1) == y).float().mean(), sync_dist=True)

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-3)

    return Mlp


def callbacks_for(variant: str, out: Path) -> tuple[Any, list[Any]]:
    if variant == "finetuning-scheduler":
        import finetuning_scheduler as fts
        import lightning.pytorch as pl

        return pl, [
            fts.FinetuningScheduler(ft_schedule=schedule(), epoch_transitions_only=True),
            fts.FTSCheckpoint(monitor="val_loss", dirpath=out / "ckpt-fts"),
        ]
    import pytorch_lightning as pl

    from fts_dist import FinetuningScheduler, FTSCheckpoint

    if variant == "plain":
        return pl, []
    return pl, [
        FinetuningScheduler(ft_schedule=schedule(), epoch_transitions_only=True),
        FTSCheckpoint(monitor="val_loss", dirpath=out / "ckpt-fts_dist"),
    ]


def largest_replica_difference(module: nn.Module) -> float:
    if not torch.distributed.is_initialized():
        return 0.0
    flat = torch.cat([p.detach().flatten() for p in module.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=["plain", "fts_dist", "finetuning-scheduler"], required=True)
    parser.add_argument("--steps", type=int, default=40, help="steps per epoch per rank")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    torch.set_flush_denormal(True)  # long-trained moments go denormal on CPU and slow whichever run trained longest
    world = int(os.environ.get("WORLD_SIZE", "1"))
    pl, callbacks = callbacks_for(args.variant, out)
    train, val = teacher_data(BATCH * args.steps * world)
    model = build_module(pl)()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        max_epochs=len(schedule()) + 1,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=args.variant != "plain",
        default_root_dir=out,
    )
    started = time.perf_counter()
    trainer.fit(model, DataLoader(train, batch_size=BATCH, shuffle=False), DataLoader(val, batch_size=512))
    wall = time.perf_counter() - started
    result = {
        "variant": args.variant,
        "world": world,
        "step_times": model.step_times,
        "wall_s": wall,
        "val_acc": float(trainer.callback_metrics["val_acc"]),
        "replica_max_diff": largest_replica_difference(model),
    }
    if trainer.global_rank == 0:
        (out / f"{args.variant}-w{world}.json").write_text(json.dumps(result))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os._exit(0)  # gloo can abort at interpreter exit


if __name__ == "__main__":
    main()
