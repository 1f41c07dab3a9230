"""One rank of a 3-phase run of a GPT-style stack, measuring what each phase transition costs this rank.

Phase 0 trains the head, phase 1 the top quarter of the blocks, phase 2 the next quarter (AdamW, one epoch each).
Around every transition (``StrategyAdapter.apply_plan``: restore, thaw, optimizer rebuild or extension, replica check,
re-wrap) this rank records its wall time and the peak of its resident memory above what it held right before
(VmHWM, reset through ``/proc/self/clear_refs``, after ``gc.collect`` and ``malloc_trim``). Transition 1 keeps the
head's group; transition 2 keeps the head's and phase 1's; both add a quarter of the blocks. On a GPU
(``--accelerator cuda``) it also records ``torch.cuda.max_memory_allocated`` above ``torch.cuda.memory_allocated``
before each transition. Writes OUT/scaling-rankR.json.

The worker measures only through ``apply_plan``, which every version of fts_dist has, so the same script measures a
checkout from before a change.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy, ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fts_dist import DeepSpeedStrategy, FinetuningScheduler, FSDPStrategy, FTSCheckpoint
from fts_dist.adapters import StrategyAdapter

SEQUENCE, BATCH, CLASSES = 8, 4, 8


class Block(nn.Module):
    """A pre-norm transformer block: 12 x width^2 weights."""

    def __init__(self, width: int, heads: int = 4) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class Stack(pl.LightningModule):
    def __init__(self, width: int, depth: int, shard: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, CLASSES)
        self.shard = shard

    def configure_model(self) -> None:
        if self.shard and not any(isinstance(m, FSDPModule) for m in self.modules()):
            for block in self.blocks:
                fully_shard(block)
            fully_shard(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-4)


def schedule(depth: int) -> dict[int, dict[str, Any]]:
    """The head, then the top quarter of the blocks, then the next quarter: both transitions add a group of the same
    size, so what the second costs beyond the first is what keeping the first quarter's trained group costs."""
    quarter = max(depth // 4, 1)
    return {
        0: {"params": ["head.*"], "max_transition_epoch": 1},
        1: {"params": [rf"blocks\.{i}\..*" for i in range(depth - quarter, depth)], "max_transition_epoch": 2},
        2: {
            "params": [rf"blocks\.{i}\..*" for i in range(depth - 2 * quarter, depth - quarter)],
            "max_transition_epoch": 3,
        },
    }


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field)).split()[1]) * 1024


def _settle() -> None:
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class AnonymousPeak(threading.Thread):
    """Samples this process's private memory (RssAnon) every millisecond until stopped: VmHWM also counts the page
    cache pages of a mapped checkpoint, which every rank on a node shares."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self._done = _status("RssAnon:"), threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, _status("RssAnon:"))

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, _status("RssAnon:"))


def measure_transitions(records: list[dict[str, Any]]) -> None:
    """Wrap every adapter's ``apply_plan``: time and extra peak resident memory of each transition on this rank."""
    apply_plan = StrategyAdapter.apply_plan

    def measured(self: StrategyAdapter, plan: Any, trainer: pl.Trainer, check_replicas: bool = False) -> None:
        module = trainer.lightning_module
        kept = sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters() if p.requires_grad)
        _settle()
        cuda = torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            cuda_before = torch.cuda.memory_allocated()
        Path("/proc/self/clear_refs").write_text("5")
        before, anonymous, sampler = _status("VmRSS:"), _status("RssAnon:"), AnonymousPeak()
        sampler.start()
        started = time.perf_counter()
        apply_plan(self, plan, trainer, check_replicas)
        anonymous_peak = sampler.stop()
        if cuda:
            torch.cuda.synchronize()
        seconds, peak = time.perf_counter() - started, _status("VmHWM:")
        record = {"depth": plan.depth, "seconds": seconds, "extra_peak": peak - before, "kept": kept}
        record["extra_anonymous_peak"] = anonymous_peak - anonymous
        if cuda:
            record["cuda_before"] = cuda_before
            record["cuda_extra_peak"] = torch.cuda.max_memory_allocated() - cuda_before
            record["cuda_after"] = torch.cuda.memory_allocated()
        records.append(record)

    StrategyAdapter.apply_plan = measured  # type: ignore[method-assign]


class CudaPhaseMeter(pl.Callback):
    """On a GPU: each epoch's (one phase's) ``torch.cuda.max_memory_allocated`` and what stays allocated at its end."""

    def __init__(self) -> None:
        self.phases: list[dict[str, int]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.cuda.reset_peak_memory_stats()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.phases.append({"peak": torch.cuda.max_memory_allocated(), "allocated": torch.cuda.memory_allocated()})


def strategy_for(name: str, stage: int) -> pl.strategies.Strategy:
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if name == "ddp":
        return DDPStrategy(process_group_backend=backend)
    if name == "fsdp2":
        world = int(os.environ.get("WORLD_SIZE", 1))
        return ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1)
    if name == "fsdp1":
        return FSDPStrategy(auto_wrap_policy={Block}, process_group_backend=backend)
    config = {"zero_optimization": {"stage": stage}, "train_micro_batch_size_per_gpu": BATCH}
    return DeepSpeedStrategy(config=config, process_group_backend=backend)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", choices=["single", "ddp", "fsdp2", "fsdp1", "deepspeed"], required=True)
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--depth", type=int, required=True)
    parser.add_argument("--restore", action="store_true", help="restore the best checkpoint at each transition")
    parser.add_argument("--accelerator", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", default="32-true", help="e.g. bf16-mixed (on a GPU)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    records: list[dict[str, Any]] = []
    measure_transitions(records)
    generator = torch.Generator().manual_seed(1)
    samples = 4 * BATCH * world
    data = TensorDataset(
        torch.randn(samples, SEQUENCE, args.width, generator=generator),
        torch.randint(0, CLASSES, (samples,), generator=generator),
    )
    callbacks: list[pl.Callback] = [
        FinetuningScheduler(ft_schedule=schedule(args.depth), epoch_transitions_only=True, restore_best=args.restore)
    ]
    # without restores, no checkpoint file: writing one each epoch would dominate the run
    meter = CudaPhaseMeter() if args.accelerator == "cuda" else None
    callbacks += [meter] if meter else []
    keep = 1 if args.restore else 0
    callbacks.append(FTSCheckpoint(monitor="val_loss", dirpath=out / "checkpoints", save_top_k=keep))
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=world,
        precision=args.precision,
        strategy="auto" if args.strategy == "single" else strategy_for(args.strategy, args.zero_stage),
        max_epochs=3,
        use_distributed_sampler=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        default_root_dir=out,
    )
    loader = DataLoader(data, batch_size=BATCH, sampler=DistributedSampler(data, world, rank, shuffle=False))
    model = Stack(args.width, args.depth, shard=args.strategy == "fsdp2")
    total = sum(p.numel() for p in model.parameters())
    trainer.fit(model, loader, DataLoader(data, batch_size=samples))
    result = {"world": world, "params": total, "transitions": records, "cuda_phases": meter.phases if meter else []}
    (out / f"scaling-rank{trainer.global_rank}.json").write_text(json.dumps(result))
    if world > 1:
        from benchmarks.workers.demo_phases import finish_distributed_worker

        finish_distributed_worker()


if __name__ == "__main__":
    main()
