"""One rank of a 2-process FSDP2 run on CPU (gloo) of ``transition_scaling.Stack``, fully fine-tuned (``--mode full``:
one phase, every parameter) or staged (``--mode staged``: the head, then the top quarter of the blocks), measuring
per phase what the rank holds after its last optimizer step (parameter shards, gradients, AdamW state) and what its
training step saved for backward. Writes OUT/budget-rank{r}.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.workers.transition_scaling import BATCH, CLASSES, SEQUENCE, Stack
from fts_dist import FinetuningScheduler
from fts_dist.callbacks.memory_report import held_tensor_bytes
from fts_dist.memory.activations import SavedTensors


def schedule(mode: str, depth: int) -> dict[int, dict[str, Any]]:
    if mode == "full":
        return {0: {"params": [".*"], "max_transition_epoch": 1}}
    quarter = max(depth // 4, 1)
    top = [rf"blocks\.{i}\..*" for i in range(depth - quarter, depth)]
    return {0: {"params": ["head.*"], "max_transition_epoch": 1}, 1: {"params": top, "max_transition_epoch": 2}}


class PhaseMeter(pl.Callback):
    """Per phase: the most this rank held after an optimizer step, and what a step saved for backward."""

    def __init__(self) -> None:
        self.phases: dict[int, dict[str, int]] = {}
        self._saved: SavedTensors | None = None
        self._activations = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._saved = SavedTensors().__enter__()

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self._saved is not None:
            self._saved.__exit__(None, None, None)
            self._activations, self._saved = self._saved.nbytes, None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        depth = next(c for c in trainer.callbacks if isinstance(c, FinetuningScheduler)).curr_depth
        states = held_tensor_bytes(pl_module.parameters(), trainer.optimizers)
        seen = self.phases.setdefault(depth, {"states": 0, "activations": 0})
        seen["states"] = max(seen["states"], states)
        seen["activations"] = max(seen["activations"], self._activations)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--depth", type=int, required=True)
    parser.add_argument("--mode", choices=["full", "staged"], required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    generator = torch.Generator().manual_seed(1)
    samples = 2 * BATCH * world
    data = TensorDataset(
        torch.randn(samples, SEQUENCE, args.width, generator=generator),
        torch.randint(0, CLASSES, (samples,), generator=generator),
    )
    meter = PhaseMeter()
    phases = len(schedule(args.mode, args.depth))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world,
        strategy=ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1),
        max_epochs=phases,
        use_distributed_sampler=False,
        callbacks=[
            FinetuningScheduler(ft_schedule=schedule(args.mode, args.depth), epoch_transitions_only=True),
            meter,
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        limit_val_batches=0,
        default_root_dir=args.out,
    )
    loader = DataLoader(data, batch_size=BATCH, sampler=DistributedSampler(data, world, rank, shuffle=False))
    trainer.fit(Stack(args.width, args.depth, shard=True), loader)
    out = Path(args.out) / f"budget-rank{rank}.json"
    out.write_text(json.dumps({"phases": {str(d): v for d, v in meter.phases.items()}}))


if __name__ == "__main__":
    main()
