"""Per-phase, per-rank memory and transition costs of the demo model under FSDP2 or DDP on 2 processes.

Runs the 3-phase schedule of section (d), one epoch per phase, with AdamW. Records on every rank, per phase: bytes of
parameters, gradients and optimizer state this rank holds (DTensor shards count their local part), the trainable
parameter count; per transition: its wall time, the time and bytes of the restore inside it (``/proc/self/io``
``rchar``, every byte this process read), the size of the checkpoint it restored, the time
``torch.distributed.checkpoint`` spent reading this rank's shards during it, and the time to read this rank's shard
file whole with a plain read. Writes OUT/sharded-STRATEGY-rankR.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed.checkpoint
from pytorch_lightning.strategies import DDPStrategy, ModelParallelStrategy
from torch.distributed.tensor import DTensor

from benchmarks.workers.demo_phases import SCHEDULE, demo_model_and_data, finish_distributed_worker
from fts_dist import FinetuningScheduler, FTSCheckpoint
from fts_dist.adapters import StrategyAdapter


def local_bytes(tensor: torch.Tensor) -> int:
    return (tensor.to_local() if isinstance(tensor, DTensor) else tensor).nbytes


def bytes_read() -> int:
    with open("/proc/self/io") as io:
        return int(next(line for line in io if line.startswith("rchar:")).split()[1])


class RankMeter(pl.Callback):
    """What this rank holds in each phase, measured right before each optimizer step (gradients present)."""

    def __init__(self, scheduler: FinetuningScheduler) -> None:
        self.scheduler = scheduler
        self.phases: dict[int, dict[str, int]] = {}
        self.transitions: dict[int, dict[str, Any]] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.scheduler.adapter is not None
        measure_restores(self.scheduler.adapter, self.transitions)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        params = list(pl_module.parameters())
        state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
        self.phases[self.scheduler.curr_depth] = {
            "params": sum(local_bytes(p) for p in params),
            "grads": sum(local_bytes(p.grad) for p in params if p.grad is not None),
            "optimizer": sum(local_bytes(t) for t in state),
            "all_numel": sum(p.numel() for p in params),
            "trainable_numel": sum(p.numel() for p in params if p.requires_grad),
        }


def measure_restores(adapter: StrategyAdapter, transitions: dict[int, dict[str, Any]]) -> None:
    """Time and count the bytes of every checkpoint restore a transition makes on this rank, and the time
    ``torch.distributed.checkpoint`` spends reading shards within it."""
    load, dcp_seconds = adapter.load_checkpoint_state, [0.0]
    dcp_load = torch.distributed.checkpoint.load

    def timed_dcp_load(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return dcp_load(*args, **kwargs)
        finally:
            dcp_seconds[0] += time.perf_counter() - started

    torch.distributed.checkpoint.load = timed_dcp_load

    def measured(path: str, phases: Any, trainer: pl.Trainer) -> None:
        read_before, started, dcp_seconds[0] = bytes_read(), time.perf_counter(), 0.0
        load(path, phases, trainer)
        size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) or Path(path).stat().st_size
        transitions[len(transitions) + 1] = {
            "restore_s": time.perf_counter() - started,
            "restore_bytes": bytes_read() - read_before,
            "checkpoint_bytes": size,
            "dcp_read_s": dcp_seconds[0],
            "path": path,
        }

    adapter.load_checkpoint_state = measured  # type: ignore[method-assign]


def shard_read_seconds(checkpoint: Path, rank: int) -> float:
    """This rank's shard file read whole, as warm in the page cache as at the transition (a whole file for DDP)."""
    files = [checkpoint / f"__{rank}_0.distcp"] if checkpoint.is_dir() else [checkpoint]
    started = time.perf_counter()
    for file in files:
        file.read_bytes()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", choices=["fsdp2", "ddp"], required=True)
    parser.add_argument("--train-per-class", type=int, default=16)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    model, data = demo_model_and_data(args.train_per_class)
    world = int(os.environ["WORLD_SIZE"])
    scheduler = FinetuningScheduler(ft_schedule=SCHEDULE, epoch_transitions_only=True)
    meter = RankMeter(scheduler)
    strategy = (
        ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1)
        if args.strategy == "fsdp2"
        else DDPStrategy(process_group_backend="gloo")
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world,
        strategy=strategy,
        max_epochs=3,
        callbacks=[
            scheduler,
            FTSCheckpoint(monitor="val_loss", dirpath=out / f"ckpt-{args.strategy}", save_top_k=-1),
            meter,
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        default_root_dir=out,
    )
    trainer.fit(model, datamodule=data)
    rank = trainer.global_rank
    transitions = meter.transitions
    for depth, transition in transitions.items():
        transition["seconds"] = scheduler.transition_seconds[depth]
        transition["shard_read_s"] = shard_read_seconds(Path(transition["path"]), rank)
    result = {"world": world, "phases": meter.phases, "transitions": transitions}
    (out / f"sharded-{args.strategy}-rank{rank}.json").write_text(json.dumps(result))
    finish_distributed_worker()


if __name__ == "__main__":
    main()
