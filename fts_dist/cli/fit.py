"""``fts-dist fit``: LightningCLI with the fallback to the devices at hand and elastic-safe process groups."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from pytorch_lightning.cli import LightningCLI
from typing_extensions import override

from fts_dist.adapters import strategy_needs_gpu
from fts_dist.runtime.clean_exit import leave_process_group
from fts_dist.runtime.elastic import init_process_group_for_attempt
from fts_dist.runtime.fallback import DeviceRequest, plan_devices, under_a_launcher


class FTSLightningCLI(LightningCLI):
    """LightningCLI whose trainer settings are fitted to this machine before anything is built."""

    @override
    def before_instantiate_classes(self) -> None:
        trainer = self.config[self.subcommand].trainer
        request = DeviceRequest(
            trainer.accelerator, trainer.devices, trainer.strategy, trainer.num_nodes, trainer.precision
        )
        planned, notice = plan_devices(request, os.environ, torch.cuda.device_count(), strategy_needs_gpu)
        if notice and int(os.environ.get("RANK", "0")) == 0:
            print(notice, flush=True)
        if planned != request:
            trainer.accelerator, trainer.devices = planned.accelerator, planned.devices
            trainer.strategy, trainer.num_nodes = planned.strategy, planned.num_nodes


def run_fit(args: Sequence[str]) -> None:
    """``LightningCLI`` ``fit`` with the given arguments (``--config cfg.yaml``, overrides ``--trainer.x=y``)."""
    if under_a_launcher(os.environ):
        init_process_group_for_attempt()
    FTSLightningCLI(
        args=["fit", *args],
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
    )
    leave_process_group()
