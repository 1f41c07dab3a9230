"""A fine-tuning run that resumes from the newest last.ckpt under OUT when there is one (1 process, or a DDP rank).

Faults are injected from the command line: ``--kill-on-save N`` writes half of the N-th checkpoint of this process
and SIGKILLs it; ``--kill-on-restore N`` SIGKILLs the process in its N-th transition restore, after the weights
are loaded; ``--die-at-epoch E`` kills (``--how kill``) or raises in (``--how raise``) rank ``--rank`` at the start
of epoch E, only on a torchrun job's first attempt. OUT/final-rank{r}.pt is written when training ends.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import DDPStrategy
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from fts_dist import FinetuningScheduler, FTSCheckpoint, FTSEarlyStopping
from fts_dist.adapters import StrategyAdapter
from fts_dist.checkpoint_io import atomic_torch_save
from fts_dist.runtime.elastic import init_process_group_for_attempt
from tests.modules import SCHEDULE, define_module
from tests.worker_exit import finish_worker

Recorder = define_module(pl)
BATCH, STEPS = 4, 12
# phase 1 from epoch 3, phase 2 from epoch 5; both transitions restore a best checkpoint
SCRIPT = [1.0, 0.5, 0.9, 0.4, 0.45, 0.3, 0.2, 0.25, 0.15]


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def inject_kill_on_save(nth: int) -> None:
    real_save, calls = torch.save, [0]

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == nth and not isinstance(f, io.BytesIO):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            die()
        real_save(obj, f, *args, **kwargs)

    torch.save = save


def inject_kill_on_restore(nth: int) -> None:
    real_restore, calls = StrategyAdapter.load_checkpoint_state, [0]

    def restore(self: StrategyAdapter, path: str, phases: Any, trainer: pl.Trainer) -> None:
        calls[0] += 1
        real_restore(self, path, phases, trainer)
        if calls[0] == nth:
            die()

    StrategyAdapter.load_checkpoint_state = restore  # type: ignore[method-assign]


class DieAtEpoch(pl.Callback):
    def __init__(self, epoch: int, rank: int, how: str) -> None:
        self.epoch, self.rank, self.how = epoch, rank, how

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if trainer.current_epoch == self.epoch and trainer.global_rank == self.rank and first_attempt:
            if self.how == "raise":
                raise RuntimeError(f"planted failure on rank {self.rank}")
            die()


class SlowSteps(pl.Callback):
    """Spreads each epoch over time, so that kills at random moments land mid-epoch as often as at its end."""

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--kill-on-save", type=int, default=0)
    parser.add_argument("--kill-on-restore", type=int, default=0)
    parser.add_argument("--die-at-epoch", type=int, default=-1)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--how", choices=["kill", "raise"], default="kill")
    parser.add_argument("--stop-signals", default=None, help="FinetuningScheduler(stop_signals=...)")
    parser.add_argument("--stateful", action="store_true", help="a StatefulDataLoader: mid-epoch resumes exactly")
    args = parser.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)
    if args.kill_on_save:
        inject_kill_on_save(args.kill_on_save)
    if args.kill_on_restore:
        inject_kill_on_restore(args.kill_on_restore)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH * STEPS * args.world, 4, generator=generator)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))  # torchrun, or Lightning's launcher
    sampler = DistributedSampler(data, args.world, rank, shuffle=False)
    callbacks: list[Any] = [
        FinetuningScheduler(ft_schedule=SCHEDULE, stop_signals=args.stop_signals),
        FTSEarlyStopping(monitor="val_loss", patience=1),
        FTSCheckpoint(monitor="val_loss", dirpath=out / "best"),
        ModelCheckpoint(dirpath=out / "resume", filename="latest", save_last=True),
        SlowSteps(),
    ]
    if args.die_at_epoch >= 0:
        callbacks.append(DieAtEpoch(args.die_at_epoch, args.rank, args.how))
    init_process_group_for_attempt("gloo")  # torchrun: a fresh rendezvous namespace for each elastic attempt
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.world,
        strategy=DDPStrategy(process_group_backend="gloo") if args.world > 1 else "auto",
        max_epochs=args.max_epochs,
        use_distributed_sampler=False,
        callbacks=callbacks,
        default_root_dir=out,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    model = Recorder(lr=0.05, scripted_val_loss=SCRIPT)
    resume = sorted(out.glob("*/last.ckpt"))  # resume/ each epoch; best/ when a signal stopped the run
    if resume and trainer.global_rank == 0:
        print(f"fts_dist test: resuming from {resume}", flush=True)  # tests.reliability.driver.RESUMED_MARK
    trainer.fit(
        model,
        (StatefulDataLoader if args.stateful else DataLoader)(data, batch_size=BATCH, sampler=sampler),
        DataLoader(data, batch_size=len(data)),
        ckpt_path="last" if resume else None,  # the newest of them
    )
    final = {k: v.clone() for k, v in model.state_dict().items()}
    atomic_torch_save({"final": final, "depth": callbacks[0].curr_depth}, out / f"final-rank{trainer.global_rank}.pt")
    finish_worker()


if __name__ == "__main__":
    main()
