"""One rank of the causal-LM recipe on 2 CPU ranks (``--strategy fsdp2|zero3``): the tiny Llama built on the meta
device (FSDP2) or inside ZeRO-3's partitioning, filled by ``load_pretrained`` from ``--pretrained``, fine-tuned
through the block-wise ``--schedule`` (a transition each epoch), saved to OUT/final.ckpt.

OUT/rank{r}.pt: what each rank held right after loading compared with the file (the largest difference and the
count), the depth reached, and the logits of a fixed batch after training (rank 0)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import ModelParallelStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from fts_dist import DeepSpeedStrategy, FinetuningScheduler, FTSCheckpoint
from fts_dist.checkpoint_io import atomic_torch_save
from fts_dist.examples.causal_lm import CausalLM, TokenData
from tests.worker_exit import finish_worker

FIXED_BATCH = torch.arange(24).reshape(2, 12) * 5 % 96


def whole_weights(module: CausalLM) -> dict[str, torch.Tensor]:
    """Every parameter, whole, on every rank (a collective under both strategies)."""
    from torch.distributed.tensor import DTensor

    named = dict(module.model.named_parameters())
    if any(hasattr(p, "ds_tensor") for p in named.values()):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(named.values())):
            return {name: p.detach().clone() for name, p in named.items()}
    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone() for n, p in named.items()}


class CompareWithFile(pl.Callback):
    def __init__(self, pretrained: Path) -> None:
        self.pretrained = pretrained
        self.result: dict[str, Any] = {}

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        from safetensors.torch import load_file

        stored = load_file(self.pretrained / "model.safetensors")
        held = whole_weights(module)  # type: ignore[arg-type]
        self.result = {
            "loaded": len(module.loaded),  # type: ignore[attr-defined]
            "max_diff": max(float((held[n] - stored[n]).abs().max()) for n in held),
            "names": sorted(held),
        }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--strategy", choices=["fsdp2", "zero3"], required=True)
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--schedule", required=True)
    args = parser.parse_args()
    out, rank = Path(args.out), int(os.environ["RANK"])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.strategy == "fsdp2":
        strategy: Any = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    else:
        config = {
            "zero_optimization": {"stage": 3},
            "zero_force_ds_cpu_optimizer": False,
            "train_micro_batch_size_per_gpu": 4,
            "gradient_clipping": 0.0,
        }
        strategy = DeepSpeedStrategy(config=config, process_group_backend="gloo")
    compare = CompareWithFile(Path(args.pretrained))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_epochs=3,
        callbacks=[
            compare,
            FinetuningScheduler(ft_schedule=args.schedule, epoch_transitions_only=True),
            FTSCheckpoint(monitor="val_loss", dirpath=out / "best"),
        ],
        default_root_dir=out,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    model = CausalLM(pretrained=args.pretrained, lr=1e-2)
    trainer.fit(model, datamodule=TokenData(batch_size=4))
    trainer.save_checkpoint(out / "final.ckpt")
    model.eval()
    with torch.no_grad():
        logits = model(FIXED_BATCH).detach().clone()  # a collective: every rank runs it
    depth = next(c for c in trainer.callbacks if isinstance(c, FinetuningScheduler)).curr_depth  # type: ignore[attr-defined]
    atomic_torch_save({**compare.result, "depth": depth, "logits": logits}, out / f"rank{rank}.pt")
    finish_worker()


if __name__ == "__main__":
    main()
