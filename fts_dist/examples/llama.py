"""A Llama-style causal language model from plain keyword arguments, for ``fts-dist schedule plan`` and tests.

``transformers``' ``LlamaForCausalLM`` takes a config object; the command line gives JSON. This wrapper takes the
config's keyword arguments, so a 70B shape plans from the meta device in a second:

    fts-dist schedule plan schedule.yaml --model fts_dist.examples.llama:LlamaLike --strategy fsdp2 \\
        --world-size 16 --init-args '{"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256}'
"""

from __future__ import annotations

from typing import Any

import torch
from typing_extensions import override

LLAMA_70B = dict(
    hidden_size=8192,
    intermediate_size=28672,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=8,
    vocab_size=128256,
)


class LlamaLike(torch.nn.Module):
    """``LlamaForCausalLM`` built from ``LlamaConfig(**config)``; its parameters are the causal LM's, under
    ``model.``."""

    def __init__(self, **config: Any) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM  # the demo extra

        self.model = LlamaForCausalLM(LlamaConfig(**config))

    @override
    def forward(self, input_ids: torch.Tensor) -> Any:
        return self.model(input_ids=input_ids).logits
