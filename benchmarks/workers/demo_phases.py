"""Per-phase costs of the demo model (all-MiniLM-L6-v2 on BBC News), one process, one epoch per phase.

``--variant fts_dist`` runs the 3-phase schedule and records, per phase: the transition's wall time, the time to
read the checkpoint it restored, optimizer-state bytes and peak RSS. ``--variant plain --depth K`` trains exactly
phase K's trainable set with plain Lightning from the start (the baseline for that phase's memory). Writes
OUT/phases-VARIANT[-K].json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import psutil
import pytorch_lightning as pl
import torch

from fts_dist import FinetuningScheduler, FTSCheckpoint
from fts_dist.demo.data import TOPICS, BBCNewsDataModule
from fts_dist.demo.model import TextClassifier, pretrained_model_path
from fts_dist.runtime.clean_exit import leave_process_group

SCHEDULE: dict[int, dict[str, Any]] = {
    0: {"params": ["head.weight", "head.bias"], "max_transition_epoch": 1},
    1: {"params": [r"backbone\.encoder\.layer\.[45]\..*"], "lr": 1e-4, "max_transition_epoch": 2},
    2: {
        "params": [r"backbone\.encoder\.layer\.[0-3]\..*", r"backbone\.embeddings\..*"],
        "lr": 5e-5,
        "max_transition_epoch": 3,
    },
}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.nbytes for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t))


def touch_every_tensor(obj: Any) -> None:
    if torch.is_tensor(obj):
        obj.sum()
    elif isinstance(obj, dict):
        for value in obj.values():
            touch_every_tensor(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            touch_every_tensor(value)


class PhaseMeter(pl.Callback):
    """Peak RSS, optimizer-state bytes and trainable parameters of each phase (by the depth each epoch ran at)."""

    def __init__(self, depth_of: Any, best_of: Any) -> None:
        self.depth_of = depth_of
        self.best_of = best_of
        self.best_by_epoch: list[str] = []  # the checkpoint a transition at the next epoch restores
        self.process = psutil.Process()
        self.phases: dict[int, dict[str, float]] = {}

    def _row(self) -> dict[str, float]:
        return self.phases.setdefault(self.depth_of(), {"peak_rss": 0.0, "opt_bytes": 0.0, "trainable": 0.0})

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        row = self._row()
        row["peak_rss"] = max(row["peak_rss"], self.process.memory_info().rss)
        row["opt_bytes"] = optimizer_state_bytes(trainer.optimizers[0])
        row["trainable"] = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.best_by_epoch.append(self.best_of())


def demo_model_and_data(train_per_class: int) -> tuple[TextClassifier, BBCNewsDataModule]:
    """The demo's model and a small slice of its data (8 validation articles a class, 48 tokens), seeded."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    pl.seed_everything(0, verbose=False)
    path = pretrained_model_path()
    return TextClassifier(path, num_classes=len(TOPICS)), BBCNewsDataModule(path, train_per_class, 8, 48, 16)


def freeze_to_depth(model: torch.nn.Module, depth: int) -> None:
    """Make exactly the parameters of phases 0..``depth`` of :data:`SCHEDULE` trainable (the plain baselines)."""
    patterns = [p for d in range(depth + 1) for p in SCHEDULE[d]["params"]]
    for name, param in model.named_parameters():
        param.requires_grad_(any(re.fullmatch(p, name) for p in patterns))


def finish_distributed_worker() -> None:
    """Leave the process group together and exit without interpreter teardown (gloo can abort there)."""
    leave_process_group()
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=["fts_dist", "plain"], required=True)
    parser.add_argument("--depth", type=int, default=0, help="plain: train phases 0..DEPTH from the start")
    parser.add_argument("--train-per-class", type=int, default=16)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    model, data = demo_model_and_data(args.train_per_class)
    callbacks: list[Any] = []
    scheduler = None
    if args.variant == "fts_dist":
        scheduler = FinetuningScheduler(ft_schedule=SCHEDULE, epoch_transitions_only=True)
        checkpoint = FTSCheckpoint(monitor="val_loss", dirpath=out / "ckpt", save_top_k=-1)
        callbacks += [scheduler, checkpoint]
        meter = PhaseMeter(lambda: scheduler.curr_depth, lambda: checkpoint.best_model_path)
    else:
        freeze_to_depth(model, args.depth)
        meter = PhaseMeter(lambda: args.depth, lambda: "")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=3 if scheduler else 1,
        callbacks=[*callbacks, meter],
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=scheduler is not None,
        default_root_dir=out,
    )
    trainer.fit(model, datamodule=data)
    result: dict[str, Any] = {"phases": meter.phases, "transitions": {}}
    if scheduler is not None:
        for depth, seconds in scheduler.transition_seconds.items():
            result["transitions"][depth] = {"seconds": seconds}
        for depth, ckpt in enumerate(map(Path, meter.best_by_epoch[:2]), start=1):
            started = time.perf_counter()  # the file is as warm in the page cache as at the transition
            loaded = torch.load(ckpt, map_location="cpu", weights_only=False)
            touch_every_tensor(loaded)  # storages are read lazily: count the bytes actually coming in
            result["transitions"][depth].update(read_s=time.perf_counter() - started, bytes=ckpt.stat().st_size)
    suffix = "" if scheduler else f"-{args.depth}"
    (out / f"phases-{args.variant}{suffix}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
