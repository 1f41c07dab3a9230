"""Step time of fts_dist under 2-rank DDP (CPU, gloo) against plain Lightning DDP training the same trainable set,
and against finetuning-scheduler 2.14.1 when installed. Prints medians and ratios; asserts nothing.

    python benchmarks/ddp_step_time.py [--repeats 3] [--steps 60]

Each variant runs as its own torchrun launch; step times are taken in the last phase (everything thawed), where
all three train the same parameters, skipping each epoch's first steps.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

WIDTH, DEPTH, BATCH = 512, 6, 64


def build(pl: Any) -> Any:
    class Mlp(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            blocks = [nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU()) for _ in range(DEPTH)]
            self.body = nn.Sequential(*blocks)
            self.head = nn.Linear(WIDTH, 10)
            self.step_times: list[float] = []
            self._t0 = 0.0

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self.head(self.body(x)), y)

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self.current_epoch == self.trainer.max_epochs - 1 and batch_idx >= 5:
                self.step_times.append(time.perf_counter() - self._t0)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self.head(self.body(x)), y), sync_dist=True)

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-3)

    return Mlp


def schedule() -> dict[int, dict[str, Any]]:
    phases = {0: {"params": ["head.*"], "max_transition_epoch": 1}}
    for i, block in enumerate(reversed(range(DEPTH)), start=1):
        phases[i] = {"params": [f"body.{block}.*"], "max_transition_epoch": 1 + i, "lr": 1e-4}
    return phases


def worker(variant: str, steps: int, out: Path) -> None:
    torch.set_num_threads(1)
    if variant == "finetuning-scheduler":
        import finetuning_scheduler as fts
        import lightning.pytorch as pl

        callbacks = [
            fts.FinetuningScheduler(ft_schedule=schedule(), epoch_transitions_only=True),
            fts.FTSCheckpoint(monitor="val_loss", dirpath=out / variant),
        ]
    else:
        import pytorch_lightning as pl

        from fts_dist import FinetuningScheduler, FTSCheckpoint

        callbacks = []
        if variant == "fts_dist":
            callbacks = [
                FinetuningScheduler(ft_schedule=schedule(), epoch_transitions_only=True),
                FTSCheckpoint(monitor="val_loss", dirpath=out / variant),
            ]
    epochs = len(schedule()) + 1
    rank = int(os.environ["RANK"])
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH * steps * 2, WIDTH, generator=generator)
    data = TensorDataset(x, torch.randint(0, 10, (len(x),), generator=generator))
    train = DataLoader(data, batch_size=BATCH, sampler=DistributedSampler(data, 2, rank, shuffle=False))
    model = build(pl)()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=epochs,
        callbacks=callbacks,
        use_distributed_sampler=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=variant != "plain",
        limit_val_batches=1,
        default_root_dir=out,
    )
    trainer.fit(model, train, DataLoader(data, batch_size=BATCH))
    if rank == 0:
        (out / f"{variant}.json").write_text(json.dumps(model.step_times))
    torch.distributed.destroy_process_group()
    os._exit(0)


def launch(variant: str, steps: int, out: Path) -> list[float]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        __file__,
        "--worker",
        variant,
        "--steps",
        str(steps),
        "--out",
        str(out),
    ]
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=900)
    return json.loads((out / f"{variant}.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--worker", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, Path(args.out))
        return
    variants = ["plain", "fts_dist"]
    try:
        import finetuning_scheduler  # noqa: F401

        variants.append("finetuning-scheduler")
    except ImportError:
        print("finetuning-scheduler not installed: pip install 'fts-dist[compat]' to compare with it")
    medians: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):  # interleaved, so machine noise hits every variant alike
            for variant in variants:
                medians[variant].append(statistics.median(launch(variant, args.steps, Path(tmp))) * 1e3)
    base = min(medians["plain"])
    print(
        f"2-rank DDP on CPU, MLP {DEPTH}x{WIDTH}, batch {BATCH}/rank, last phase (all thawed), "
        f"{args.repeats} launches each; per-launch median step time"
    )
    print("| variant | min ms | median ms | ratio to plain (min) |\n|---|---|---|---|")
    for variant, values in medians.items():
        print(f"| {variant} | {min(values):.2f} | {statistics.median(values):.2f} | {min(values) / base:.3f} |")


if __name__ == "__main__":
    main()
