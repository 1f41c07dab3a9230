"""The causal-LM recipe (``examples/llm/``): a Llama-style ``transformers`` model, fine-tuned block by block.

:class:`CausalLM` builds its network on the meta device (no memory, any size), so the block-wise schedule can be
generated and checked before anything is allocated. ``configure_model`` then shards it (FSDP2: one unit per decoder
layer and one for the rest, bf16 compute with fp32 reductions on GPUs, activation checkpointing) or, under
DeepSpeed ZeRO-3, builds it again inside DeepSpeed's partitioning context, and :func:`fts_dist.load_pretrained`
fills each rank's shards from the pretrained safetensors (each rank reads only what it holds). Under DDP or on one
device the model is materialised whole and loaded the same way.

:class:`TokenData` is a stand-in corpus (token sequences with a learnable next-token rule); any datamodule whose
batches are ``{"input_ids": LongTensor[batch, seq]}`` takes its place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from fts_dist.export import load_pretrained

TINY_LLAMA = {  # a config made here: the tests' size
    "model_type": "llama",
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": True,
}


def build_config(config: dict[str, Any] | str) -> Any:
    """A ``transformers`` config from a dict (``model_type`` names the family) or a pretrained directory."""
    from transformers import AutoConfig

    if isinstance(config, str):
        return AutoConfig.from_pretrained(config)
    options = dict(config)
    return AutoConfig.for_model(options.pop("model_type"), **options)


class CausalLM(pl.LightningModule):
    """A causal LM from ``config`` (a dict or a pretrained directory), filled from ``pretrained`` safetensors.

    Args:
        config: the model's ``transformers`` config: a dict with ``model_type``, or a directory with config.json.
        pretrained: safetensors weights to start from (a file or directory; a Hugging Face model directory);
            None: the config's random initialisation.
        lr: phase 0's learning rate (AdamW).
        bf16: under FSDP2, compute in bf16 and reduce gradients in fp32 (on GPUs).
        activation_checkpointing: recompute each decoder layer's activations in the backward pass.
    """

    def __init__(
        self,
        config: dict[str, Any] | str = TINY_LLAMA,
        pretrained: str | None = None,
        lr: float = 1e-3,
        bf16: bool = False,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.hf_config = build_config(config)
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):  # names and shapes only: schedules are generated and checked against them
            self.model = AutoModelForCausalLM.from_config(self.hf_config)
        self.pretrained, self.lr, self.bf16 = pretrained, lr, bf16
        self.activation_checkpointing = activation_checkpointing
        self.loaded: list[str] = []

    @override
    def configure_model(self) -> None:
        if not any(p.is_meta for p in self.model.parameters()):
            return  # configured already (a second fit)
        strategy = type(self.trainer.strategy).__name__
        if strategy == "ModelParallelStrategy":
            self._shard_with_fsdp2()
        elif strategy == "DeepSpeedStrategy" and _zero_stage(self.trainer.strategy) == 3:
            from transformers import AutoModelForCausalLM

            self.model = AutoModelForCausalLM.from_config(self.hf_config)  # inside DeepSpeed's zero.Init: partitioned
        if self.activation_checkpointing:
            self.model.gradient_checkpointing_enable({"use_reentrant": False})
        device = self.trainer.strategy.root_device
        if self.pretrained:
            self.loaded = load_pretrained(self.model, self.pretrained, device=device, init_buffers=self._rotary).loaded
        elif any(p.is_meta for p in self.model.parameters()):
            self.model.to_empty(device=device)
            self._rotary(self.model)
            self.model.init_weights()

    def _shard_with_fsdp2(self) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        assert self.device_mesh is not None  # ModelParallelStrategy set it
        mesh = self.device_mesh["data_parallel"]
        options: dict[str, Any] = {"mesh": mesh}
        if self.bf16:
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in self.model.model.layers:  # one unit per decoder layer: a phase thaws whole units
            fully_shard(layer, **options)
        fully_shard(self.model, **options)  # the rest: embeddings, final norm, head

    @staticmethod
    def _rotary(model: Any) -> None:
        """The rotary embedding's frequencies, computed again (no checkpoint holds these buffers)."""
        rotary = model.model.rotary_emb
        model.model.rotary_emb = type(rotary)(rotary.config).to(next(model.parameters()).device)

    @override
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits

    @override
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        self.log("train_loss", loss, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self.model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        self.log("val_loss", loss, sync_dist=True, prog_bar=True)

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr, weight_decay=0.0)


def _zero_stage(strategy: Any) -> int:
    return int(strategy.config.get("zero_optimization", {}).get("stage", 0))


class _Sequences(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, vocab_size: int, seq_len: int, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, vocab_size, (count, 1), generator=generator)
        steps = torch.randint(1, 4, (count, 1), generator=generator)
        self.tokens = (starts + steps * torch.arange(seq_len)) % vocab_size  # each sequence counts by its own step

    def __len__(self) -> int:
        return len(self.tokens)

    @override
    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[index]}


class TokenData(pl.LightningDataModule):
    """Token sequences with a next-token rule to learn: a stand-in for a tokenised corpus."""

    def __init__(self, vocab_size: int = 96, seq_len: int = 32, train: int = 64, val: int = 16, batch_size: int = 8):
        super().__init__()
        self.vocab_size, self.seq_len, self.batch_size = vocab_size, seq_len, batch_size
        self.sizes = (train, val)

    @override
    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(_Sequences(self.vocab_size, self.seq_len, self.sizes[0], 0), batch_size=self.batch_size)

    @override
    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(_Sequences(self.vocab_size, self.seq_len, self.sizes[1], 1), batch_size=self.batch_size)


def save_pretrained_tiny(directory: str | Path, config: dict[str, Any] = TINY_LLAMA, seed: int = 0) -> Path:
    """A randomly initialised model of ``config`` saved as Hugging Face does (config.json, model.safetensors): a
    stand-in for downloaded pretrained weights."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(build_config(config)).save_pretrained(directory)
    return Path(directory)
