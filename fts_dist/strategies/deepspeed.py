"""``fts_dist.DeepSpeedStrategy``: Lightning's DeepSpeedStrategy, also on a CPU accelerator."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.utilities.seed import reset_seed
from pytorch_lightning.strategies import DDPStrategy
from typing_extensions import override


class DeepSpeedStrategy(pl.strategies.DeepSpeedStrategy):
    """Lightning's :class:`~pytorch_lightning.strategies.DeepSpeedStrategy`, used exactly like it, that also runs on
    a CPU accelerator with gloo (``DS_ACCELERATOR=cpu``): for debugging a DeepSpeed config on a laptop, and for
    testing every ZeRO stage in CI.

    Lightning refuses a CPU accelerator in three places: its CUDA check at ``setup_environment``, its device-index
    check (CPU devices have no index), and the ``device_rank`` it passes to ``deepspeed.initialize`` (the device
    index, ``None`` on CPU). On CPU this subclass skips the first two and passes the local rank; on GPUs it is
    Lightning's strategy unchanged. Arguments are Lightning's.

    Example::

        from pytorch_lightning import Trainer
        from fts_dist import DeepSpeedStrategy, FinetuningScheduler
        trainer = Trainer(accelerator="cpu", devices=2, strategy=DeepSpeedStrategy(stage=2),
                          callbacks=[FinetuningScheduler(ft_schedule="schedule.yaml")])
    """

    def _on_cpu(self) -> bool:
        return self.root_device.type == "cpu"

    @override
    def setup_environment(self) -> None:
        if not self._on_cpu():
            super().setup_environment()
            return
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed picks its accelerator
        from deepspeed.accelerator import get_accelerator

        if get_accelerator().device_name() != "cpu":
            raise RuntimeError(
                f"DeepSpeed already chose its {get_accelerator().device_name()!r} accelerator in this process, but the "
                "trainer runs on CPU: set DS_ACCELERATOR=cpu before anything imports deepspeed."
            )
        DDPStrategy.setup_environment(self)  # everything but the CUDA check

    @override
    def setup_distributed(self) -> None:
        if not self._on_cpu():
            super().setup_distributed()
            return
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()  # gloo, as the CPU root device implies

    @override
    def _setup_model_and_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        with self._device_rank_on_cpu():
            return super()._setup_model_and_optimizer(*args, **kwargs)

    @override
    def _initialize_deepspeed_inference(self, *args: Any, **kwargs: Any) -> None:
        with self._device_rank_on_cpu():
            super()._initialize_deepspeed_inference(*args, **kwargs)

    @contextlib.contextmanager
    def _device_rank_on_cpu(self) -> Iterator[None]:
        """Make ``deepspeed.initialize(args=Namespace(device_rank=None))`` get the local rank instead."""
        if not self._on_cpu():
            yield
            return
        import deepspeed

        initialize, local_rank = deepspeed.initialize, self.local_rank

        def initialize_with_rank(*args: Any, **kwargs: Any) -> Any:
            namespace = kwargs.get("args")
            if isinstance(namespace, argparse.Namespace) and getattr(namespace, "device_rank", 0) is None:
                kwargs["args"] = argparse.Namespace(**{**vars(namespace), "device_rank": local_rank})
            return initialize(*args, **kwargs)

        deepspeed.initialize = initialize_with_rank
        try:
            yield
        finally:
            deepspeed.initialize = initialize
