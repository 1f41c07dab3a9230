"""``fts_dist.FSDPStrategy``: Lightning's FSDPStrategy (FSDP1), also on a CPU accelerator."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.distributed.fsdp import FullyShardedDataParallel
from typing_extensions import override

from fts_dist.errors import FTSConfigError


class FSDPStrategy(pl.strategies.FSDPStrategy):
    """Lightning's :class:`~pytorch_lightning.strategies.FSDPStrategy`, used exactly like it, that also runs on a
    CPU accelerator with gloo.

    Lightning refuses FSDP on CPU, and FSDP itself, given no ``device_id``, looks for a CUDA device. On CPU this
    subclass wraps the model with ``device_id=torch.device("cpu")``; elsewhere it is Lightning's strategy unchanged.
    Checkpoints default to ``state_dict_type="sharded"`` (each rank writes and reads its own shards, which is what
    phase transitions want); a full state dict on CPU crashed in ``state_dict()`` (SIGSEGV, torch 2.13) and is
    refused there.

    It takes Lightning's arguments; ``state_dict_type`` is ``"sharded"`` unless you pass ``"full"`` (GPU only).

    Example::

        from pytorch_lightning import Trainer
        from fts_dist import FinetuningScheduler, FSDPStrategy
        trainer = Trainer(accelerator="cpu", devices=2, strategy=FSDPStrategy(auto_wrap_policy={MyBlock}),
                          callbacks=[FinetuningScheduler(ft_schedule="schedule.yaml")])
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("state_dict_type", "sharded")
        super().__init__(*args, **kwargs)

    @override
    def setup_environment(self) -> None:
        if self.root_device.type == "cpu" and self._state_dict_type == "full":
            raise FTSConfigError(
                "FSDPStrategy(state_dict_type='full') on a CPU accelerator crashes when saving (SIGSEGV in "
                "state_dict() with offload_to_cpu=True, torch 2.13). Use state_dict_type='sharded' on CPU.",
                key="state_dict_type",
            )
        super().setup_environment()

    @override
    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.root_device.type != "cpu" or any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            return super()._setup_model(model)
        kwargs = dict(self.kwargs)
        wrapped = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=self.root_device,  # Lightning passes root_device.index, None on CPU: FSDP then looks for CUDA
            **kwargs,
        )
        # Lightning finishes an already wrapped model (metrics to device, activation checkpointing); its auto-wrap
        # policy has been applied above, so it is held back to keep Lightning from warning that it is ignored
        policy = self.kwargs.pop("auto_wrap_policy", None)
        try:
            return super()._setup_model(wrapped)
        finally:
            if policy is not None:
                self.kwargs["auto_wrap_policy"] = policy
