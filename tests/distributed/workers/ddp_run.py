"""One rank of a 2-process DDP fine-tuning run on CPU (gloo); writes what it saw to OUT/rank{r}.pt.

Launched by torchrun, by Lightning's own launcher (``--launcher lightning``: rank 0 runs this file and Lightning
starts rank 1 as a copy), or as a single-process reference over the same global batches (``--reference``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from fts_dist import FinetuningScheduler, FTSCheckpoint, FTSEarlyStopping
from fts_dist.adapters import StrategyAdapter, register_adapter
from tests.modules import SCHEDULE, define_module
from tests.worker_exit import finish_worker

Recorder = define_module(pl)
BATCH, STEPS, WORLD = 4, 3, 2
EPOCH_SCHEDULE = {d: {**p, "max_transition_epoch": e} for (d, p), e in zip(SCHEDULE.items(), (1, 3, 3), strict=True)}
SCRIPTS = {
    "early-stopping": [1.0, 0.5, 0.9, 0.4, 0.45, 0.3, 0.2],  # phase 1 from epoch 3, phase 2 from epoch 5
    # phase 1 never beats epoch 1: phase 2 (epoch 4) restores a checkpoint with fewer optimizer groups
    "early-stopping-stale": [1.0, 0.5, 0.9, 0.95, 0.4, 0.3, 0.2],
}


def dataset() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH * STEPS * WORLD, 4, generator=generator)
    return TensorDataset(x, (x[:, 0] > 0).long())


def global_batches(data: TensorDataset) -> TensorDataset:
    """Reorder so that batch i of size WORLD*BATCH holds exactly what every rank sees at its step i."""
    per_rank = [list(DistributedSampler(data, WORLD, r, shuffle=False)) for r in range(WORLD)]
    order = [i for step in range(STEPS) for r in range(WORLD) for i in per_rank[r][step * BATCH : (step + 1) * BATCH]]
    return TensorDataset(*(t[order] for t in data.tensors))


class PlantMismatch(pl.Callback):
    """Corrupts rank 1 just before the first transition, to prove the replica check catches it."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == 1 and trainer.current_epoch == 1:
            with torch.no_grad():
                pl_module.layers[0].weight.add_(1.0)


class RecordDDPWrapper(pl.Callback):
    """At the end of training, before Lightning unwraps the model: which options and parameters DDP has."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wrapped = trainer.strategy.model
        if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
            pl_module.ddp_wrapper = {
                "bucket_bytes_cap": wrapped.bucket_bytes_cap,
                "static_graph": wrapped.static_graph,
                "gradient_as_bucket_view": wrapped.gradient_as_bucket_view,
                "synced": sorted(n.removeprefix("module.") for n, p in wrapped.named_parameters() if p.requires_grad),
            }


class RaiseOnRankOne(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == 1 and trainer.current_epoch == 1:
            raise RuntimeError("planted failure on rank 1")


def scheduler_factory(name: str) -> Any:
    if name == "steplr":
        return lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    return None


def optimizer_factory(args: argparse.Namespace) -> Any:
    if args.optimizer == "zero" and not args.reference:
        return lambda params, lr: ZeroRedundancyOptimizer(params, torch.optim.SGD, lr=lr, momentum=0.9)
    if args.optimizer == "oss" and not args.reference:
        from fairscale.optim import OSS

        return lambda params, lr: OSS(params, torch.optim.SGD, lr=lr, momentum=0.9)
    return None  # the reference trains plain SGD: ZeRO must compute the very same update


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--launcher", choices=["torchrun", "lightning"], default="torchrun")
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--mode", choices=["epochs", *SCRIPTS], default="epochs")
    parser.add_argument("--scheduler", default="none")
    parser.add_argument("--optimizer", choices=["sgd", "zero", "oss"], default="sgd")
    parser.add_argument("--naive", action="store_true", help="thaw without the DDP adapter (expected to diverge)")
    parser.add_argument("--plant", choices=["none", "mismatch", "raise", "unused"], default="none")
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--ddp-options", action="store_true", help="non-default DDP options that must survive")
    args = parser.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)
    if args.naive:
        register_adapter(DDPStrategy, StrategyAdapter)

    model = Recorder(
        lr=0.05,
        scheduler=scheduler_factory(args.scheduler),
        scripted_val_loss=SCRIPTS.get(args.mode),
    )
    schedule = EPOCH_SCHEDULE if args.mode == "epochs" else SCHEDULE
    if args.plant == "unused":  # a thawed layer that forward never calls
        model.spare = torch.nn.Linear(2, 2)
        schedule = {**schedule, 1: {**schedule[1], "params": [*schedule[1]["params"], "spare.*"]}}
    callbacks: list[Any] = [
        FinetuningScheduler(
            ft_schedule=schedule,
            epoch_transitions_only=args.mode == "epochs",
            check_replicas=not args.naive,
            restore_best=args.plant != "mismatch",
        ),  # a restore would heal the planted fault
        FTSCheckpoint(monitor="val_loss", dirpath=out / "ckpts"),
    ]
    callbacks.append(RecordDDPWrapper())
    if args.mode in SCRIPTS:
        callbacks.append(FTSEarlyStopping(monitor="val_loss", patience=1))
    # planted faults run before the scheduler's hook, so they hit the transition at epoch 1
    callbacks = {"mismatch": [PlantMismatch()], "raise": [RaiseOnRankOne()]}.get(args.plant, []) + callbacks
    data = dataset()
    if args.reference:
        strategy: Any = "auto"
        train = DataLoader(global_batches(data), batch_size=BATCH * WORLD)
        devices = 1
    else:
        options = (
            {"bucket_cap_mb": 1, "gradient_as_bucket_view": True, "static_graph": True} if args.ddp_options else {}
        )
        strategy = DDPStrategy(process_group_backend="gloo", **options)
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
        train = DataLoader(data, batch_size=BATCH, sampler=DistributedSampler(data, WORLD, rank, shuffle=False))
        devices = WORLD
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        num_nodes=1,
        strategy=strategy,
        max_epochs=args.max_epochs,
        use_distributed_sampler=False,
        callbacks=callbacks,
        default_root_dir=out,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    trainer.fit(model, train, DataLoader(data, batch_size=len(data)))
    result = {"records": model.records, "final": {k: v.clone() for k, v in model.state_dict().items()}}
    result["ddp"] = getattr(model, "ddp_wrapper", None)
    torch.save(result, out / f"rank{trainer.global_rank}{'-reference' if args.reference else ''}.pt")
    finish_worker()


if __name__ == "__main__":
    main()
