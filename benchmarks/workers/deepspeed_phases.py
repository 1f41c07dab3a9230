"""Per-phase, per-rank costs of the demo model under DeepSpeed on 2 processes (``fts_dist.DeepSpeedStrategy``).

``--variant fts_dist`` runs section (d)'s 3-phase schedule (one epoch each, AdamW) and records, per phase: the bytes
of fp32 masters and optimizer state this rank holds, the trainable parameter count and the median step time; per
transition, its wall time. ``--variant plain --depth K`` trains phase K's trainable set with DeepSpeed straight from
``deepspeed.initialize`` for one epoch (the step-time baseline). Writes OUT/deepspeed-VARIANT[-K]-rankR.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from benchmarks.workers.demo_phases import SCHEDULE, demo_model_and_data, finish_distributed_worker, freeze_to_depth
from fts_dist import DeepSpeedStrategy, FinetuningScheduler, FTSCheckpoint
from fts_dist.adapters.deepspeed.engine import state_bytes


class StepMeter(pl.Callback):
    """Step wall times and what the rank holds, per phase (``depth_of()``)."""

    def __init__(self, depth_of: Any) -> None:
        self.depth_of = depth_of
        self.steps: dict[int, list[float]] = {}
        self.phases: dict[int, dict[str, int]] = {}
        self._started = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        depth = self.depth_of()
        self.steps.setdefault(depth, []).append(time.perf_counter() - self._started)
        params = [p for p in pl_module.parameters() if p.requires_grad]
        trainable = sum(getattr(p, "ds_numel", p.numel()) for p in params)
        self.phases[depth] = {"state": state_bytes(trainer.strategy.model), "trainable": trainable}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=["fts_dist", "plain"], required=True)
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--depth", type=int, default=0)
    parser.add_argument("--train-per-class", type=int, default=32)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, data = demo_model_and_data(args.train_per_class)
    world = int(os.environ["WORLD_SIZE"])
    callbacks: list[Any] = []
    scheduler = None
    if args.variant == "fts_dist":
        scheduler = FinetuningScheduler(ft_schedule=SCHEDULE, epoch_transitions_only=True, restore_best=False)
        callbacks += [scheduler, FTSCheckpoint(monitor="val_loss", dirpath=out / "ckpt", save_top_k=0)]
        meter = StepMeter(lambda: scheduler.curr_depth)
    else:
        freeze_to_depth(model, args.depth)
        meter = StepMeter(lambda: args.depth)
    config = {"zero_optimization": {"stage": args.stage}, "train_micro_batch_size_per_gpu": 16}
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world,
        strategy=DeepSpeedStrategy(config=config, process_group_backend="gloo"),
        max_epochs=3 if scheduler else 1,
        callbacks=[*callbacks, meter],
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=scheduler is not None,
        default_root_dir=out,
    )
    trainer.fit(model, datamodule=data)
    steps = {depth: statistics.median(times[2:] or times) for depth, times in meter.steps.items()}
    result = {"world": world, "phases": meter.phases, "step_s": steps}
    if scheduler is not None:
        result["transitions"] = scheduler.transition_seconds
    name = args.variant if scheduler else f"plain-{args.depth}"
    (out / f"deepspeed-{name}-rank{trainer.global_rank}.json").write_text(json.dumps(result))
    finish_distributed_worker()


if __name__ == "__main__":
    main()
