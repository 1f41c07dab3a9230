"""The test module (``tests.modules.Recorder``) sharded for FSDP2 / HSDP / tensor parallelism / FSDP1 / DeepSpeed,
and a one-process reference that computes exactly what FSDP2's bf16 mixed precision computes on several ranks."""

from __future__ import annotations

import copy
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp._common_utils import clean_tensor_name
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from tests.modules import define_module

Recorder = define_module(pl)


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Collective: every rank gets the whole, unsharded state dict (original parameter names)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=False)
    return {clean_tensor_name(k): v.detach().clone() for k, v in get_model_state_dict(model, options=options).items()}


class ShardedRecorder(Recorder):
    """Recorder whose ``configure_model`` applies FSDP2 (``layout="fsdp2"``), HSDP (``"hsdp"``: replicated across
    ranks, one shard) or tensor parallelism (``"tp"``); under FSDP1 it leaves wrapping to the strategy. Records hold
    gathered, whole weights.

    ``bf16``: mixed precision; ``offload``: CPU offload; ``own_roots``: each layer its own FSDP root (no wrapper
    around them, so a frozen layer keeps its unsharded weights after forward); ``plain``: a parameter left out of
    sharding (a plain tensor beside DTensors)."""

    def __init__(
        self,
        *args: Any,
        layout: str = "fsdp1",
        bf16: bool = False,
        offload: bool = False,
        own_roots: bool = False,
        plain: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.layout, self.bf16, self.offload, self.own_roots, self.plain = layout, bf16, offload, own_roots, plain

    def configure_model(self) -> None:
        if self.layout == "tp":
            self._parallelize_tensors()
            return
        if self.layout not in ("fsdp2", "hsdp") or any(isinstance(m, FSDPModule) for m in self.modules()):
            return
        world = self.device_mesh.size()
        mesh = (
            self.device_mesh["data_parallel"]
            if self.layout == "fsdp2"
            else init_device_mesh("cpu", (world, 1), mesh_dim_names=("replicate", "shard"))
        )
        options: dict[str, Any] = {"mesh": mesh}
        if self.bf16:
            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if self.offload:
            options["offload_policy"] = CPUOffloadPolicy(pin_memory=False)  # pinning needs an accelerator
        params = dict(self.named_parameters())
        for index, layer in enumerate(self.layers):
            ignored = {params[self.plain]} if self.plain and self.plain.startswith(f"layers.{index}.") else None
            fully_shard(layer, ignored_params=ignored, **options)
        if not self.own_roots:
            fully_shard(self.layers, **options)

    def _parallelize_tensors(self) -> None:
        """Megatron-style tensor parallelism over all ranks: layers 0 and 2 split their outputs, 1 and 3 their
        inputs, so 1's and 3's biases stay whole (replicated) on every rank."""
        if isinstance(self.layers[0].weight, DTensor):
            return
        plan = {"0": ColwiseParallel(), "1": RowwiseParallel(), "2": ColwiseParallel(), "3": RowwiseParallel()}
        parallelize_module(self.layers, self.device_mesh["tensor_parallel"], plan)

    def trainable_names(self) -> list[str]:  # FSDP1 inserts wrapper names: the original ones
        return [clean_tensor_name(n) for n in super().trainable_names()]

    def whole_weights(self) -> dict[str, torch.Tensor]:
        return full_state(self.trainer.strategy.model)


class PerRankReference(Recorder):
    """One process computing what ``world`` data-parallel ranks compute: each rank's share of the global batch
    runs forward and backward (in ``dtype``: bf16 is what FSDP2's ``MixedPrecisionPolicy(bf16, reduce fp32)``
    computes), gradients are cast to fp32 and averaged, and the optimizer steps the fp32 weights. With Adam this,
    not one mean over the whole batch, is what the ranks compute to the last bit (Adam magnifies the rounding where
    its variance is small)."""

    def __init__(self, *args: Any, world: int = 2, dtype: torch.dtype = torch.bfloat16, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.world, self.compute_dtype = world, dtype
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.steps += 1
        optimizer = self.optimizers()
        trainable = [p for p in self.layers.parameters() if p.requires_grad]
        total = [torch.zeros_like(p) for p in trainable]
        for x, y in zip(*(t.chunk(self.world) for t in batch), strict=True):
            shadow = copy.deepcopy(self.layers).to(self.compute_dtype)
            nn.functional.cross_entropy(shadow(x.to(self.compute_dtype)), y).backward()
            for sum_, p in zip(total, [p for p in shadow.parameters() if p.requires_grad], strict=True):
                sum_ += p.grad.float()
        for p, sum_ in zip(trainable, total, strict=True):
            p.grad = sum_ / self.world
        optimizer.step()
        optimizer.zero_grad()


def engine_full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Collective: the whole state dict of a module DeepSpeed may partition (ZeRO-3 gathers each parameter)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}


class DeepSpeedRecorder(Recorder):
    """Recorder whose records hold the whole weights under every ZeRO stage."""

    def whole_weights(self) -> dict[str, torch.Tensor]:
        return engine_full_state(self)
