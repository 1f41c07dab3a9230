"""One rank of a 2-rank run under DDP, FSDP2 or ZeRO-2 (``--strategy``) that a signal stops and the same command
resumes: dropout and Python / numpy noise in every step, each rank seeded differently, and a stateful loader over a
shuffled stateful sampler, so only a resume with every rank's generators and loader position ends bit for bit
where the uninterrupted run does.

``--stop-at WHERE:AT:RANK`` (repeatable) makes rank RANK send itself SIGUSR1 at one place: ``step`` (the training step
whose global step is AT), ``validation`` (epoch AT's validation), ``transition`` (while phase AT begins) or ``save``
(the first checkpoint save of epoch AT). OUT/final-rank{r}.pt gets the whole final weights. ``--checkpoints DIR``
puts the checkpoints elsewhere (a directory each node may see its own copy of).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

import numpy
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from fts_dist import FinetuningScheduler, FTSCheckpoint, FTSEarlyStopping
from fts_dist.checkpoint_io import atomic_torch_save
from tests.distributed.sharded_modules import (
    DeepSpeedRecorder,
    Recorder,
    ShardedRecorder,
    engine_full_state,
    full_state,
)
from tests.distributed.workers.fit_run import build_strategy
from tests.modules import SCHEDULE
from tests.worker_exit import finish_worker

WORLD, BATCH, STEPS = 2, 4, 6
SCRIPT = [1.0, 0.5, 0.9, 0.4, 0.45, 0.3, 0.2, 0.25, 0.15]  # phase 1 from epoch 3, phase 2 from epoch 5


class Noisy:
    """Every step draws from torch (dropout), Python's ``random`` and numpy's global generator."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        x = functional.dropout(x, p=0.25, training=True)
        noise = 1.0 + 0.01 * random.random() + 0.01 * float(numpy.random.rand())
        return functional.cross_entropy(self(x), y) * noise  # type: ignore[operator]


class NoisyDDP(Noisy, Recorder):
    pass


class NoisyFSDP2(Noisy, ShardedRecorder):
    pass


class NoisyZero(Noisy, DeepSpeedRecorder):
    pass


class SignalAt(pl.Callback):
    """Rank ``rank`` sends itself SIGUSR1 at ``where`` (see the module's doc)."""

    def __init__(self, where: str, at: int, rank: int) -> None:
        self.where, self.at, self.rank, self.sent = where, at, rank, False

    def fire(self, trainer: pl.Trainer, where: str, at: int) -> None:
        if (where, at) == (self.where, self.at) and trainer.global_rank == self.rank and not self.sent:
            self.sent = True
            print(f"fts_dist test: rank {self.rank} signals itself in {where} {at}", flush=True)
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scheduler = next(c for c in trainer.callbacks if isinstance(c, FinetuningScheduler))  # type: ignore[attr-defined]
        apply, save = scheduler._apply, trainer.strategy.save_checkpoint

        def transition(plan: Any, *args: Any) -> None:
            self.fire(trainer, "transition", plan.depth)
            apply(plan, *args)

        def saving(*args: Any, **kwargs: Any) -> Any:
            self.fire(trainer, "save", trainer.current_epoch)
            return save(*args, **kwargs)

        scheduler._apply = transition  # type: ignore[method-assign]
        trainer.strategy.save_checkpoint = saving  # type: ignore[method-assign]

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.fire(trainer, "step", trainer.global_step)

    def on_validation_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking:
            self.fire(trainer, "validation", trainer.current_epoch)


def build_model(strategy: str) -> pl.LightningModule:
    common: dict[str, Any] = {"lr": 0.05, "scripted_val_loss": SCRIPT}
    if strategy == "fsdp2":
        return NoisyFSDP2(layout="fsdp2", **common)
    return NoisyZero(**common) if strategy == "zero2" else NoisyDDP(**common)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--strategy", choices=["ddp", "fsdp2", "zero2"], default="ddp")
    parser.add_argument("--max-epochs", type=int, default=7)
    parser.add_argument("--stop-at", action="append", default=[], help="WHERE:AT:RANK")
    parser.add_argument("--checkpoints", default=None, help="the checkpoints' directory (default: OUT)")
    args = parser.parse_args()
    out = Path(args.out)
    checkpoints = Path(args.checkpoints) if args.checkpoints else out
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    random.seed(100 + rank)
    numpy.random.seed(200 + rank)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH * STEPS * WORLD, 4, generator=generator)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    sampler = StatefulDistributedSampler(data, WORLD, rank, shuffle=True, seed=3)
    signals = [SignalAt(w, int(at), int(r)) for w, at, r in (s.split(":") for s in args.stop_at)]
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy=build_strategy(Namespace(reference=False, strategy=args.strategy, offload=False, ddp_options=False)),
        max_epochs=args.max_epochs,
        use_distributed_sampler=False,
        callbacks=[
            *signals,
            FinetuningScheduler(ft_schedule=SCHEDULE, stop_signals="SIGUSR1"),
            FTSEarlyStopping(monitor="val_loss", patience=1),
            FTSCheckpoint(monitor="val_loss", dirpath=checkpoints / "best"),
            ModelCheckpoint(dirpath=checkpoints / "resume", filename="latest", save_last=True),
        ],
        default_root_dir=out,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    model = build_model(args.strategy)
    torch.manual_seed(300 + rank)  # after the model's own seeded init: each rank's dropout masks differ
    resume = sorted(checkpoints.glob("*/last.ckpt"))  # without a shared filesystem, rank 0's choice counts
    if resume and trainer.global_rank == 0:
        print(f"fts_dist test: resuming from {resume}", flush=True)  # tests.reliability.driver.RESUMED_MARK
    trainer.fit(
        model,
        StatefulDataLoader(data, batch_size=BATCH, sampler=sampler),
        DataLoader(data, batch_size=len(data)),
        ckpt_path="last" if resume else None,
    )
    if isinstance(model, ShardedRecorder):
        final = full_state(trainer.strategy.model)
    else:
        final = engine_full_state(model) if isinstance(model, DeepSpeedRecorder) else model.state_dict()
    final = {k: v.clone() for k, v in final.items()}
    atomic_torch_save(
        {"final": final, "depth": trainer.callbacks[len(signals)].curr_depth}, out / f"final-rank{rank}.pt"
    )  # type: ignore[attr-defined]
    finish_worker()


if __name__ == "__main__":
    main()
