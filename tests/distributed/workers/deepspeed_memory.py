"""One rank of an 8-phase DeepSpeed run (a head, then one of 7 layers per phase, AdamW): after every transition,
how many ZeRO optimizers are alive (after ``gc.collect``) and the bytes of fp32 masters and optimizer
state it holds; at every rebuild of the ZeRO optimizer, the bytes it copied to the host and the bytes it handed to
the new optimizer by reference. Writes OUT/memory-rank{r}.json."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.core.optimizer import LightningOptimizer
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

from fts_dist import DeepSpeedStrategy, FinetuningScheduler, FTSCheckpoint
from fts_dist.adapters.deepspeed import engine as zero_engine
from fts_dist.adapters.deepspeed.engine import state_bytes
from fts_dist.memory import meta_device, plan_memory
from tests.worker_exit import finish_worker

ZERO_OPTIMIZERS = (DeepSpeedZeroOptimizer, DeepSpeedZeroOptimizer_Stage3)

LAYERS, WIDTH = 7, 192


class Tower(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(*(nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)))
        self.head = nn.Linear(WIDTH, 5)  # 5 does not split over 2 ranks: ZeRO-3 pads the last partition

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-3)


class MemoryMeter(pl.Callback):
    """Runs after the scheduler's hook: what the rank holds once each phase's transition is done."""

    def __init__(self) -> None:
        self.live_optimizers: list[int] = []  # ZeRO optimizers alive after each transition: the old ones let go
        self.state: list[dict[str, int]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        gc.collect()  # what is still alive is still referenced
        live = [o for o in gc.get_objects() if isinstance(o, ZERO_OPTIMIZERS) and not isinstance(o, LightningOptimizer)]
        self.live_optimizers.append(len(live))  # Lightning's wrapper is a subclass instance sharing its state

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainable = sum(
            p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in pl_module.parameters() if p.requires_grad
        )
        engine = trainer.strategy.model
        flats = sum(flat.nbytes for _, flat in zero_engine.flat_partitions(engine))
        self.state.append({"bytes": state_bytes(engine), "flats": flats, "trainable": trainable})


def count_rebuild_bytes(rebuilds: list[dict[str, int]]) -> None:
    """Record, for every rebuild, the bytes of the host snapshot and of the partitions and state handed over."""
    snapshot, hand_over = zero_engine._snapshot, zero_engine._hand_over_partitions

    def tensor_bytes(values: Any) -> int:
        return sum(v.nbytes for v in values if torch.is_tensor(v) and v.dim() > 0)

    def counted_snapshot(*args: Any, **kwargs: Any) -> Any:
        saved = snapshot(*args, **kwargs)
        rebuilds.append({"host": sum(tensor_bytes(t.values()) for g in saved for _, t in g.params)})
        return saved

    def counted_hand_over(*args: Any, **kwargs: Any) -> Any:
        handed = hand_over(*args, **kwargs)
        partitions = [(master, state) for h in handed for _, master, state in h.partitions]
        rebuilds[-1]["handed_state"] = sum(tensor_bytes(state.values()) for _, state in partitions)
        rebuilds[-1]["handed_masters"] = sum(master.nbytes for master, _ in partitions if master is not None)
        return handed

    zero_engine._snapshot, zero_engine._hand_over_partitions = counted_snapshot, counted_hand_over


def count_checkpoint_reads(reads: dict[str, int]) -> None:
    """Count the checkpoint files this rank read whole into its memory and the ones it mapped, by kind."""
    load = torch.load

    def counted(path: Any, *args: Any, **kwargs: Any) -> Any:
        kind = "model" if str(path).endswith("model_states.pt") else "optimizer" if "optim_states" in str(path) else ""
        if kind:
            key = f"{kind} {'mapped' if kwargs.get('mmap') else 'read'}"
            reads[key] = reads.get(key, 0) + 1
        return load(path, *args, **kwargs)

    torch.load = counted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--stage", type=int, default=3)
    args = parser.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)
    schedule = {0: {"params": ["head.*"], "max_transition_epoch": 1}}
    for phase in range(1, LAYERS + 1):
        schedule[phase] = {"params": [f"layers.{LAYERS - phase}.*"], "max_transition_epoch": phase + 1, "lr": 1e-3}
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(64, WIDTH, generator=generator), torch.randint(0, 5, (64,), generator=generator))
    meter = MemoryMeter()
    rebuilds: list[dict[str, int]] = []
    count_rebuild_bytes(rebuilds)
    reads: dict[str, int] = {}
    count_checkpoint_reads(reads)
    config = {"zero_optimization": {"stage": args.stage}, "train_micro_batch_size_per_gpu": 8}
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world,
        strategy=DeepSpeedStrategy(config=config, process_group_backend="gloo"),
        max_epochs=LAYERS + 1,
        use_distributed_sampler=False,
        callbacks=[
            FinetuningScheduler(ft_schedule=schedule, epoch_transitions_only=True),
            FTSCheckpoint(monitor="val_loss", dirpath=out / "ckpts"),
            meter,
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        default_root_dir=out,
    )
    loader = DataLoader(data, batch_size=8, sampler=DistributedSampler(data, world, rank, shuffle=False))
    trainer.fit(Tower(), loader, DataLoader(data, batch_size=64))
    with meta_device():  # the plan made before launch, for the same model, schedule and world
        plan = plan_memory(schedule, Tower(), "deepspeed", world, zero_stage=args.stage)
    planned = [phase.bytes_per_rank for phase in plan.phases]
    result = {
        "world": world,
        "live_optimizers": meter.live_optimizers,
        "state": meter.state,
        "rebuilds": rebuilds,
        "reads": reads,
    }
    result["plan"] = planned
    (out / f"memory-rank{trainer.global_rank}.json").write_text(json.dumps(result))
    finish_worker()


if __name__ == "__main__":
    main()
