"""A tiny LightningModule, definable under either Lightning namespace, that records what each epoch trains.

The compat tests build it under ``lightning.pytorch`` for finetuning-scheduler and under ``pytorch_lightning``
for fts_dist, so both run the very same code.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# names in named_parameters() order: layers.0.weight, layers.0.bias, ..., layers.3.bias
SCHEDULE: dict[int, dict[str, Any]] = {
    0: {"params": ["layers.3.weight", "layers.3.bias"]},
    1: {"params": ["layers.2.*"], "lr": 0.05},
    2: {"params": ["layers.[01].weight", "layers.[01].bias"], "lr": 0.02},
}
# fts_dist's own keys: phase 2 freezes layers.1 again (one of phase 1's two layers, so its group keeps layers.2;
# a whole layer, so FSDP1 units per layer stay uniform) and halves the earlier groups' learning rates
REFREEZE_SCHEDULE: dict[int, dict[str, Any]] = {
    0: SCHEDULE[0],
    1: {"params": ["layers.[12].*"], "lr": 0.05},
    2: {"params": ["layers.0.*"], "lr": 0.02, "freeze": ["layers.1.*"], "scale_lrs": 0.5},
}

# finetuning-scheduler 2.x's keys: phase 1 builds a new optimizer (SGD, other settings, fresh state) and a StepLR from
# the current rates; phase 2 a CosineAnnealingLR from the groups' initial rates. SGD keeps the update linear in the
# gradients, so ranks and a one-process reference agree to rounding.
REINIT_SCHEDULE: dict[int, dict[str, Any]] = {
    0: SCHEDULE[0],
    1: {
        **SCHEDULE[1],
        "new_optimizer": {
            "optimizer_init": {
                "class_path": "torch.optim.SGD",
                "init_args": {"lr": 0.02, "momentum": 0.5, "nesterov": True},
            }
        },
        "new_lr_scheduler": {
            "lr_scheduler_init": {
                "class_path": "torch.optim.lr_scheduler.StepLR",
                "init_args": {"step_size": 1, "gamma": 0.5},
            },
            "use_current_optimizer_pg_lrs": True,
        },
    },
    2: {
        **SCHEDULE[2],
        "new_lr_scheduler": {
            "lr_scheduler_init": {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR", "init_args": {"T_max": 4}}
        },
    },
}


def loaders(batches: int = 4, batch_size: int = 8, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * batch_size, 4, generator=generator)
    y = (x.sum(dim=1) > 0).long()
    dataset = TensorDataset(x, y)
    return DataLoader(dataset, batch_size=batch_size), DataLoader(dataset, batch_size=batch_size * batches)


def define_module(pl: ModuleType) -> type:
    """Return a LightningModule class built on ``pl`` (``pytorch_lightning`` or ``lightning.pytorch``)."""

    class Recorder(pl.LightningModule):  # type: ignore[name-defined, misc]
        """``scripted_val_loss[e]`` (when given) is logged as ``val_loss`` at epoch ``e``, to drive early stopping
        deterministically; ``scheduler`` is a factory ``optimizer -> scheduler`` or an lr_scheduler config."""

        def __init__(
            self,
            lr: float = 0.1,
            scripted_val_loss: list[float] | None = None,
            scheduler: Any = None,
            optimizer: Any = None,
            batchnorm: bool = False,
            optimize_all: bool = False,
        ):
            super().__init__()
            torch.manual_seed(7)
            self.layers = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2))
            self.norm = nn.BatchNorm1d(8) if batchnorm else None  # after layers.0 (its parameters: norm.*)
            self.optimize_all = optimize_all  # configure_optimizers passes every parameter, frozen ones too
            self.lr = lr
            self.scripted_val_loss = scripted_val_loss
            self.scheduler = scheduler
            self.optimizer_factory = optimizer
            self.records: list[dict[str, Any]] = []
            self.steps = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.norm is None:
                return self.layers(x)
            return self.layers[1:](self.norm(self.layers[0](x)))

        def on_train_epoch_start(self) -> None:
            optimizer = self.trainer.optimizers[0]
            self.records.append(
                {
                    "epoch": self.current_epoch,
                    "trainable": self.trainable_names(),
                    "lrs": [round(g["lr"], 12) for g in optimizer.param_groups],
                    "weights": self.whole_weights(),
                }
            )

        def trainable_names(self) -> list[str]:
            return [n for n, p in self.named_parameters() if p.requires_grad]

        def whole_weights(self) -> dict[str, torch.Tensor]:
            """Every weight, whole (subclasses gather what a strategy shards)."""
            return {k: v.detach().clone() for k, v in self.state_dict().items()}

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.steps += 1
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            loss = nn.functional.cross_entropy(self(x), y)
            if self.scripted_val_loss is not None:
                epoch = min(self.current_epoch, len(self.scripted_val_loss) - 1)
                loss = torch.tensor(self.scripted_val_loss[epoch], device=self.device)  # NCCL reduces no CPU tensor
            self.log("val_loss", loss, sync_dist=True)

        def configure_optimizers(self) -> Any:
            params = [p for p in self.parameters() if p.requires_grad or self.optimize_all]
            if self.optimizer_factory is not None:
                optimizer = self.optimizer_factory(params, self.lr)
            else:
                optimizer = torch.optim.SGD(params, lr=self.lr, momentum=0.9)
            if self.scheduler is None:
                return optimizer
            config = self.scheduler(optimizer)
            if not isinstance(config, dict):
                config = {"scheduler": config}
            return {"optimizer": optimizer, "lr_scheduler": config}

    return Recorder


def depths_by_epoch(records: list[dict[str, Any]]) -> list[int]:
    """The phase each recorded epoch trained in, read off the number of optimizer groups."""
    return [len(r["lrs"]) - 1 for r in records]
