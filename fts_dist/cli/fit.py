"""``fts-dist fit``: LightningCLI with the fallback to the devices at hand and elastic-safe process groups."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from pytorch_lightning.cli import LightningCLI

from fts_dist.cli.fallback import DeviceRequest, plan_fallback, plan_launched
from fts_dist.elastic import init_process_group_for_attempt


def under_a_launcher(env: dict[str, str] | None = None) -> bool:
    """A launcher (torchrun, ...) started several processes: WORLD_SIZE > 1. A single torchrun process gets the
    same fallback as a plain run."""
    env = dict(os.environ) if env is None else env
    return int(env.get("WORLD_SIZE", "1")) > 1


class FTSLightningCLI(LightningCLI):
    """LightningCLI whose trainer settings are fitted to this machine before anything is built."""

    def before_instantiate_classes(self) -> None:
        trainer = self.config[self.subcommand].trainer
        request = DeviceRequest(
            trainer.accelerator, trainer.devices, trainer.strategy, trainer.num_nodes, trainer.precision
        )
        gpus = torch.cuda.device_count()
        if under_a_launcher():
            world = int(os.environ["WORLD_SIZE"])
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            planned, notice = plan_launched(request, world, local, gpus)
        else:
            planned, notice = plan_fallback(request, gpus, launched=False)
        if notice and int(os.environ.get("RANK", "0")) == 0:
            print(notice, flush=True)
        if planned != request:
            trainer.accelerator, trainer.devices = planned.accelerator, planned.devices
            trainer.strategy, trainer.num_nodes = planned.strategy, planned.num_nodes


def run_fit(args: Sequence[str]) -> None:
    """``LightningCLI`` ``fit`` with the given arguments (``--config cfg.yaml``, overrides ``--trainer.x=y``)."""
    if under_a_launcher():
        init_process_group_for_attempt()
    FTSLightningCLI(
        args=["fit", *args],
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
    )
    if torch.distributed.is_initialized():  # gloo can abort at interpreter exit with a live process group
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
